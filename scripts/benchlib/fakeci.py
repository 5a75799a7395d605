"""The benchmark's artifact server: the bundled fake CircleCI (ciartfs.fakeserver.FakeCI),
run in its own process so that the benchmark process never serves HTTP while it reads
through a FUSE mount.

    python fakeci.py MANIFEST.json [LARGE_MIB [TLS_PEM]]

The manifest names one project and its builds: {"project": [vcs, user, repo], "builds":
[{"num": N, "stop_time": ISO, "artifacts": [[path, local_file], ...]}], "tc_groups": [{"group_id":
ID, "tasks": N, "files": [name, ...], "needle": TEXT}]} (Taskcluster groups made on the fly). It also serves the
GitHub Actions data of benchlib/ghdata.py (its `large` artifact LARGE_MIB MiB, default 500):
one repository, one completed run per artifact, the zips made on the fly by the fake's blob
host (Azure-like: it refuses a request carrying Authorization with 403, and ignores suffix
ranges); their CRCs, central directories and digests are computed before READY, so that no
scenario pays for them. Prints one line `READY {"api": URL, "storage": URL, "blob": URL,
"blob_root": DIR, "github": {"owner", "repo", "token", "runs": {name: id}, "artifacts": {name: id}}}`
(the fake's own hosts, a directory where blob/<id>, the path of a presigned storage URL, is a
symlink to the artifact's file, for a static server to stand in for the storage host, and the
GitHub data's ids; with TLS_PEM, a certificate chain and its key in one PEM file, also
"storage_tls": the storage host once more, over HTTPS) once serving, then reads JSON commands
on stdin, one per line, each answered with one line:

    {"publish": {"api": URL|null, "storage": URL|null, "blob": URL|null}}  -> ok
        the host URLs the fake writes into its answers (artifact URLs in listings, the
        presigned Location of redirects): a shaping proxy's, or null for the fake's own
    {"stats": true}  -> {"api": n, "storage": n, "blob": n, "blob_log": [[range, status, bytes], ...]}
                        requests received since the last stats (the request log is cleared
                        each time); blob_log: the blob host's requests in arrival order, each
                        with its Range header ("" without one), status and body bytes sent

Stdin closing (the benchmark exiting) stops the server.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

# run as a script (python scripts/benchlib/X.py): scripts/ goes on sys.path for benchlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib.common import serve_commands
from benchlib.ghdata import OWNER, REPO, TOKEN, archives
from ciartfs.fakeserver import FakeCI
from ciartfs.fakeserver.server import _Server


class TlsServer(_Server):
    """One of the fake's hosts over HTTPS: each accepted connection is wrapped (the handshake
    happens in the accepting thread: a benchmark client never stalls one)."""

    def __init__(self, fake: FakeCI, role: str, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(fake, role, 0)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        return self.context.wrap_socket(conn, server_side=True), addr

LARGE_MIB_DEFAULT = 500


class BenchCI(FakeCI):
    """FakeCI whose advertised host URLs can point at a proxy in front of it."""

    published: dict[str, str | None]

    @property
    def api_url(self) -> str:
        return self.published.get("api") or super().api_url

    @property
    def storage_url(self) -> str:
        return self.published.get("storage") or super().storage_url

    @property
    def blob_url(self) -> str:
        return self.published.get("blob") or super().blob_url

    def own_url(self, role: str) -> str:
        return str(getattr(super(), f"{role}_url"))


def add_github(fake: FakeCI, large_mib: int) -> dict[str, Any]:
    """The repository of benchlib/ghdata.py: one completed, successful run per artifact."""
    repo = fake.github.add_repo(OWNER, REPO)
    flow = repo.add_workflow("ci.yml")
    runs, artifact_ids = {}, {}
    for name, archive in archives(large_mib=large_mib).items():
        run = repo.add_run(flow)
        artifact = run.add_artifact(name, content=archive)
        archive.read(archive.size - 1, archive.size)  # its CRCs and central directory, now
        assert artifact.digest  # (hashed now: the listing names it)
        runs[name], artifact_ids[name] = run.id, artifact.id
    return {"owner": OWNER, "repo": REPO, "token": TOKEN, "runs": runs, "artifacts": artifact_ids}


def main(manifest_path: str, large_mib: int, tls_pem: str | None = None) -> None:
    manifest = json.loads(Path(manifest_path).read_text())
    blob_root = Path(manifest_path).with_name("blobs")
    (blob_root / "blob").mkdir(parents=True, exist_ok=True)
    fake = BenchCI(tokens={TOKEN})
    fake.published = {}
    project = fake.add_project(*manifest["project"])
    for spec in manifest["builds"]:
        build = project.add_build(spec["num"], stop_time=spec["stop_time"])
        for path, local in spec["artifacts"]:
            artifact = build.add_artifact(path, Path(local).read_bytes())
            link = blob_root / "blob" / str(artifact.blob_id)
            link.unlink(missing_ok=True)
            link.symlink_to(Path(local).resolve())
    github = add_github(fake, large_mib)
    for group in manifest.get("tc_groups", []):
        fake.queue.add_generated_group(group["group_id"], group["tasks"], files=tuple(group["files"]),
                                       needle=group["needle"].encode())
    fake.start()
    ready = {"api": fake.own_url("api"), "storage": fake.own_url("storage"), "blob": fake.own_url("blob"),
             "blob_root": str(blob_root), "github": github}
    tls = None
    if tls_pem:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_pem)
        tls = TlsServer(fake, "storage", context)
        threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        ready["storage_tls"] = f"https://127.0.0.1:{tls.server_address[1]}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    def answer(cmd: dict[str, Any]) -> str:
        if "publish" in cmd:
            fake.published = {k: v for k, v in cmd["publish"].items() if v}
            return "ok"
        if cmd.get("stats"):
            counts: dict[str, Any] = {"api": 0, "storage": 0, "blob": 0}
            blob_log = []
            for r in fake.requests:
                counts[r.server] = counts.get(r.server, 0) + 1
                if r.server == "blob":
                    blob_log.append([r.headers.get("x-ms-range") or r.headers.get("range", ""), r.status, r.bytes_sent])
            fake.clear_requests()
            return json.dumps({**counts, "blob_log": blob_log})
        return "error: unknown command"

    try:
        serve_commands(ready, answer)
    finally:
        if tls is not None:
            tls.shutdown()
            tls.server_close()
            tls.close_connections()
        fake.stop()


if __name__ == "__main__":
    try:
        main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else LARGE_MIB_DEFAULT, *sys.argv[3:4])
    except KeyboardInterrupt:
        pass
