"""The demo data: realistic, deterministic builds (seeded bytes, fixed times)."""

from __future__ import annotations

import random
import zipfile

from ciartfs.fakeserver.model import FakeBuild
from ciartfs.fakeserver.server import FakeCI
from ciartfs.fakeserver.taskcluster import PAST
from ciartfs.fakeserver.v2 import FakeJob

# An ELF64 little-endian header of type ET_CORE for x86-64: `file` calls the dump a core file.
_CORE_HEADER = (b"\x7fELF\x02\x01\x01\x00" + bytes(8) + (4).to_bytes(2, "little") + (62).to_bytes(2, "little")
                + (1).to_bytes(4, "little") + bytes(24 + 4) + (64).to_bytes(2, "little") + (56).to_bytes(2, "little")
                + bytes(8))
_CSS = b"body { font-family: sans-serif; } .covered { background: #cfc; } .missed { background: #fcc; }\n"


def _junit(build: int, node: int, failed: bool) -> bytes:
    cases = [f'  <testcase classname="api.tests" name="test_{i}" time="0.{i:02d}"/>' for i in range(12)]
    if failed:
        cases[5] = ('  <testcase classname="api.tests" name="test_login" time="0.12">\n'
                    '    <failure message="FAILED: expected 200, got 500">AssertionError</failure>\n  </testcase>')
    head = f'<?xml version="1.0"?>\n<testsuite name="api build {build} node {node}" tests="12" failures="{int(failed)}">\n'
    return (head + "\n".join(cases) + "\n</testsuite>\n").encode()


def _coverage(build: int) -> dict[str, bytes]:
    index = (f"<!DOCTYPE html>\n<html><head><title>Coverage for build {build}</title>"
             '<link rel="stylesheet" href="style.css"></head>\n'
             f'<body><h1>Coverage: {80 + build % 15}%</h1>\n<ul><li><a href="src/app.py.html">src/app.py</a></li></ul>'
             "</body></html>\n").encode()
    page = (b'<!DOCTYPE html>\n<html><head><title>src/app.py</title><link rel="stylesheet" href="../style.css">'
            b'</head>\n<body><pre>\n<span class="covered">def handler(request):</span>\n'
            b'<span class="missed">    raise NotImplementedError</span>\n</pre>'
            b'<a href="../index.html">back</a></body></html>\n')
    return {"coverage/index.html": index, "coverage/style.css": _CSS, "coverage/src/app.py.html": page}


def _log(rng: random.Random, build: int, lines: int, failed: bool) -> bytes:
    out = []
    for i in range(lines):
        out.append(f"[{i:06d}] step {i % 17}: compiling module_{rng.randrange(1000)} ... ok")
    if failed:
        out.append("FAILED: 1 test failed (test_login)")
    out.append(f"build {build} done")
    return ("\n".join(out) + "\n").encode()


def _fill(build: FakeBuild, rng: random.Random, nodes: int) -> None:
    failed = build.status == "failed"
    for node in range(nodes):
        build.add_artifact("test-results/junit.xml", _junit(build.build_num, node, failed and node == 0), node)
    for path, data in _coverage(build.build_num).items():
        build.add_artifact(path, data)
    build.add_artifact("logs/build.log", _log(rng, build.build_num, 4000, failed))
    build.add_artifact("dist/app.tar.gz", rng.randbytes(3 * 1024 * 1024 + rng.randrange(4096)))
    if failed:
        build.add_artifact("core_dumps/core.1234.dump", _CORE_HEADER + rng.randbytes(256 * 1024 - len(_CORE_HEADER)))


