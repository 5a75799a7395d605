"""A service that must never be fetched through the mount: the stand-in for a loopback admin
page or a cloud metadata service, for the address-rule tests.

Any GET is answered with credentials-looking JSON (`SecretAccessKey`), so a test can look for
them in the mount; `/redirect?to=URL` answers 302 to URL (to build redirect chains). It binds
to any address (IPv6, link-local with a zone: "fe80::1%eth0") and records every request.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "internal-service-secret"
ANSWER = json.dumps({"Code": "Success", "AccessKeyId": "ASIA0000FAKE", "SecretAccessKey": SECRET}).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: InternalService, host: str) -> None:
        self.service = service
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # getaddrinfo gives the full socket address: a link-local one needs its zone's scope id
        address: Any = socket.getaddrinfo(host, 0, self.address_family, socket.SOCK_STREAM)[0][4]
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        service = self.server.service
        with service.lock:
            service.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        path, _, query = self.path.partition("?")
        if path == "/redirect":
            target = urllib.parse.parse_qs(query).get("to", [""])[0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)


class InternalService:
    """`with InternalService("127.0.0.1") as svc:` ... `svc.url`, `svc.requests`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self._server = _Server(self, host)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="internal-service", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """http://host:port, an IPv6 host in brackets (without its zone: URLs cannot carry one)."""
        host = self.host.split("%", 1)[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def redirect_url(self, to: str) -> str:
        return f"{self.url}/redirect?to={urllib.parse.quote(to, safe='')}"

    def start(self) -> InternalService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> InternalService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
