"""The benchmark's artifact server: the bundled fake CircleCI (ciartfs.fakeserver.FakeCI),
run in its own process so that the benchmark process never serves HTTP while it reads
through a FUSE mount.

    python fakeci.py MANIFEST.json

The manifest names one project and its builds: {"project": [vcs, user, repo], "builds":
[{"num": N, "stop_time": ISO, "artifacts": [[path, local_file], ...]}], "tc_groups": [{"group_id":
ID, "tasks": N, "files": [name, ...], "needle": TEXT}]} (Taskcluster groups made on the fly). Prints one line
`READY {"api": URL, "storage": URL, "blob_root": DIR}` (the fake's own hosts, and a directory
where blob/<id>, the path of a presigned storage URL, is a symlink to the artifact's file, for
a static server to stand in for the storage host) once serving, then reads JSON
commands on stdin, one per line, each answered with one line:

    {"publish": {"api": URL|null, "storage": URL|null}}  -> ok
        the host URLs the fake writes into its answers (artifact URLs in listings, the
        presigned Location of redirects): a shaping proxy's, or null for the fake's own
    {"stats": true}  -> {"api": n, "storage": n}   requests received since the last stats
                        (the request log is cleared each time)

Stdin closing (the benchmark exiting) stops the server.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from common import serve_commands  # run as a script: scripts/benchlib/ is on sys.path

from ciartfs.fakeserver import FakeCI


class BenchCI(FakeCI):
    """FakeCI whose advertised host URLs can point at a proxy in front of it."""

    published: dict[str, str | None]

    @property
    def api_url(self) -> str:
        return self.published.get("api") or super().api_url

    @property
    def storage_url(self) -> str:
        return self.published.get("storage") or super().storage_url

    def own_url(self, role: str) -> str:
        return getattr(super(), f"{role}_url")


def main(manifest_path: str) -> None:
    manifest = json.loads(Path(manifest_path).read_text())
    blob_root = Path(manifest_path).with_name("blobs")
    (blob_root / "blob").mkdir(parents=True, exist_ok=True)
    fake = BenchCI()
    fake.published = {}
    project = fake.add_project(*manifest["project"])
    for spec in manifest["builds"]:
        build = project.add_build(spec["num"], stop_time=spec["stop_time"])
        for path, local in spec["artifacts"]:
            artifact = build.add_artifact(path, Path(local).read_bytes())
            link = blob_root / "blob" / str(artifact.blob_id)
            link.unlink(missing_ok=True)
            link.symlink_to(Path(local).resolve())
    for group in manifest.get("tc_groups", []):
        fake.queue.add_generated_group(group["group_id"], group["tasks"], files=tuple(group["files"]),
                                       needle=group["needle"].encode())
    fake.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    def answer(cmd: dict[str, Any]) -> str:
        if "publish" in cmd:
            fake.published = {k: v for k, v in cmd["publish"].items() if v}
            return "ok"
        if cmd.get("stats"):
            counts = {"api": 0, "storage": 0}
            for r in fake.requests:
                counts[r.server] = counts.get(r.server, 0) + 1
            fake.clear_requests()
            return json.dumps(counts)
        return "error: unknown command"

    try:
        serve_commands({"api": fake.own_url("api"), "storage": fake.own_url("storage"), "blob_root": str(blob_root)}, answer)
    finally:
        fake.stop()


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except KeyboardInterrupt:
        pass
