"""The latency-only link of scripts/bench.py on nginx, as the issue measured it: light enough
that the servers are not the bottleneck of a scenario that sends thousands of small requests
(`ls -l`, `grep -r`): on 2 shared cores, proxy.py's asyncio relay cost ~0.15 ms of CPU per
request, competing with the filesystem it measured; nginx ~0.05 ms.

A rate cap is supported (`limit_rate`) but not used by the benchmark: nginx lets each request
send its first second's worth at full speed (limit = rate x (elapsed + 1)), so a ranged request
under `rate` bytes is not capped at all. proxy.py's token bucket per connection is the capped link.

    python nginx.py NAME=http://127.0.0.1:PORT|NAME=dir:/PATH [NAME=...]

An http upstream is proxied to; a dir: upstream is served as static files (Range, 206, 416),
standing in for S3 behind the fake CircleCI's presigned redirects: the issue's "artifact
server", with the fake API pointing at it.

Same protocol as proxy.py: prints `READY {"NAME": port, ...}`, then answers JSON commands on
stdin, one line each:

    {"rate": BYTES_PER_SECOND_OR_0, "latency": SECONDS}   -> ok   (rewrites the config, reloads,
                                                                   and answers once it is in force)
    {"stats": true}  -> {"NAME": {"requests": n, "bytes": n, "connections": n}}, since start

The delay before each response's first byte is the echo module's `echo_sleep` (Debian package
libnginx-mod-http-echo) followed by an internal redirect to the proxying location. Counts come
from nginx's access log (body bytes, one line per request). Stdin closing stops nginx.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# run as a script (python scripts/benchlib/X.py): scripts/ goes on sys.path for benchlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib.common import NGINX_ECHO_MODULE, serve_commands

STATUS_PATH = "/_bench_generation"  # answers the config generation in force; not counted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    def __init__(self, upstreams: dict[str, str], workdir: Path) -> None:
        self.upstreams = upstreams
        self.ports = {name: _free_port() for name in upstreams}
        self.dir = workdir
        self.conf = workdir / "nginx.conf"
        self.access_log = workdir / "access.log"
        self.generation = 0
        self.rate = 0.0
        self.latency = 0.0
        self._log_pos = 0
        self._counts = {name: {"requests": 0, "bytes": 0, "connections": 0} for name in upstreams}
        self._conns: set[tuple[str, str]] = set()
        self._by_port = {str(port): name for name, port in self.ports.items()}
        self._write_conf()
        with open(workdir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            self._wait_generation()
        except BaseException:
            self.stop()  # started here: never left running
            raise

    def _write_conf(self) -> None:
        self.generation += 1
        rate = int(self.rate)
        servers = []
        for name, port in self.ports.items():
            target = self.upstreams[name]
            if target.startswith("dir:"):
                relay = f"limit_rate {rate}; root {target[4:]};"
                upstream = ""
            else:
                relay = f"limit_rate {rate}; proxy_pass http://up_{name};"
                upstream = f"upstream up_{name} {{ server {target.split('://', 1)[-1].rstrip('/')}; keepalive 256; }}"
            # echo_sleep then an internal redirect: the delay comes before the first byte
            entry = f"echo_sleep {self.latency:.3f}; echo_exec @upstream;" if self.latency > 0 else relay
            servers.append(f"""
    {upstream}
    server {{
        listen 127.0.0.1:{port} backlog=512;
        location = {STATUS_PATH} {{ access_log off; return 200 "{self.generation}"; }}
        location / {{ {entry} }}
        location @upstream {{ {relay} }}
    }}""")
        root = "user root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"""{root}load_module {NGINX_ECHO_MODULE};
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    log_format counts '$server_port $connection $body_bytes_sent';
    access_log {self.access_log} counts;
    client_body_temp_path {self.dir}/client_body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    tcp_nodelay on;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_max_temp_file_size 0;   # relay at the client's pace: no spooling to disk
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    proxy_next_upstream off;      # a failed request is the client's to retry
{''.join(servers)}
}}
""")

    def _wait_generation(self) -> None:
        """Until every server answers with the current generation (a reload is asynchronous)."""
        deadline = time.monotonic() + 20
        pending = set(self.ports.values())
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.dir / 'stderr.log').read_text()[-2000:]}")
            for port in list(pending):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{STATUS_PATH}", timeout=2) as r:
                        if r.read().decode() == str(self.generation):
                            pending.discard(port)
                except OSError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not take its new configuration within 20 s")
                time.sleep(0.02)

    def shape(self, rate: float, latency: float) -> None:
        self.rate, self.latency = rate, latency
        self._write_conf()
        self.proc.send_signal(signal.SIGHUP)  # reload: new workers, old ones finish gracefully
        self._wait_generation()
        self._wait_old_workers()

    def _wait_old_workers(self) -> None:
        """Until the old workers have exited: until then one may still accept a connection and
        serve it with the old shaping. (Between scenarios no client is connected, so they exit
        at once; a straggler is waited for up to 20 s.)"""
        deadline = time.monotonic() + 20
        while len(self._workers()) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)

    def _workers(self) -> list[str]:
        try:
            return [c for t in os.listdir(f"/proc/{self.proc.pid}/task")
                    for c in Path(f"/proc/{self.proc.pid}/task/{t}/children").read_text().split()]
        except OSError:
            return []

    def stats(self) -> dict[str, dict[str, int]]:
        with open(self.access_log, "rb") as f:
            f.seek(self._log_pos)
            data = f.read()
        done = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_pos += done
        for line in data[:done].decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[0] not in self._by_port:
                continue
            name = self._by_port[parts[0]]
            counts = self._counts[name]
            counts["requests"] += 1
            counts["bytes"] += int(parts[2]) if parts[2].isdigit() else 0
            if (name, parts[1]) not in self._conns:
                self._conns.add((name, parts[1]))
                counts["connections"] += 1
        return self._counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str]) -> None:
    upstreams = dict(arg.split("=", 1) for arg in argv)
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        server = Nginx(upstreams, Path(tmp))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

        def answer(cmd: dict[str, Any]) -> str:
            if "rate" in cmd or "latency" in cmd:
                server.shape(float(cmd.get("rate", server.rate)), float(cmd.get("latency", server.latency)))
                return "ok"
            if cmd.get("stats"):
                return json.dumps(server.stats())
            return "error: unknown command"

        try:
            serve_commands(server.ports, answer)
        finally:
            server.stop()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