def demo_dataset(fake: FakeCI) -> None:
    """github/acme/api (12 builds, two branches, one failed, the newest running; build 1 has an
    expired artifact; pipeline 11 ran a workflow twice, pipeline 12 waits on an approval),
    github/acme/secret (private), bitbucket/acme/web, a Taskcluster task group, and GitHub
    Actions runs of acme/api (and the private acme/secret)."""
    rng = random.Random(20261101)
    api = fake.add_project("github", "acme", "api")
    for num in range(1, 13):
        branch = "feature/login" if num % 3 == 0 else "main"
        status = "failed" if num == 10 else "success"
        lifecycle = "running" if num == 12 else "finished"
        stop = f"2026-11-{num:02d}T10:{num:02d}:00Z"
        build = api.add_build(num, branch=branch, status="running" if lifecycle == "running" else status,
                              lifecycle=lifecycle, stop_time=stop, start_time=f"2026-11-{num:02d}T09:50:00Z")
        if lifecycle == "running":
            build.add_artifact("logs/build.log", _log(rng, num, 200, False))
        else:
            _fill(build, rng, nodes=2 if num % 2 == 0 else 1)
    # pipeline 11 ran workflow "ci" (builds 10 and 11 as jobs), then a rerun of it (build 11 again)
    pipeline = fake.v2.add_pipeline(api, 11, branch="main")
    pipeline.add_workflow("ci", [10, 11], status="failed", created_at="2026-11-10T09:40:00.000Z")
    pipeline.add_workflow("ci", [11], created_at="2026-11-11T09:40:00.000Z")
    # pipeline 12, still running: build 12 runs, a test job waits in the queue (no number yet),
    # an approval job is on hold and the deploy behind it is blocked
    running = fake.v2.add_pipeline(api, 12, branch="main", created_at="2026-11-12T09:49:00.000Z")
    running.add_workflow("release", [12, FakeJob("integration-test", "queued"), FakeJob("hold", "on_hold", type="approval"),
                                     FakeJob("deploy", "blocked")],
                         status="on_hold", created_at="2026-11-12T09:50:00.000Z", stopped_at=None)
    # past CircleCI's 30-day retention: listed, but its URL answers 404
    api.builds[1].add_artifact("logs/trace.log", b"expired long ago\n", expired=True)
    secret = fake.add_project("github", "acme", "secret", private=True)
    build = secret.add_build(1, stop_time="2026-11-05T12:00:00Z")
    build.add_artifact("credentials-report.txt", b"only visible with a token\n")
    web = fake.add_project("bitbucket", "acme", "web")
    for num in (1, 2):
        build = web.add_build(num, stop_time=f"2026-10-2{num}T08:00:00Z")
        build.add_artifact("site/index.html", f"<html><body>web build {num}</body></html>\n".encode())
    _taskcluster(fake, rng)
    _github(fake, rng)


DEMO_TASK_GROUP = "dEmOgRoUQaC0000000001A"
DEMO_TASKS = ("dEmOtAsKQaC0000000001A", "dEmOtAsKQaC0000000002A", "dEmOtAsKQaC0000000003A")


