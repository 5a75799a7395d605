"""The fake CI's HTTP server: its hosts on 127.0.0.1, the request log, and the dispatch to the
API modules' routes (routing.Route; the shape is described in fakeserver/__init__.py).

Five hosts (routing.HOSTS), each its own port: the API host (CircleCI v1.1 and v2, the
Taskcluster queue and object service, GitHub Actions), the S3-like storage host the presigned
URLs name (storage.py), a Taskcluster worker's livelog server (livelog.py), circle-artifacts.com's
stand-in (circleci_v1.py) and the Azure Blob storage GitHub's artifact URLs name (azureblob.py).
Every request is recorded on arrival (`FakeCI.requests`) and answered by the first route of
its host that answers, longest prefix first; the API host's own faults (`api_hang`,
`api_latency`, `api_statuses`) come before any of its routes.
`FakeCI.faults` switches misbehaviour on; `stop()` releases hanging handlers and cuts open
connections, so a test never waits on the fake.
"""

from __future__ import annotations

import importlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ciartfs.fakeserver import circleci_v1
from ciartfs.fakeserver.github import FakeGitHub
from ciartfs.fakeserver.model import FakeArtifact, FakeBuild, FakeProject, Faults, Recorded
from ciartfs.fakeserver.routing import HOSTS, Reply, Request, Route, Served
from ciartfs.fakeserver.storage import BlobStore
from ciartfs.fakeserver.taskcluster import FakeQueue
from ciartfs.fakeserver.v2 import FakeV2
from ciartfs.providers import registry
from ciartfs.providers.base import Provider

# The fake's own host: the storage every API's presigned URLs name.
SHARED_MODULES = ("ciartfs.fakeserver.storage",)


def api_modules_for(providers: Iterable[Provider[Any]]) -> tuple[str, ...]:
    """The modules serving these providers' APIs (each provider's `fake_modules`; each module
    has `routes(fake) -> list[Route]`), then the shared ones."""
    return tuple(m for p in providers for m in p.fake_modules) + SHARED_MODULES


# What a FakeCI serves by default: the APIs of the built-in providers.
API_MODULES = api_modules_for(registry.PROVIDERS)


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
    """The fake CI: `start()` binds its hosts (ephemeral ports unless given), `stop()` closes
    them; state, faults and the request log are plain attributes. `api_modules` names the
    modules whose routes it serves (default: API_MODULES)."""

    def __init__(self, tokens: set[str] | None = None, host: str = "127.0.0.1",
                 api_port: int = 0, storage_port: int = 0, html_port: int = 0, blob_port: int = 0,
                 api_modules: Iterable[str] = API_MODULES) -> None:
        self.tokens = set(tokens or ())
        self.host = host
        # livelog: the workers' livelog server a running task's live.log points at;
        # html: the circle-artifacts stand-in serving HTML directly; blob: GitHub's Azure storage
        self._ports = {"api": api_port, "storage": storage_port, "livelog": 0, "html": html_port, "blob": blob_port}
        self.faults = Faults()
        self.blobs = BlobStore()  # every artifact's bytes by blob id, for every API module
        self.projects: dict[tuple[str, str, str], FakeProject] = {}
        self.queue = FakeQueue(self)
        self.v2 = FakeV2(self)
        self.github = FakeGitHub(self)  # GitHub Actions: repositories, runs, artifacts, their blobs
        self.stopping = threading.Event()  # set by stop(): hanging and streaming answers end
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self._routes: dict[str, list[Route]] = {host: [] for host in HOSTS}
        for name in api_modules:
            for route in importlib.import_module(name).routes(self):
                self._routes[route.host].append(route)
        for host_routes in self._routes.values():
            host_routes.sort(key=lambda r: len(r.prefix), reverse=True)  # stable: module order among equals

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeCI:
        self.stopping.clear()
        for role in HOSTS:
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
        """Stop every host promptly: hanging handlers are released (they answer 503), open
        keep-alive connections are cut. Safe to call twice."""
        self.stopping.set()
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
        return f"http://{host!s}:{port}"

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

    @property
    def blob_url(self) -> str:
        """The Azure Blob storage stand-in that GitHub Actions' artifact URLs name."""
        return self._url("blob")

    # -- state ---------------------------------------------------------------------------------

    def add_project(self, vcs: str, user: str, name: str, private: bool = False) -> FakeProject:
        project = FakeProject(vcs, user, name, private, blobs=self.blobs)
        replaced = self.projects.get((vcs, user, name))
        if replaced is not None:
            self.blobs.discard(*(a for b in replaced.builds.values() for a in b.artifacts))
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
        """The URL a CircleCI listing reports for the artifact (circleci_v1.artifact_url)."""
        return circleci_v1.artifact_url(self, project, build, artifact)

    def presigned_url(self, blob_id: int) -> str:
        """A storage URL for the blob, signed, expiring after `faults.presign_ttl` seconds."""
        return self.blobs.presigned_url(self.storage_url, blob_id, self.faults.presign_ttl)

    # -- for the routes: waiting that ends when the fake stops --------------------------------------

    def hold(self, switch: str) -> None:
        """Wait while the fault switch `switch` is on; 503 if the fake stops meanwhile."""
        while getattr(self.faults, switch) and not self.stopping.is_set():
            self.stopping.wait(0.05)
        if self.stopping.is_set():
            raise Reply(503, {"message": "shutting down"})

    def wait(self, seconds: float) -> None:
        """Sleep (a slow host or file), cut short when the fake stops."""
        self.stopping.wait(seconds)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, handler: _Handler, role: str, method: str) -> None:
        raw_path, _, query_text = handler.path.partition("?")
        query = dict(urllib.parse.parse_qsl(query_text, keep_blank_values=True))
        record = Recorded(role, method, raw_path, query, {k.lower(): v for k, v in handler.headers.items()}, 0, time.time())
        with self._lock:
            self._requests.append(record)
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length > 0 else b""  # (the object service's startDownload reads it)
            request = Request(role, method, handler.path, raw_path, query, handler.headers, body, record, handler)
            if role == "api":
                self._api_host_faults()
            for route in self._routes[role]:
                if raw_path.startswith(route.prefix):
                    route.handle(request)
            raise Reply(404, {"message": "Not found"})
        except Reply as reply:
            record.status = reply.status
            self._send(handler, reply, head=method == "HEAD")
        except Served as served:
            record.status = served.status
        except OSError:  # the client went away
            record.status = -1
            handler.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug in the fake: answer 500 rather than a traceback and a dead socket
            record.status = 500
            self._send(handler, Reply(500, {"message": f"fake server error: {e!r}"}), head=method == "HEAD")

    def _api_host_faults(self) -> None:
        self.hold("api_hang")
        if self.faults.api_latency:
            self.wait(self.faults.api_latency)
        status = self.faults.pop("api_statuses")
        if status is not None:
            raise Reply(status, {"message": f"injected {status}"}, headers={"Retry-After": "1"} if status == 429 else {})

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
