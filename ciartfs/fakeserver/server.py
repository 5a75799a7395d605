"""A fake CircleCI (API v1.1) and its S3-like storage host: real HTTP on 127.0.0.1.

The API host answers the documented endpoints (and `/api/v1.1/me`, which a token must never
be sent to from a listing's URL); artifact URLs point at the API host and
redirect (302) to the storage host with a presigned, expiring URL. Storage serves Range
requests like S3 (206, 416, HEAD refused). HTML artifacts are served directly, without the
302, as CircleCI serves them from `*.circle-artifacts.com`: a public project's from a third
host (the "html" role, a stand-in for circle-artifacts.com, which gets no token), a private
project's at its API-host artifact route (which does); `Faults.direct_ignore_range` makes
both answer Range with the whole body. `FakeCI.faults` switches on misbehaviour and
`FakeCI.requests` records what arrived, so tests can assert on both.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import itertools
import random
import re
import secrets
import socket
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ciartfs.fakeserver import livelog
from ciartfs.fakeserver.model import FakeArtifact, FakeBuild, FakeProject, Faults, Recorded
from ciartfs.fakeserver.reply import Reply, Served
from ciartfs.fakeserver.taskcluster import FakeQueue, FakeTcArtifact
from ciartfs.fakeserver.v2 import FakeV2

CHUNK = 64 * 1024
HOSTILE_EXPANSION_BYTES = 12 << 20
# One deflate block of 8 MiB of spaces, ended by a sync flush: it references nothing before
# it, so repeating it is a valid (endless) deflate stream. Made on first use.
_BOMB_UNIT: list[bytes] = []
MAX_LIMIT = 100
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NUM_RE = re.compile(r"[0-9]+")
_VCS_SLUG = {"github": "gh", "bitbucket": "bb"}
_FILTERS = {
    "completed": lambda b: b.lifecycle == "finished",
    "successful": lambda b: b.status in ("success", "fixed"),
    "failed": lambda b: b.status in ("failed", "timedout", "infrastructure_fail"),
    "running": lambda b: b.lifecycle == "running",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A client (or nginx in front) opening ~100 connections at once must not overflow the
    # accept queue: a dropped SYN is retried after 1 s, which the benchmark would charge to
    # the client.
    request_queue_size = 1024

    def __init__(self, fake: FakeCI, role: str, port: int) -> None:
        self.fake = fake
        self.role = role
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((fake.host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet: no tracebacks on stderr
        pass

    def close_connections(self) -> None:
        """Cut open (keep-alive) connections: a stopped server must not go on answering them."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle plus the client's
        # delayed ACK stall every keep-alive answer by ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, self.server.role, "GET")

    def do_HEAD(self) -> None:
        self.server.fake._dispatch(self, self.server.role, "HEAD")

    def _other(self) -> None:  # recorded and answered 405 (after reading any body: keep-alive stays in step)
        self.server.fake._dispatch(self, self.server.role, self.command)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other


