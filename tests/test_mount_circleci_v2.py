"""Tier 3: CircleCI API v2 through real mounts: v2-only projects and the workflow view."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time

import pytest

from ciartfs.fakeserver.v2 import FakeJob
from ciartfs.errors import BadListing
from ciartfs.providers.circleci.v2 import parse_job, unique_names
from conftest import TOKEN, blob, wait_for


@pytest.fixture
def v2(fake):
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


def test_v2_only_project_jobs(v2, mount):
    m = mount(token=TOKEN)  # circleci.com's v2 artifact endpoint needs a token, public projects too
    job = m.path / "circleci/6f0b5b0e-org/a1b2c3-proj/42"
    assert sorted(os.listdir(job)) == ["0", "1"]
    assert sorted(os.listdir(job / "0/out")) == [f"f{i}.txt" for i in range(5)]
    for i in range(5):
        assert (job / f"0/out/f{i}.txt").read_bytes() == f"file {i}\n".encode()
    data = v2.projects[("circleci", "6f0b5b0e-org", "a1b2c3-proj")].builds[42].artifacts[-1].data
    assert hashlib.sha256((job / "1/bin/tool").read_bytes()).digest() == hashlib.sha256(data).digest()
    pages = [r for r in v2.requests if r.path.endswith("/42/artifacts")]
    assert len(pages) == 3 and sum("page-token" in r.query for r in pages) == 2
    with pytest.raises(OSError) as info:
        os.listdir(m.path / "circleci/6f0b5b0e-org/a1b2c3-proj/99")
    assert info.value.errno == errno.ENOENT


def test_workflow_view_with_renames(v2, mount):
    m = mount(token=TOKEN)
    pipe = m.path / "github/acme/api/pipeline/7"
    assert sorted(os.listdir(pipe)) == ["ci", "ci~2", "deploy%2Fprod"]
    assert sorted(os.listdir(pipe / "ci")) == ["build", "test"]
    assert (pipe / "ci/build/0/report.txt").read_bytes() == b"job 10 (build)\n"
    assert (pipe / "ci~2/test/0/report.txt").read_bytes() == b"job 13 (test)\n"
    assert (pipe / "deploy%2Fprod/push/0/report.txt").read_bytes() == b"job 14 (push)\n"
    found = sorted(os.path.relpath(os.path.join(d, f), pipe) for d, _, fs in os.walk(pipe) for f in fs)
    assert len(found) == 6 and "ci/test/0/coverage/index.html" in found
    with pytest.raises(FileNotFoundError):
        os.listdir(m.path / "github/acme/api/pipeline/8")
    # the same job through the v1.1 tree shares the cached blocks
    v2.clear_requests()
    assert (m.path / "github/acme/api/11/0/coverage/index.html").read_bytes() == b"<html>cov</html>\n"
    assert not [r for r in v2.requests if r.server == "storage"]


def test_parse_job_shapes():
    """The spec requires no job_number: its absence is a job that has not started; a number
    of another type is a malformed listing."""
    job = parse_job({"name": "deploy", "status": "blocked", "type": "build", "id": "j1", "started_at": None}, "w")
    assert job.number is None and not job.done and "has not started (status blocked)" in job.why_empty
    approval = parse_job({"job_number": 7, "name": "hold", "status": "success", "type": "approval"}, "w")
    assert approval.number == 7 and approval.done and approval.why_empty == "an approval job: it has no artifacts"
    ran = parse_job({"job_number": 8, "name": "t", "status": "retried", "type": "build"}, "w")
    assert ran.done and ran.why_empty is None
    for bad in ("8", True, 0, -1, 1.5):
        with pytest.raises(BadListing):
            parse_job({"job_number": bad, "name": "t", "status": "success"}, "w")


def test_unique_names_rule():
    items = [("ci", 2), ("ci", 1), ("a/b", 3), ("", 4), ("..", 5), ("x" * 300, 6), ("ci~2", 7)]
    names = dict((item[1], name) for name, item in unique_names(items, lambda i: i[0], lambda i: i[1]))
    assert names[1] == "ci" and names[2] == "ci~2" and names[7] == "ci~2~2"
    assert names[3] == "a%2Fb" and names[4] == "_" and names[5] == "_.."
    assert len(names[6].encode()) <= 255 and names[6].startswith("x" * 200)
    assert unique_names(list(reversed(items)), lambda i: i[0], lambda i: i[1]) == \
        unique_names(items, lambda i: i[0], lambda i: i[1])  # order-independent


def _expect_errno(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == code, f"{fn.__name__}{args}: {info.value}"


def _api_requests(fake, suffix: str) -> int:
    """How many times a listing was asked for (its first page)."""
    return len([r for r in fake.requests if r.server == "api" and r.path.endswith(suffix) and "page-token" not in r.query])


def test_waiting_workflow_lists_its_started_jobs_and_is_refreshed(v2, mount):
    """A workflow on hold: one job ran, one is queued and one blocked (neither has a
    job_number yet), an approval job waits. Its listing shows every job; the ones without
    artifacts are empty directories that say why; after --latest-ttl it is asked again."""
    gh = v2.projects["github", "acme", "api"]
    pipeline = v2.v2.add_pipeline(gh, 8)
    waiting = pipeline.add_workflow("release", [10, FakeJob("integration", "queued"), FakeJob("hold", "on_hold", type="approval"),
                                                FakeJob("deploy", "blocked")], status="on_hold", stopped_at=None)
    m = mount("--latest-ttl", "1", token=TOKEN)
    release = m.path / "github/acme/api/pipeline/8/release"
    assert sorted(os.listdir(release)) == ["build", "deploy", "hold", "integration"]
    assert (release / "build/0/report.txt").read_bytes() == b"job 10 (build)\n"
    for name, why in [("deploy", "has not started (status blocked)"), ("integration", "has not started (status queued)"),
                      ("hold", "an approval job")]:
        assert os.listdir(release / name) == []
        assert why in os.getxattr(release / name, "user.ciartfs.empty").decode()
        job = json.loads(os.getxattr(release / name, "user.ciartfs.job"))
        assert job["number"] is None and job["name"] == name
    assert json.loads(os.getxattr(release / "build", "user.ciartfs.job"))["number"] == 10
    assert not [r for r in v2.requests if "/job/" in r.path and not r.path.startswith("/api/v2/workflow/")]
    # the approval is given, deploy runs as job 15: the running workflow is asked again
    deploy = gh.add_build(build_num=15, subject="deploy")
    deploy.add_artifact("deployed.txt", b"deployed\n")
    waiting.jobs = [10, FakeJob("integration", "success", number=None), FakeJob("hold", "success", type="approval"), 15]
    waiting.status, waiting.stopped_at = "success", "2026-11-01T10:30:00.000Z"
    assert wait_for(lambda: os.listdir(release / "deploy") == ["0"], timeout=10), "a waiting workflow was not re-listed"
    assert (release / "deploy/0/deployed.txt").read_bytes() == b"deployed\n"
    assert m.log_text().count("Traceback") == 0 and "EIO" not in m.log_text()


def test_finished_workflow_with_retried_jobs_is_kept(v2, mount):
    """`retried` is terminal: a finished workflow with a retried job, and that job's artifact
    list, are fetched once, not again after --latest-ttl."""
    gh = v2.projects["github", "acme", "api"]
    pipeline = v2.v2.add_pipeline(gh, 9)
    flaky = pipeline.add_workflow("flaky", [FakeJob("test", "retried", number=11), 13], status="success")
    m = mount("--latest-ttl", "1", token=TOKEN)
    wf = m.path / "github/acme/api/pipeline/9/flaky"
    assert sorted(os.listdir(wf)) == ["test", "test~2"]  # the retried run keeps the name, its rerun ~2
    assert (wf / "test/0/report.txt").read_bytes() == b"job 11 (test)\n"
    assert (wf / "test~2/0/report.txt").read_bytes() == b"job 13 (test)\n"
    before = (_api_requests(v2, f"/workflow/{flaky.id}/job"), _api_requests(v2, "/11/artifacts"))
    assert before == (1, 1)
    time.sleep(1.5)
    for _ in range(3):
        assert sorted(os.listdir(wf)) == ["test", "test~2"]
        assert sorted(os.listdir(wf / "test/0")) == ["coverage", "report.txt"]
    assert (_api_requests(v2, f"/workflow/{flaky.id}/job"), _api_requests(v2, "/11/artifacts")) == before


def test_without_a_token_v2_listings_say_a_token_is_needed(v2, mount):
    """circleci.com answers 401 on the v2 artifact and workflow endpoints without a token:
    EACCES, and a log line saying to set one."""
    m = mount()
    _expect_errno(errno.EACCES, os.listdir, m.path / "circleci/6f0b5b0e-org/a1b2c3-proj/42")
    _expect_errno(errno.EACCES, os.listdir, m.path / "github/acme/api/pipeline/7")
    assert wait_for(lambda: m.log_text().count("CircleCI needs an API token for this (none is set") >= 2, timeout=5), \
        m.log_text()
    # the v1.1 tree of a public project works without one
    assert (m.path / "github/acme/api/10/0/report.txt").read_bytes() == b"job 10 (build)\n"
    bad = mount(token="not-the-token", name="bad")
    _expect_errno(errno.EACCES, os.listdir, bad.path / "github/acme/api/pipeline/7")
    assert wait_for(lambda: "CircleCI refused the API token" in bad.log_text(), timeout=5), bad.log_text()
    assert TOKEN not in m.log_text() + bad.log_text() and "not-the-token" not in bad.log_text()


def test_not_found_log_line_names_the_token(v2, mount):
    """A private project asked for without a token is 404 at circleci.com, as an unknown one:
    ENOENT, and a log line that says it may be a matter of the token."""
    private = v2.add_project("circleci", "6f0b5b0e-org", "private-proj", private=True)
    private.add_build(build_num=1).add_artifact("a.txt", b"a\n")
    v2.add_project("github", "acme", "secret", private=True).add_build(build_num=1)
    anon = mount()
    _expect_errno(errno.ENOENT, os.listdir, anon.path / "github/acme/secret")
    _expect_errno(errno.ENOENT, os.listdir, anon.path / "circleci/6f0b5b0e-org/private-proj/1")
    for where in ("github/acme/secret", "circleci/6f0b5b0e-org/private-proj/1"):
        assert wait_for(lambda: f"{where}: not found, or not visible without a token" in anon.log_text(), timeout=5), \
            anon.log_text()
    good = mount(token=TOKEN, name="good")
    assert os.listdir(good.path / "circleci/6f0b5b0e-org/private-proj/1") == ["0"]
    _expect_errno(errno.ENOENT, os.listdir, good.path / "github/acme/no-such-project")
    assert wait_for(lambda: "github/acme/no-such-project: not found, or not visible with this token" in good.log_text(),
                    timeout=5), good.log_text()


def test_demo_has_the_awkward_cases(demo_fake, mount):
    """The demo's pipeline 12 waits on an approval (a queued job, a blocked one); build 1 has
    an expired artifact: listed, ENOENT on open, its directory fine."""
    m = mount(token="secret-token")
    release = m.path / "github/acme/api/pipeline/12/release"
    assert sorted(os.listdir(release)) == ["Commit for build 12", "deploy", "hold", "integration-test"]
    assert os.listdir(release / "hold") == [] and os.listdir(release / "deploy") == []
    logs = m.path / "github/acme/api/1/0/logs"
    assert sorted(os.listdir(logs)) == ["build.log", "trace.log"]
    _expect_errno(errno.ENOENT, (logs / "trace.log").read_bytes)
    assert (logs / "build.log").read_bytes().endswith(b"build 1 done\n")
    assert wait_for(lambda: "expired" in m.log_text(), timeout=5)
