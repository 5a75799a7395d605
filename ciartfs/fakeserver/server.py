"""A fake CircleCI (API v1.1) and its S3-like storage host: real HTTP on 127.0.0.1.

The API host answers the documented endpoints; artifact URLs point at the API host and
redirect (302) to the storage host with a presigned, expiring URL. Storage serves Range
requests like S3 (206, 416, HEAD refused). `FakeCI.faults` switches on misbehaviour and
`FakeCI.requests` records what arrived, so tests can assert on both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ciartfs.fakeserver.model import FakeArtifact, FakeBuild, FakeProject, Faults, Recorded
from ciartfs.fakeserver.reply import Reply, Served
from ciartfs.fakeserver.taskcluster import FakeQueue, FakeTcArtifact

CHUNK = 64 * 1024
MAX_LIMIT = 100
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_FILTERS = {
    "completed": lambda b: b.lifecycle == "finished",
    "successful": lambda b: b.status in ("success", "fixed"),
    "failed": lambda b: b.status in ("failed", "timedout", "infrastructure_fail"),
    "running": lambda b: b.lifecycle == "running",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeCI, role: str) -> None:
        self.fake = fake
        self.role = role
        super().__init__((fake.host, 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, self.server.role, "GET")

    def do_HEAD(self) -> None:
        self.server.fake._dispatch(self, self.server.role, "HEAD")


class FakeCI:
    def __init__(self, tokens: set[str] | None = None, host: str = "127.0.0.1") -> None:
        self.tokens = set(tokens or ())
        self.host = host
        self.faults = Faults()
        self.projects: dict[tuple[str, str, str], FakeProject] = {}
        self.queue = FakeQueue(self)
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._secret = secrets.token_bytes(16)
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeCI:
        for role in ("api", "storage"):
            server = _Server(self, role)
            self._servers[role] = server
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"fakeci-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

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
        if artifact.url is not None:
            return artifact.url
        encoded = "/".join(urllib.parse.quote(part, safe="") for part in artifact.path.split("/"))
        parts = (project.vcs_type, project.username, project.reponame, str(build.build_num), str(artifact.node_index))
        return f"{self.api_url}/artifacts/" + "/".join(urllib.parse.quote(p, safe="") for p in parts) + "/" + encoded

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, handler: _Handler, role: str, method: str) -> None:
        raw_path, _, query_text = handler.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query_text, keep_blank_values=True))
        record = Recorded(role, method, raw_path, query, {k.lower(): v for k, v in handler.headers.items()}, 0, time.time())
        with self._lock:
            self._requests.append(record)
        try:
            if role == "api":
                self._api(handler, method, raw_path, query)
            else:
                self._storage(handler, method, raw_path, query, record)
            raise Reply(500, {"message": "no answer"})
        except Reply as reply:
            record.status = reply.status
            self._send(handler, reply, head=method == "HEAD")
        except Served as served:
            record.status = served.status
        except (BrokenPipeError, ConnectionResetError):
            record.status = -1

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
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _hang(self, switch: str) -> None:
        while getattr(self.faults, switch) and not self._stopping.is_set():
            self._stopping.wait(0.05)
        if self._stopping.is_set():
            raise Reply(503, {"message": "shutting down"})

    # -- API host ------------------------------------------------------------------------------

    def _api(self, handler: _Handler, method: str, raw_path: str, query: dict[str, str]) -> None:
        self._hang("api_hang")
        if self.faults.api_statuses:
            status = self.faults.api_statuses.pop(0)
            raise Reply(status, {"message": f"injected {status}"}, headers={"Retry-After": "1"} if status == 429 else {})
        if method != "GET":
            raise Reply(405, {"message": "method not allowed"})
        if raw_path.startswith("/api/queue/v1/"):
            self.queue.handle(handler, raw_path, query)
        token = self._token(handler, query)
        if token is not None and token not in self.tokens:
            raise Reply(401, {"message": "Invalid token provided."})
        segments = [urllib.parse.unquote(s) for s in raw_path.split("/")]
        if raw_path.startswith("/artifacts/"):
            self._artifact_redirect(raw_path, token)
        if raw_path in self.faults.malformed_json:
            raise Reply(200, b'[{"path": "truncated', )
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
        if rest and rest[0].isdigit():
            build = project.builds.get(int(rest[0]))
            if build is None:
                raise Reply(404, {"message": "Build not found"})
            if len(rest) == 1:
                raise Reply(200, self._summary(project, build))
            if rest[1:] == ["artifacts"]:
                raise Reply(200, self._artifacts(project, build))
        raise Reply(404, {"message": "Not found"})

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
        builds = self._filtered(project, branch, query.get("filter"))
        return [self._summary(project, b) for b in builds[offset:offset + limit]]

    def _summary(self, project: FakeProject, build: FakeBuild) -> dict[str, Any]:
        def iso(t: str | None) -> str | None:
            return None if t is None else t.replace("Z", ".000Z") if t.endswith("Z") and "." not in t else t

        return {
            "build_num": build.build_num, "branch": build.branch, "vcs_revision": build.vcs_revision,
            "status": build.status, "lifecycle": build.lifecycle, "outcome": build.outcome,
            "start_time": iso(build.start_time), "stop_time": iso(build.stop_time), "queued_at": iso(build.queued_at),
            "subject": build.subject, "username": project.username, "reponame": project.reponame,
            "vcs_type": project.vcs_type,
            "build_url": f"{self.api_url}/gh/{project.username}/{project.reponame}/{build.build_num}",
        }

    def _artifacts(self, project: FakeProject, build: FakeBuild) -> Any:
        if build.raw_artifacts is not None:
            return build.raw_artifacts
        return [{"path": a.path, "pretty_path": a.path, "node_index": a.node_index,
                 "url": self.artifact_url(project, build, a)} for a in build.artifacts]

    def _artifact_redirect(self, raw_path: str, token: str | None) -> None:
        parts = raw_path[len("/artifacts/"):].split("/", 5)
        if len(parts) < 6 or not parts[3].isdigit() or not parts[4].isdigit():
            raise Reply(404, {"message": "Not found"})
        vcs, user, name = (urllib.parse.unquote(p) for p in parts[:3])
        project = self._project(vcs, user, name, token)
        build = project.builds.get(int(parts[3]))
        path = "/".join(urllib.parse.unquote(p) for p in parts[5].split("/"))
        artifact = next((a for a in (build.artifacts if build else []) if a.node_index == int(parts[4]) and a.path == path), None)
        if artifact is None or artifact.expired:
            raise Reply(404, {"message": "Artifact not found"})
        raise Reply(302, b"", content_type="text/plain", headers={"Location": self.presigned_url(artifact.blob_id)})

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
        denied = Reply(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                        content_type="application/xml")
        if method == "HEAD":
            raise denied  # presigned GET URLs refuse HEAD
        self._hang("storage_hang")
        if self.faults.storage_statuses:
            status = self.faults.storage_statuses.pop(0)
            raise Reply(status, b"injected", content_type="text/plain",
                         headers={"Retry-After": "1"} if status == 429 else {})
        m = re.fullmatch(r"/blob/(\d+)", raw_path)
        artifact = self._blob(int(m.group(1))) if m else None
        if artifact is None:
            raise Reply(404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        expires = query.get("expires", "")
        if not expires.isdigit() or not hmac.compare_digest(query.get("signature", ""), self._sign(artifact.blob_id, int(expires))):
            raise denied
        if time.time() > int(expires):
            raise denied
        data = artifact.stored if isinstance(artifact, FakeTcArtifact) else artifact.data
        encoding = artifact.content_encoding if isinstance(artifact, FakeTcArtifact) else None
        total = len(data)
        spec = handler.headers.get("Range")
        start, end, status = 0, total - 1, 200
        if spec and not self.faults.ignore_range:
            rm = _RANGE_RE.match(spec.strip())
            if rm and (rm.group(1) or rm.group(2)):
                if rm.group(1):
                    start = int(rm.group(1))
                    end = min(int(rm.group(2)), total - 1) if rm.group(2) else total - 1
                else:  # suffix range: the last n bytes
                    start = max(0, total - int(rm.group(2)))
                if start >= total or start > end:
                    raise Reply(416, b"", content_type="application/xml", headers={"Content-Range": f"bytes */{total}"})
                status = 206
        body = data[start:end + 1] if total else b""
        record.status = status  # before the body: the client may look at the log once it has it
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(len(body)))
            handler.send_header("Accept-Ranges", "bytes")
            if encoding:
                handler.send_header("Content-Encoding", encoding)
            if status == 206:
                handler.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            handler.end_headers()
            view = memoryview(body)
            for i in range(0, len(body), CHUNK):
                handler.wfile.write(view[i:i + CHUNK])
        except (BrokenPipeError, ConnectionResetError):
            raise Served(-1) from None
        raise Served(status)