class FakeCI:
    """The fake CircleCI: `start()` binds the API and storage hosts (ephemeral ports unless
    given), `stop()` closes them; state, faults and the request log are plain attributes."""

    def __init__(self, tokens: set[str] | None = None, host: str = "127.0.0.1",
                 api_port: int = 0, storage_port: int = 0, html_port: int = 0) -> None:
        self.tokens = set(tokens or ())
        self.host = host
        # livelog: the workers' livelog server a running task's live.log points at;
        # html: the circle-artifacts stand-in serving HTML directly
        self._ports = {"api": api_port, "storage": storage_port, "livelog": 0, "html": html_port}
        self.faults = Faults()
        self.projects: dict[tuple[str, str, str], FakeProject] = {}
        self.queue = FakeQueue(self)
        self.v2 = FakeV2(self)
        self._rng = random.Random(1234)  # for storage_failure_rate
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._secret = secrets.token_bytes(16)
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeCI:
        self._stopping.clear()
        for role in ("api", "storage", "livelog", "html"):
            try:
                server = _Server(self, role, self._ports[role])
            except OSError:
                self.stop()  # the port is taken: release the host already bound
                raise
            self._servers[role] = server
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                      name=f"fakeci-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both hosts promptly: hanging handlers are released (they answer 503), open
        keep-alive connections are cut. Safe to call twice."""
        self._stopping.set()
        servers, threads = list(self._servers.values()), self._threads
        self._threads = []
        for server in servers:
            if server.socket.fileno() != -1:
                server.shutdown()
                server.server_close()
        for thread in threads:
            thread.join(timeout=5)
        for server in servers:
            server.close_connections()

    def cut_connections(self, role: str) -> None:
        """Cut the open connections of one host (`livelog`: a worker's network going away)."""
        self._servers[role].close_connections()

    def __enter__(self) -> FakeCI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _url(self, role: str) -> str:
        host, port = self._servers[role].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self._url("api")

    @property
    def storage_url(self) -> str:
        return self._url("storage")

    @property
    def livelog_url(self) -> str:
        return self._url("livelog")

    @property
    def html_url(self) -> str:
        """The circle-artifacts host's stand-in: HTML of public projects, served directly."""
        return self._url("html")

    # -- state ---------------------------------------------------------------------------------

    def add_project(self, vcs: str, user: str, name: str, private: bool = False) -> FakeProject:
        project = FakeProject(vcs, user, name, private)
        self.projects[(vcs, user, name)] = project
        return project

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def artifact_url(self, project: FakeProject, build: FakeBuild, artifact: FakeArtifact) -> str:
        """The URL the listing reports: on the API host, each path segment percent-encoded
        (a leading "/" stays, giving "0//tmp/..." as in the docs); a public project's HTML on
        the circle-artifacts stand-in, same path after the host."""
        if artifact.url is not None:
            return artifact.url
        encoded = "/".join(urllib.parse.quote(part, safe="") for part in artifact.path.split("/"))
        parts = (project.vcs_type, project.username, project.reponame, str(build.build_num), str(artifact.node_index))
        route = "/".join(urllib.parse.quote(p, safe="") for p in parts) + "/" + encoded
        if is_direct(artifact) and not project.private:
            return f"{self.html_url}/{route}"
        return f"{self.api_url}/artifacts/{route}"

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, handler: _Handler, role: str, method: str) -> None:
        raw_path, _, query_text = handler.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query_text, keep_blank_values=True))
        record = Recorded(role, method, raw_path, query, {k.lower(): v for k, v in handler.headers.items()}, 0, time.time())
        with self._lock:
            self._requests.append(record)
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            handler.request_body = b""  # (the object service's startDownload reads it)
            if length > 0:
                handler.request_body = handler.rfile.read(length)
            if role == "api":
                self._api(handler, method, raw_path, query, record)
            elif role == "livelog":
                livelog.serve(self, handler, method, raw_path, self._stopping)
            elif role == "html":
                self._html(handler, method, raw_path, query, record)
            else:
                self._storage(handler, method, raw_path, query, record)
            raise Reply(500, {"message": "no answer"})
        except Reply as reply:
            record.status = reply.status
            self._send(handler, reply, head=method == "HEAD")
        except Served as served:
            record.status = served.status
        except OSError:  # the client went away
            record.status = -1
            handler.close_connection = True
        except Exception as e:  # a bug in the fake: answer 500 rather than a traceback and a dead socket
            record.status = 500
            self._send(handler, Reply(500, {"message": f"fake server error: {e!r}"}), head=method == "HEAD")

    def _pop_status(self, name: str) -> int | None:
        with self._lock:
            queue = getattr(self.faults, name)
            return queue.pop(0) if queue else None

    @staticmethod
    def _send(handler: _Handler, reply: Reply, *, head: bool = False) -> None:
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", reply.content_type)
            handler.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if not head:
                handler.wfile.write(reply.body)
        except OSError:
            handler.close_connection = True

    def _hang(self, switch: str) -> None:
        while getattr(self.faults, switch) and not self._stopping.is_set():
            self._stopping.wait(0.05)
        if self._stopping.is_set():
            raise Reply(503, {"message": "shutting down"})

    # -- API host ------------------------------------------------------------------------------

    def _api(self, handler: _Handler, method: str, raw_path: str, query: dict[str, str], record: Recorded) -> None:
        self._hang("api_hang")
        if self.faults.api_latency:
            self._stopping.wait(self.faults.api_latency)
        status = self._pop_status("api_statuses")
        if status is not None:
            raise Reply(status, {"message": f"injected {status}"}, headers={"Retry-After": "1"} if status == 429 else {})
        if method == "PUT" and raw_path.startswith("/api/object/v1/"):
            self.queue.handle_object(handler, raw_path)
        if method != "GET":
            raise Reply(405, {"message": "method not allowed"})
        if raw_path.startswith("/api/queue/v1/"):
            self.queue.handle(handler, raw_path, query)
        token = self._token(handler, query)
        if token is not None and token not in self.tokens:
            raise Reply(401, {"message": "Invalid token provided."})
        segments = [urllib.parse.unquote(s) for s in raw_path.split("/")]
        if raw_path.startswith("/artifacts/"):
            self._artifact_redirect(handler, raw_path, token, record)
        if raw_path in self.faults.malformed_json:
            raise Reply(200, b'[{"path": "truncated', )
        if raw_path in self.faults.hostile_json:
            self._hostile_json(handler, self.faults.hostile_json[raw_path])
        if segments[:3] == ["", "api", "v2"]:
            self.v2.handle(segments[3:], query, token)
        if segments == ["", "api", "v1.1", "me"]:
            self._me(token)
        if "application/json" not in handler.headers.get("Accept", ""):
            raise Reply(200, b'({:build_num 1 :status "success"})', content_type="application/edn")
        if segments[:4] != ["", "api", "v1.1", "project"] or len(segments) < 7:
            raise Reply(404, {"message": "Not found"})
        project = self._project(segments[4], segments[5], segments[6], token)
        rest = segments[7:]
        if rest in ([], [""]):
            raise Reply(200, self._build_page(project, None, query))
        if len(rest) == 2 and rest[0] == "tree":
            raise Reply(200, self._build_page(project, rest[1], query))
        if rest == ["latest", "artifacts"]:
            builds = self._filtered(project, query.get("branch") or None, query.get("filter"))
            if not builds:
                raise Reply(404, {"message": "Build not found"})
            raise Reply(200, self._artifacts(project, builds[0]))
        if rest and _NUM_RE.fullmatch(rest[0]):
            build = project.builds.get(int(rest[0]))
            if build is None:
                raise Reply(404, {"message": "Build not found"})
            if len(rest) == 1:
                raise Reply(200, self._summary(project, build))
            if rest[1:] == ["artifacts"]:
                raise Reply(200, self._artifacts(project, build))
        raise Reply(404, {"message": "Not found"})

    def _hostile_json(self, handler: _Handler, kind: str) -> None:
        """Stream a hostile answer (see Faults.hostile_json) until it ends or the client hangs up."""
        headers = {"Content-Type": "application/json"}
        if kind == "expansion":
            record = b"{},"
            count = HOSTILE_EXPANSION_BYTES // len(record)
            headers["Content-Length"] = str(1 + count * len(record) + 3)
            pieces: Any = itertools.chain([b"["], itertools.repeat(record * (CHUNK // len(record)), count // (CHUNK // len(record))),
                                          [record * (count % (CHUNK // len(record))), b"{}]"])
        elif kind == "endless":
            headers["Transfer-Encoding"] = "chunked"
            record = b'{"path":"a/b.txt","pretty_path":"a/b.txt","node_index":0,"url":"http://127.0.0.1:1/a"},'
            pieces = itertools.chain([b"["], itertools.repeat(record * (CHUNK // len(record))))
        elif kind == "gzip-bomb":
            headers["Transfer-Encoding"] = "chunked"
            headers["Content-Encoding"] = "gzip"
            if not _BOMB_UNIT:
                packer = zlib.compressobj(9, zlib.DEFLATED, -15)
                _BOMB_UNIT.append(packer.compress(b" " * (8 << 20)) + packer.flush(zlib.Z_SYNC_FLUSH))
            gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
            opening = zlib.compressobj(9, zlib.DEFLATED, -15)
            pieces = itertools.chain([gzip_header + opening.compress(b"[") + opening.flush(zlib.Z_SYNC_FLUSH)],
                                     itertools.repeat(_BOMB_UNIT[0]))
        else:
            raise Reply(500, {"message": f"unknown hostile JSON kind {kind!r}"})
        chunked = headers.get("Transfer-Encoding") == "chunked"
        try:
            handler.send_response(200)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            for piece in pieces:
                if self._stopping.is_set():
                    break
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            else:
                if chunked:
                    handler.wfile.write(b"0\r\n\r\n")
                raise Served(200)
        except OSError:
            pass
        handler.close_connection = True
        raise Served(-1)

    @staticmethod
    def _token(handler: _Handler, query: dict[str, str]) -> str | None:
        if handler.headers.get("Circle-Token"):
            return handler.headers["Circle-Token"]
        auth = handler.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                return "<malformed basic auth>"
            return user
        return query.get("circle-token")

    @staticmethod
    def _me(token: str | None) -> None:
        """GET /api/v1.1/me: the token's own user, secrets included; 401 without a token."""
        if token is None:
            raise Reply(401, {"message": "You must log in first."})
        raise Reply(200, {"login": "token-owner", "name": "Token Owner",
                          "all_emails": ["owner@example.com"], "SecretAccessKey": "fake-me-secret"})

    def _project(self, vcs: str, user: str, name: str, token: str | None) -> FakeProject:
        project = self.projects.get((vcs, user, name))
        if project is None or (project.private and token is None):
            raise Reply(404, {"message": "Project not found"})
        return project

    def _filtered(self, project: FakeProject, branch: str | None, filter_name: str | None) -> list[FakeBuild]:
        builds = sorted(project.builds.values(), key=lambda b: b.build_num, reverse=True)
        if branch is not None:
            builds = [b for b in builds if b.branch == branch]
        if filter_name in _FILTERS:
            builds = [b for b in builds if _FILTERS[filter_name](b)]
        return builds

    def _build_page(self, project: FakeProject, branch: str | None, query: dict[str, str]) -> list[dict[str, Any]]:
        try:
            limit = int(query.get("limit", "30"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise Reply(400, {"message": "limit and offset must be integers"}) from None
        if limit > MAX_LIMIT:
            raise Reply(400, {"message": "limit must be <= 100"})
        if limit < 0 or offset < 0:
            raise Reply(400, {"message": "limit and offset must not be negative"})
        builds = self._filtered(project, branch, query.get("filter"))
        return [self._summary(project, b) for b in builds[offset:offset + limit]]

    def _summary(self, project: FakeProject, build: FakeBuild) -> dict[str, Any]:
        return {
            "build_num": build.build_num, "branch": build.branch, "vcs_revision": build.vcs_revision,
            "status": build.status, "lifecycle": build.lifecycle, "outcome": build.outcome,
            "start_time": _iso(build.start_time), "stop_time": _iso(build.stop_time), "queued_at": _iso(build.queued_at),
            "subject": build.subject, "username": project.username, "reponame": project.reponame,
            "vcs_type": project.vcs_type,
            "build_url": f"{self.api_url}/{_VCS_SLUG.get(project.vcs_type, project.vcs_type)}/"
                         f"{project.username}/{project.reponame}/{build.build_num}",
        }

    def _artifacts(self, project: FakeProject, build: FakeBuild) -> Any:
        if build.raw_artifacts is not None:
            return build.raw_artifacts
        return [{"path": a.path, "pretty_path": a.path, "node_index": a.node_index,
                 "url": self.artifact_url(project, build, a)} for a in build.artifacts]

    def _artifact_redirect(self, handler: _Handler, raw_path: str, token: str | None, record: Recorded) -> None:
        artifact = self._routed_artifact(raw_path[len("/artifacts/"):], token)
        if is_direct(artifact):
            self._serve_bytes(handler, artifact, record, honour_range=not self.faults.direct_ignore_range)
        raise Reply(302, b"", content_type="text/plain", headers={"Location": self.presigned_url(artifact.blob_id)})

    def _routed_artifact(self, route: str, token: str | None) -> FakeArtifact:
        """The artifact at "<vcs>/<user>/<project>/<build>/<node>/<path>" (percent-encoded), or a
        404 Reply (also for a private project without a token)."""
        parts = route.split("/", 5)
        if len(parts) < 6 or not _NUM_RE.fullmatch(parts[3]) or not _NUM_RE.fullmatch(parts[4]):
            raise Reply(404, {"message": "Not found"})
        vcs, user, name = (urllib.parse.unquote(p) for p in parts[:3])
        project = self._project(vcs, user, name, token)
        build = project.builds.get(int(parts[3]))
        path = "/".join(urllib.parse.unquote(p) for p in parts[5].split("/"))
        artifact = next((a for a in (build.artifacts if build else []) if a.node_index == int(parts[4]) and a.path == path), None)
        if artifact is None or artifact.expired:
            raise Reply(404, {"message": "Artifact not found"})
        return artifact

    # -- circle-artifacts host ------------------------------------------------------------------

    def _html(self, handler: _Handler, method: str, raw_path: str, query: dict[str, str], record: Recorded) -> None:
        """The circle-artifacts stand-in: an HTML artifact's bytes at once, no redirect."""
        if method != "GET":
            raise Reply(405, b"method not allowed", content_type="text/plain")
        token = self._token(handler, query)
        if token is not None and token not in self.tokens:
            raise Reply(401, {"message": "Invalid token provided."})
        artifact = self._routed_artifact(raw_path.lstrip("/"), token)
        if not is_direct(artifact):
            raise Reply(404, {"message": "Artifact not found"})
        self._serve_bytes(handler, artifact, record, honour_range=not self.faults.direct_ignore_range)

    def presigned_url(self, blob_id: int) -> str:
        expires = int(time.time() + self.faults.presign_ttl)
        return f"{self.storage_url}/blob/{blob_id}?expires={expires}&signature={self._sign(blob_id, expires)}"

    # -- storage host --------------------------------------------------------------------------

    def _sign(self, blob_id: int, expires: int) -> str:
        return hmac.new(self._secret, f"{blob_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _blob(self, blob_id: int) -> FakeArtifact | FakeTcArtifact | None:
        for project in list(self.projects.values()):
            for build in list(project.builds.values()):
                for artifact in build.artifacts:
                    if artifact.blob_id == blob_id:
                        return artifact
        return next((a for a in self.queue.blobs() if a.blob_id == blob_id), None)

    def _storage(self, handler: _Handler, method: str, raw_path: str, query: dict[str, str], record: Recorded) -> None:
        if method == "HEAD":  # a presigned GET URL's signature does not cover HEAD
            raise _s3_error(403, "AccessDenied", "There were headers present in the request which were not signed")
        if method != "GET":
            raise _s3_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        self._hang("storage_hang")
        if self.faults.storage_latency:
            self._stopping.wait(self.faults.storage_latency)
        status = self._pop_status("storage_statuses")
        if status is None and self.faults.storage_failure_rate:
            with self._lock:
                if self._rng.random() < self.faults.storage_failure_rate:
                    status = 503
        if status is not None:
            raise Reply(status, b"injected", content_type="text/plain",
                        headers={"Retry-After": "1"} if status == 429 else {})
        m = re.fullmatch(r"/blob/([0-9]+)", raw_path)
        if m is None:
            raise _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        blob_id = int(m.group(1))
        expires = query.get("expires", "")
        if not _NUM_RE.fullmatch(expires) or not hmac.compare_digest(
                query.get("signature", "").encode(), self._sign(blob_id, int(expires)).encode()):
            raise _s3_error(403, "AccessDenied", "The request signature we calculated does not match the signature you provided.")
        if time.time() > int(expires):
            raise _s3_error(403, "AccessDenied", "Request has expired")
        artifact = self._blob(blob_id)
        if artifact is None or getattr(artifact, "expired", False):
            raise _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if artifact.storage_redirect:
            raise Reply(302, b"", content_type="text/plain", headers={"Location": artifact.storage_redirect})
        if getattr(artifact, "stall", False):
            self._stopping.wait()
            raise Reply(503, {"message": "shutting down"})
        if getattr(artifact, "delay", 0.0):
            self._stopping.wait(artifact.delay)  # type: ignore[union-attr]
        own_status = getattr(artifact, "storage_status", None)
        if own_status is not None:
            raise _s3_error(own_status, "Injected", f"injected {own_status} for this object")
        self._serve_bytes(handler, artifact, record, honour_range=not self.faults.ignore_range)

    def _serve_bytes(self, handler: _Handler, artifact: FakeArtifact | FakeTcArtifact, record: Recorded, *,
                     honour_range: bool) -> None:
        """Answer with the artifact's bytes: 206 for a Range when `honour_range`, else 200 and the
        whole body (storage_body_faults apply)."""
        claimed_total = getattr(artifact, "claimed_total", None)
        generated = artifact.generated if isinstance(artifact, FakeTcArtifact) else None
        data = b"" if generated is not None else artifact.stored if isinstance(artifact, FakeTcArtifact) else artifact.data
        encoding = artifact.content_encoding if isinstance(artifact, FakeTcArtifact) else None
        total = generated.size if generated is not None else len(data)
        spec = handler.headers.get("Range")
        start, end, status = 0, total - 1, 200
        if spec and honour_range:
            rm = _RANGE_RE.match(spec.strip())
            first, last = (rm.group(1), rm.group(2)) if rm else ("", "")
            if first and (not last or int(last) >= int(first)):  # bytes=a-b, bytes=a-
                start = int(first)
                end = min(int(last), total - 1) if last else total - 1
                status = 206
            elif not first and last:  # bytes=-n: the last n bytes
                start = max(0, total - int(last))
                status = 206
            # anything else (multiple ranges, b < a, garbage) is ignored: 200 with the whole body
            if status == 206 and (start >= total or start > end):
                raise _s3_error(416, "InvalidRange", "The requested range is not satisfiable",
                                {"Content-Range": f"bytes */{total}"})
        length = max(0, end + 1 - start)
        fault = self._pop_status("storage_body_faults")
        content_range = f"bytes {start}-{end}/{total if claimed_total is None else claimed_total}"
        if fault == "bad-range" and status == 206:
            content_range = f"bytes {start + 1}-{end + 1}/{total}"
        sent = length
        if fault == "cut":
            sent = length // 2
        elif fault == "short":
            sent = max(0, length - 1)
        if generated is not None:
            parts: Iterator[bytes | memoryview] = _coalesced(generated.read(start, start + sent))
        else:
            view = memoryview(data)[start:start + sent]  # no copy of the blob
            parts = (view[i:i + CHUNK] for i in range(0, len(view), CHUNK))
        record.status = status  # before the body: the client may look at the log once it has it
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(length))
            handler.send_header("Accept-Ranges", "bytes")
            if encoding:
                handler.send_header("Content-Encoding", encoding)
            if status == 206:
                handler.send_header("Content-Range", content_range)
            handler.end_headers()
            for part in parts:
                handler.wfile.write(part)
            if sent != length:  # the promised bytes will never come: hang up
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
        except OSError:
            handler.close_connection = True
            raise Served(-1) from None
        raise Served(status)


def is_direct(artifact: FakeArtifact) -> bool:
    """Whether CircleCI serves this artifact straight from circle-artifacts.com (no 302)."""
    if artifact.direct is not None:
        return artifact.direct
    return artifact.path.lower().endswith((".html", ".htm"))


def _coalesced(parts: Iterator[bytes]) -> Iterator[bytes]:
    """Small pieces joined into writes of about CHUNK bytes (a bomb's segments are ~1 KiB)."""
    buffer = bytearray()
    for part in parts:
        buffer += part
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _iso(stamp: str | None) -> str | None:
    """v1.1's time format, "2026-11-01T10:00:00.000Z" (UTC, milliseconds), or None."""
    if stamp is None:
        return None
    try:
        t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp  # odd values are the test's business
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _s3_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Reply(status, body.encode(), content_type="application/xml", headers=headers)

