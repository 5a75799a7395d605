"""A scripted HTTP/1.1 server on 127.0.0.1 for transport tests: one thread per connection,
each answering in the subclass's `serve(conn)`. Raw sockets on purpose: the tests decide every
byte the client sees."""

from __future__ import annotations

import socket
import threading


class LoopbackServer:
    def __init__(self, scheme: str = "http") -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            self.on_accept()
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def on_accept(self) -> None:
        """Called in the accepting thread, before the connection's own thread starts."""

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


def read_head(conn: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
    """The next request head (without its blank line) and the bytes after it, or None once the
    client closes; `buf` holds bytes already received."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest
