"""Datasets the fake server is filled with, shared by the in-process tier and real mounts."""

from __future__ import annotations

from typing import Any

from ciartfs.fakeserver import FakeCI, FakeProject
from conftest import blob

STOP = "2026-11-01T10:00:00Z"
STOP_EPOCH = 1793527200  # STOP as a Unix time

TC_ID, TC_TOKEN = "project/ciartfs/tester", "tc-access-token-xyz"


def sample(fake: FakeCI) -> FakeProject:
    """github/acme/api: builds 1-3 completed (3 on feature/x), 4 running."""
    p = fake.add_project("github", "acme", "api")
    b1 = p.add_build(build_num=1, branch="main", status="success", lifecycle="finished", stop_time="2026-10-30T10:00:00Z")
    b1.add_artifact("report.txt", b"build one\n")
    b2 = p.add_build(build_num=2, branch="main", status="failed", lifecycle="finished", stop_time=STOP)
    b2.add_artifact("test-results/junit.xml", b"<testsuite><testcase name='a'>FAILED: boom</testcase></testsuite>\n")
    b2.add_artifact("coverage/index.html", b"<html><a href='src/app.py.html'>app</a></html>\n")
    b2.add_artifact("coverage/src/app.py.html", b"<html>covered</html>\n")
    b2.add_artifact("/tmp/circle-artifacts.7wgAaIU/file.txt", b"leading slash\n")
    b2.add_artifact("dist/app.bin", blob(2, 3 * 1024 * 1024 + 123))
    b2.add_artifact("empty.txt", b"")
    b2.add_artifact("test-results/junit.xml", b"<testsuite>node one ok</testsuite>\n", node_index=1)
    b3 = p.add_build(build_num=3, branch="feature/x", status="success", lifecycle="finished", stop_time="2026-11-02T10:00:00Z")
    b3.add_artifact("logs/build.log", b"feature build log\nall tests passed\n")
    b4 = p.add_build(build_num=4, branch="main", status="running", lifecycle="running", stop_time=None)
    b4.add_artifact("partial.log", b"still running\n")
    return p


def files_of(project: FakeProject, build: int) -> dict[str, bytes]:
    """Expected relative path (node/path) -> bytes, applying the leading-slash rule."""
    return {f"{a.node_index}/{a.path.lstrip('/')}": a.data for a in project.builds[build].artifacts}


def storage_gets(fake: FakeCI) -> list:
    return [r for r in fake.requests if r.server == "storage" and r.method == "GET"]


def slug(n: int) -> str:
    """A well-formed slugid (taskId / taskGroupId)."""
    return f"fAkEtAsK{'Q'}a{'C'}{n:010d}A"


def tc_mount(mount: Any, fake: FakeCI, *args: str, creds: bool = False, **kw: Any) -> Any:
    """A real mount with Taskcluster at the fake's queue (and our client's credentials if `creds`)."""
    env = {"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN} if creds else {}
    return mount("--taskcluster-root-url", fake.api_url, *args, env=env, **kw)


def tc_dataset(fake: FakeCI) -> FakeCI:
    """Task 1: two runs (run 0 failed, run 1 completed) in group G with a third task."""
    q = fake.queue
    q.clients[TC_ID] = TC_TOKEN
    group = slug(99)
    t1 = q.add_task(slug(1), group, name="build-linux")
    r0 = t1.add_run("failed")
    r0.add_artifact("public/logs/live.log", b"run 0 log\nFAILED: flaky\n")
    r1 = t1.add_run("completed")
    r1.add_artifact("public/logs/live.log", b"run 1 log\nall good\n")
    r1.add_artifact("public/build/target.tar.gz", blob(1, 2 * 1024 * 1024 + 7))
    r1.add_artifact("public/build/notes.txt", b"notes\n", gzip=True)
    r1.add_artifact("public/test/report.json", b'{"failed": 0}\n' * 5000, gzip=True)
    r1.add_artifact("public/missing.txt", storage_type="error", reason="file-missing-on-worker",
                    message="/builds/worker/missing.txt was not found")
    r1.add_artifact("public/ref/link.txt", b"referenced\n", storage_type="reference")
    r1.add_artifact("public/obj/object.bin", blob(2, 5000), storage_type="object")
    r1.add_artifact("private/secret.txt", b"secret bytes\n")
    t2 = q.add_task(slug(2), group, name="test-linux")
    t2.add_run("completed").add_artifact("public/logs/live.log", b"task 2\n")
    t3 = q.add_task(slug(3), group, name="build-linux")  # a duplicate name: no link
    t3.add_run("completed").add_artifact("public/logs/live.log", b"task 3\n")
    return fake


def v2_dataset(fake: FakeCI) -> FakeCI:
    """A v2-only project (circleci/<org>/<project>) and github/acme/api with pipeline 7:
    workflow 'ci' run twice (a rerun) and 'deploy/prod', each with jobs."""
    only = fake.add_project("circleci", "6f0b5b0e-org", "a1b2c3-proj")
    job = only.add_build(build_num=42, subject="build")
    for i in range(5):  # more than one page (the fake pages by 2)
        job.add_artifact(f"out/f{i}.txt", f"file {i}\n".encode())
    job.add_artifact("bin/tool", blob(1, 300_000), node_index=1)

    gh = fake.add_project("github", "acme", "api")
    for num, name in [(10, "build"), (11, "test"), (12, "build"), (13, "test"), (14, "push")]:
        b = gh.add_build(build_num=num, subject=name)
        b.add_artifact("report.txt", f"job {num} ({name})\n".encode())
    b = gh.builds[11]
    b.add_artifact("coverage/index.html", b"<html>cov</html>\n")
    pipeline = fake.v2.add_pipeline(gh, 7)
    pipeline.add_workflow("ci", [10, 11], created_at="2026-11-01T09:50:00.000Z")
    pipeline.add_workflow("ci", [12, 13], created_at="2026-11-01T09:55:00.000Z")  # the rerun
    pipeline.add_workflow("deploy/prod", [14], created_at="2026-11-01T09:58:00.000Z")
    return fake


# -- HTML on the circle-artifacts host --

BIG = 20 << 20  # a large report


def html_gets(fake: FakeCI, suffix: str) -> list:
    """GETs the circle-artifacts host answered for paths ending in `suffix`."""
    return [r for r in fake.requests if r.server == "html" and r.method == "GET" and r.path.endswith(suffix)]


def site(fake: FakeCI, files: dict[str, bytes]) -> tuple[FakeProject, Any]:
    """github/acme/site build 1 (public: its HTML is on the html host) with `files`."""
    project = fake.add_project("github", "acme", "site")
    build = project.add_build(1)
    for path, data in files.items():
        build.add_artifact(path, data)
    return project, build