def _taskcluster(fake: FakeCI, rng: random.Random) -> None:
    """A push: a build task retried once (run 0 failed), a test task that failed, then was
    re-run (rerunTask) and passed (its first run keeps an artifact past its `expires`), and a
    lint task still running, whose live log grows by a line every 2 s while the fake runs."""
    build = fake.queue.add_task(DEMO_TASKS[0], DEMO_TASK_GROUP, name="build-linux64")
    failed = build.add_run("exception", started="2026-11-10T10:00:00.000Z", resolved="2026-11-10T10:02:00.000Z")
    failed.add_artifact("public/logs/live.log", _log(rng, 1, 300, True), content_type="text/plain")
    ok = build.add_run("completed", started="2026-11-10T10:03:00.000Z", resolved="2026-11-10T10:20:00.000Z")
    ok.add_artifact("public/logs/live.log", _log(rng, 2, 3000, False), content_type="text/plain", gzip=True)
    # stored on the object service, as current workers upload: its hashes are checked once read whole
    ok.add_artifact("public/build/target.tar.gz", rng.randbytes(2 * 1024 * 1024), content_type="application/gzip",
                    storage_type="object")
    ok.add_artifact("public/build/target.json", b'{"version": "1.2.3", "arch": "x86_64"}\n',
                    content_type="application/json", gzip=True)
    ok.add_artifact("public/build/symbols.zip", storage_type="error", reason="file-missing-on-worker",
                    message="/builds/worker/symbols.zip does not exist")
    test = fake.queue.add_task(DEMO_TASKS[1], DEMO_TASK_GROUP, name="test-linux64")
    run = test.add_run("failed", started="2026-11-10T10:21:00.000Z", resolved="2026-11-10T10:30:00.000Z")
    run.add_artifact("public/logs/live.log", _log(rng, 3, 500, True), content_type="text/plain", gzip=True)
    run.add_artifact("public/test_info/report.html", b"<html><body>1 FAILED, 41 passed</body></html>\n",
                     content_type="text/html")
    # the queue still lists an artifact past its `expires`; getArtifact answers 410
    run.add_artifact("public/test_info/profile.json", b'{"samples": []}\n', content_type="application/json",
                     expires=PAST)
    rerun = test.rerun("completed", started="2026-11-10T11:00:00.000Z", resolved="2026-11-10T11:08:00.000Z")
    rerun.add_artifact("public/logs/live.log", _log(rng, 4, 500, False), content_type="text/plain", gzip=True)
    rerun.add_artifact("public/test_info/report.html", b"<html><body>42 passed</body></html>\n",
                       content_type="text/html")
    lint = fake.queue.add_task(DEMO_TASKS[2], DEMO_TASK_GROUP, name="lint")
    running = lint.add_run("running", started="2026-11-10T10:21:00.000Z")
    running.add_live_log(_log(rng, 4, 40, False), tick_every=2.0)


def _github(fake: FakeCI, rng: random.Random) -> None:
    """GitHub Actions on acme/api: four CI runs (main and feature/login; run 3 failed, run 4 is
    still in progress), each finished one with a coverage report (zip), its test logs (zip) and
    a single-file `archive: false` summary; run 1's logs are past their retention (expired);
    and a nightly workflow's run with a build output. acme/secret (private) has one run."""
    api = fake.github.add_repo("acme", "api")
    ci, nightly = api.add_workflow("ci.yml", "CI"), api.add_workflow("nightly.yml", "Nightly")
    for num in range(1, 5):
        failed = num == 3
        run = api.add_run(ci, branch="feature/login" if num % 2 == 0 else "main",
                          conclusion=None if num == 4 else ("failure" if failed else "success"),
                          created_at=f"2026-11-{10 + num:02d}T09:00:00Z", event="push" if num % 2 else "pull_request")
        if num == 4:
            continue
        coverage = _coverage(num)
        run.add_artifact("coverage-report", {"index.html": coverage["coverage/index.html"],
                                             "style.css": coverage["coverage/style.css"],
                                             "src/": b"", "src/app.py.html": coverage["coverage/src/app.py.html"]})
        run.add_artifact("test-logs", {"junit.xml": _junit(num, 0, failed), "logs/test.log": _log(rng, num, 800, failed)},
                         expired=num == 1)
        status = "FAILED" if failed else "passed"
        run.add_artifact("summary.md", data=f"# CI run {num}\n\nTests {status}.\n".encode(), archive=False)
    build = api.add_run(nightly, created_at="2026-11-14T02:00:00Z", event="schedule")
    build.add_artifact("dist", {"app.tar.gz": rng.randbytes(512 * 1024), "checksums.txt": b"sha256 app.tar.gz\n"},
                       compression=zipfile.ZIP_STORED)
    secret = fake.github.add_repo("acme", "secret", private=True)
    secret.add_run(created_at="2026-11-05T12:00:00Z").add_artifact("credentials-report", {"report.txt": b"only with a token\n"})
