"""Tier 3: CircleCI API v2 through real mounts: v2-only projects and the workflow view."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from ciartfs.errors import BadListing
from ciartfs.providers.circleci.v2 import parse_job, unique_names
from conftest import TOKEN, wait_for
from datasets import v2_dataset


@pytest.fixture
def v2(fake):
    return v2_dataset(fake)


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
