"""The benchmark's static "files" host: the same artifacts the fake CircleCI serves, as plain
files with an autoindex, for the FUSE peers (rclone's http backend, httpdirfs), which mount a
web server's directory listing rather than a CI API.

    python files.py MANIFEST.json

Serves every build of the manifest (the format scripts/benchlib/fakeci.py reads) as
`/<build>/<artifact path>`, directories as an HTML index of `<a href="name">` links (with a
trailing slash for subdirectories, as nginx's and Apache's autoindex write them). Speaks what
the peers need: HTTP/1.1 keep-alive, HEAD, GET with one Range (`bytes=a-b`, `bytes=a-`,
`bytes=-n`: 206 + Content-Range; 416 when unsatisfiable; index pages too), Content-Length and
Last-Modified (the build's stop time).
File bodies go out with sendfile(2) from the data files, so this host is not the bottleneck.

Prints one line `READY {"files": URL}` once serving on 127.0.0.1, then reads JSON commands on
stdin, one per line, each answered with one line:

    {"stats": true}  -> {"HEAD": n, "GET": n, "bytes": n}   counted since the last stats

Stdin closing (the benchmark exiting) stops the server.
"""

from __future__ import annotations

import email.utils
import html
import json
import os
import re
import socket
import sys
import threading
import urllib.parse
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# run as a script (python scripts/benchlib/X.py): scripts/ goes on sys.path for benchlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib.common import serve_commands

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Tree:
    """Path -> file (local path, size, mtime) and directory -> sorted child names."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.files: dict[str, tuple[str, int, str]] = {}
        self.dirs: dict[str, set[str]] = {"/": set()}
        for build in manifest["builds"]:
            stamp = datetime.fromisoformat(build["stop_time"].replace("Z", "+00:00")).timestamp()
            modified = email.utils.formatdate(stamp, usegmt=True)
            for rel, local in build["artifacts"]:
                path = f"/{build['num']}/{rel}"
                self.files[path] = (local, os.path.getsize(local), modified)
                parts = path.strip("/").split("/")
                for depth in range(len(parts)):
                    parent = "/" + "".join(p + "/" for p in parts[:depth])
                    child = parts[depth] + ("/" if depth < len(parts) - 1 else "")
                    self.dirs.setdefault(parent, set()).add(child)

    def index(self, path: str) -> bytes:
        links = "".join(f'<a href="{urllib.parse.quote(name)}">{html.escape(name)}</a>\n'
                        for name in sorted(self.dirs[path]))
        title = html.escape(path)
        return (f"<!DOCTYPE html>\n<html><head><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n"
                f'<pre><a href="../">../</a>\n{links}</pre></body></html>\n').encode()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # as the fake CI server: a full accept queue costs a 1 s SYN retry

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.counts = {"HEAD": 0, "GET": 0, "bytes": 0}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # clients reset connections: not news
        pass

    def count(self, method: str, nbytes: int) -> None:
        with self.lock:
            self.counts[method] += 1
            self.counts["bytes"] += nbytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the peers reuse connections
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body are separate writes: without this, Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_HEAD(self) -> None:
        self.serve(head=True)

    def do_GET(self) -> None:
        self.serve(head=False)

    def reply(self, status: int, body: bytes, content_type: str, head: bool, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")  # see serve()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server.count(self.command, 0 if head else len(body))

    def serve(self, head: bool) -> None:
        tree = self.server.tree
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        local: str | None = None
        page = b""
        if path in tree.dirs:
            page = tree.index(path)
            total, modified, ctype = len(page), "", "text/html; charset=utf-8"
        elif path + "/" in tree.dirs:  # a directory without its slash: where autoindex servers redirect
            self.reply(301, b"", "text/plain", head, {"Location": urllib.parse.quote(path + "/")})
            return
        elif path in tree.files:
            local, total, modified = tree.files[path]
            ctype = "application/octet-stream"
        else:
            self.reply(404, b"not found\n", "text/plain", head)
            return
        start, end, status = 0, total - 1, 200
        spec = self.headers.get("Range")
        if spec:
            m = _RANGE_RE.match(spec.strip())
            first, last = (m.group(1), m.group(2)) if m else ("", "")
            if first and (not last or int(last) >= int(first)):
                start, end, status = int(first), min(int(last), total - 1) if last else total - 1, 206
            elif not first and last:
                start, status = max(0, total - int(last)), 206
            if status == 206 and start >= total:
                self.reply(416, b"range not satisfiable\n", "text/plain", head, {"Content-Range": f"bytes */{total}"})
                return
        length = end - start + 1 if total else 0
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        # on every answer, 416 included: httpdirfs 1.2.5 prefetches a segment at EOF when the
        # size is a multiple of its 8 MiB segments, and exits ("no range support") if the 416
        # lacks the header (and crashes if the 416 has no body)
        self.send_header("Accept-Ranges", "bytes")
        if modified:
            self.send_header("Last-Modified", modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        self.server.count(self.command, 0 if head else length)
        if head or not length:
            return
        if local is None:
            self.wfile.write(page[start:end + 1])
            return
        with open(local, "rb") as f:
            sent = 0
            while sent < length:
                n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent, length - sent)
                if n == 0:
                    raise ConnectionError("file shrank")
                sent += n


def main(manifest_path: str) -> None:
    server = Server(Tree(json.loads(Path(manifest_path).read_text())))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    def answer(cmd: dict[str, Any]) -> str:
        if not cmd.get("stats"):
            return "error: unknown command"
        with server.lock:
            counts, server.counts = server.counts, {"HEAD": 0, "GET": 0, "bytes": 0}
        return json.dumps(counts)

    try:
        serve_commands({"files": f"http://127.0.0.1:{server.server_address[1]}"}, answer)
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except KeyboardInterrupt:
        pass
