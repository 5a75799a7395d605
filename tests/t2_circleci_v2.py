"""Tier 2: CircleCI API v2 in-process (tests/inproc.py): workflow listings across TTLs."""

from __future__ import annotations

import errno
import hashlib
import json
import logging

from ciartfs.fakeserver.v2 import FakeJob
from conftest import TOKEN
from datasets import v2_dataset
from inproc import errno_of


def _api_requests(fake, suffix: str) -> int:
    """How many times a listing was asked for (its first page)."""
    return len([r for r in fake.requests if r.server == "api" and r.path.endswith(suffix) and "page-token" not in r.query])


async def test_waiting_workflow_lists_its_started_jobs_and_is_refreshed(fake, inproc, clock, caplog):
    """A workflow on hold: one job ran, one is queued and one blocked (neither has a
    job_number yet), an approval job waits. Its listing shows every job; the ones without
    artifacts are empty directories that say why; after --latest-ttl it is asked again."""
    v2 = v2_dataset(fake)
    gh = v2.projects["github", "acme", "api"]
    pipeline = v2.v2.add_pipeline(gh, 8)
    waiting = pipeline.add_workflow("release", [10, FakeJob("integration", "queued"), FakeJob("hold", "on_hold", type="approval"),
                                                FakeJob("deploy", "blocked")], status="on_hold", stopped_at=None)
    fs = await inproc(latest_ttl=60, token=TOKEN)
    release = "github/acme/api/pipeline/8/release"
    assert await fs.listdir(release) == ["build", "deploy", "hold", "integration"]
    assert await fs.read_file(f"{release}/build/0/report.txt") == b"job 10 (build)\n"
    for name, why in [("deploy", "has not started (status blocked)"), ("integration", "has not started (status queued)"),
                      ("hold", "an approval job")]:
        assert await fs.listdir(f"{release}/{name}") == []
        assert why in (await fs.getxattr(f"{release}/{name}", "user.ciartfs.empty")).decode()
        job = json.loads(await fs.getxattr(f"{release}/{name}", "user.ciartfs.job"))
        assert job["number"] is None and job["name"] == name
    assert json.loads(await fs.getxattr(f"{release}/build", "user.ciartfs.job"))["number"] == 10
    assert not [r for r in v2.requests if "/job/" in r.path and not r.path.startswith("/api/v2/workflow/")]
    # the approval is given, deploy runs as job 15: the running workflow is asked again after its TTL
    deploy = gh.add_build(build_num=15, subject="deploy")
    deploy.add_artifact("deployed.txt", b"deployed\n")
    waiting.jobs = [10, FakeJob("integration", "success", number=None), FakeJob("hold", "success", type="approval"), 15]
    waiting.status, waiting.stopped_at = "success", "2026-11-01T10:30:00.000Z"
    assert await fs.listdir(f"{release}/deploy") == [], "asked again within the TTL"
    fs.advance(61)
    assert await fs.listdir(f"{release}/deploy") == ["0"], "a waiting workflow was not re-listed"
    assert await fs.read_file(f"{release}/deploy/0/deployed.txt") == b"deployed\n"
    assert "Traceback" not in caplog.text and not fs.ops.errors


async def test_finished_workflow_with_retried_jobs_is_kept(fake, inproc, clock):
    """`retried` is terminal: a finished workflow with a retried job, and that job's artifact
    list, are fetched once, not again after --latest-ttl."""
    v2 = v2_dataset(fake)
    gh = v2.projects["github", "acme", "api"]
    pipeline = v2.v2.add_pipeline(gh, 9)
    flaky = pipeline.add_workflow("flaky", [FakeJob("test", "retried", number=11), 13], status="success")
    fs = await inproc(latest_ttl=60, token=TOKEN)
    wf = "github/acme/api/pipeline/9/flaky"
    assert await fs.listdir(wf) == ["test", "test~2"]  # the retried run keeps the name, its rerun ~2
    assert await fs.read_file(f"{wf}/test/0/report.txt") == b"job 11 (test)\n"
    assert await fs.read_file(f"{wf}/test~2/0/report.txt") == b"job 13 (test)\n"
    before = (_api_requests(v2, f"/workflow/{flaky.id}/job"), _api_requests(v2, "/11/artifacts"))
    assert before == (1, 1)
    for _ in range(3):
        fs.advance(3600)
        assert await fs.listdir(wf) == ["test", "test~2"]
        assert await fs.listdir(f"{wf}/test/0") == ["coverage", "report.txt"]
    assert (_api_requests(v2, f"/workflow/{flaky.id}/job"), _api_requests(v2, "/11/artifacts")) == before


async def test_v2_only_project_jobs(fake, inproc):
    v2 = v2_dataset(fake)
    fs = await inproc(token=TOKEN)  # circleci.com's v2 artifact endpoint needs a token, public projects too
    job = "circleci/6f0b5b0e-org/a1b2c3-proj/42"
    assert await fs.listdir(job) == ["0", "1"]
    assert await fs.listdir(f"{job}/0/out") == [f"f{i}.txt" for i in range(5)]
    for i in range(5):
        assert await fs.read_file(f"{job}/0/out/f{i}.txt") == f"file {i}\n".encode()
    data = v2.projects[("circleci", "6f0b5b0e-org", "a1b2c3-proj")].builds[42].artifacts[-1].data
    assert hashlib.sha256(await fs.read_file(f"{job}/1/bin/tool")).digest() == hashlib.sha256(data).digest()
    pages = [r for r in v2.requests if r.path.endswith("/42/artifacts")]
    assert len(pages) == 3 and sum("page-token" in r.query for r in pages) == 2
    assert await errno_of(fs.readdir("circleci/6f0b5b0e-org/a1b2c3-proj/99")) == errno.ENOENT


async def test_a_bad_item_on_one_page_fails_the_job_listing_without_asking_for_the_pages_after_it(fake, inproc):
    """A job's artifacts are parsed a page at a time: an item of the wrong shape on page 2 of 3
    fails the listing (EIO) at once, page 3 is never asked for, and the mount goes on serving."""
    v2 = v2_dataset(fake)
    build = v2.projects[("circleci", "6f0b5b0e-org", "a1b2c3-proj")].builds[42]
    page = v2.v2.page_size
    assert 2 * page < len(build.artifacts) <= 3 * page  # three pages
    build.artifacts[page].node_index = -1  # page 2's first: not a non-negative integer
    fs = await inproc(token=TOKEN)
    fs.expect_errors = True
    job = "circleci/6f0b5b0e-org/a1b2c3-proj/42"
    assert await errno_of(fs.readdir(job)) == errno.EIO
    pages = [r for r in v2.requests if r.path.endswith("/42/artifacts")]
    assert len(pages) == 2, [r.query for r in pages]
    assert (await fs.stat(job)).is_dir  # the mount goes on


async def test_workflow_view_with_renames(fake, inproc):
    v2 = v2_dataset(fake)
    fs = await inproc(token=TOKEN)
    pipe = "github/acme/api/pipeline/7"
    assert await fs.listdir(pipe) == ["ci", "ci~2", "deploy%2Fprod"]
    assert await fs.listdir(f"{pipe}/ci") == ["build", "test"]
    assert await fs.read_file(f"{pipe}/ci/build/0/report.txt") == b"job 10 (build)\n"
    assert await fs.read_file(f"{pipe}/ci~2/test/0/report.txt") == b"job 13 (test)\n"
    assert await fs.read_file(f"{pipe}/deploy%2Fprod/push/0/report.txt") == b"job 14 (push)\n"
    found = await fs.walk_files(pipe)
    assert len(found) == 6 and "ci/test/0/coverage/index.html" in found
    assert await errno_of(fs.readdir("github/acme/api/pipeline/8")) == errno.ENOENT
    # the same job through the v1.1 tree shares the cached blocks
    v2.clear_requests()
    assert await fs.read_file("github/acme/api/11/0/coverage/index.html") == b"<html>cov</html>\n"
    assert not [r for r in v2.requests if r.server == "storage"]


async def test_without_a_token_v2_listings_say_a_token_is_needed(fake, inproc, caplog):
    """circleci.com answers 401 on the v2 artifact and workflow endpoints without a token:
    EACCES, and a log line saying to set one."""
    caplog.set_level(logging.DEBUG, logger="ciartfs")
    v2_dataset(fake)
    fs = await inproc()
    fs.expect_errors = True
    assert await errno_of(fs.readdir("circleci/6f0b5b0e-org/a1b2c3-proj/42")) == errno.EACCES
    assert await errno_of(fs.readdir("github/acme/api/pipeline/7")) == errno.EACCES
    assert caplog.text.count("CircleCI needs an API token for this (none is set") >= 2, caplog.text
    # the v1.1 tree of a public project works without one
    assert await fs.read_file("github/acme/api/10/0/report.txt") == b"job 10 (build)\n"
    caplog.clear()
    bad = await inproc(token="not-the-token")
    assert await errno_of(bad.readdir("github/acme/api/pipeline/7")) == errno.EACCES
    assert "CircleCI refused the API token" in caplog.text
    assert "not-the-token" not in caplog.text and TOKEN not in caplog.text


async def test_not_found_log_line_names_the_token(fake, inproc, caplog):
    """A private project asked for without a token is 404 at circleci.com, as an unknown one:
    ENOENT, and a log line that says it may be a matter of the token."""
    caplog.set_level(logging.DEBUG, logger="ciartfs")
    v2 = v2_dataset(fake)
    private = v2.add_project("circleci", "6f0b5b0e-org", "private-proj", private=True)
    private.add_build(build_num=1).add_artifact("a.txt", b"a\n")
    v2.add_project("github", "acme", "secret", private=True).add_build(build_num=1)
    anon = await inproc()
    assert await errno_of(anon.readdir("github/acme/secret")) == errno.ENOENT
    assert await errno_of(anon.readdir("circleci/6f0b5b0e-org/private-proj/1")) == errno.ENOENT
    for where in ("github/acme/secret", "circleci/6f0b5b0e-org/private-proj/1"):
        assert f"{where}: not found, or not visible without a token" in caplog.text, caplog.text
    good = await inproc(token=TOKEN)
    assert await good.listdir("circleci/6f0b5b0e-org/private-proj/1") == ["0"]
    assert await errno_of(good.readdir("github/acme/no-such-project")) == errno.ENOENT
    assert "github/acme/no-such-project: not found, or not visible with this token" in caplog.text
    assert TOKEN not in caplog.text


async def test_demo_has_the_awkward_cases(demo_fake, inproc, caplog):
    """The demo's pipeline 12 waits on an approval (a queued job, a blocked one); build 1 has
    an expired artifact: listed, ENOENT on open, its directory fine."""
    fs = await inproc(token=TOKEN)
    fs.expect_errors = True
    release = "github/acme/api/pipeline/12/release"
    assert await fs.listdir(release) == ["Commit for build 12", "deploy", "hold", "integration-test"]
    assert await fs.listdir(f"{release}/hold") == [] and await fs.listdir(f"{release}/deploy") == []
    logs = "github/acme/api/1/0/logs"
    assert await fs.listdir(logs) == ["build.log", "trace.log"]
    assert await errno_of(fs.open(f"{logs}/trace.log")) == errno.ENOENT
    assert (await fs.read_file(f"{logs}/build.log")).endswith(b"build 1 done\n")
    assert "expired" in caplog.text


async def test_a_finished_job_listed_again_after_forget_comes_from_its_kept_listing_as_unpacked(fake, inproc,
                                                                                                 monkeypatch):
    """A finished job's listing never changes: it is kept placed and packed (namespace/packed.py),
    so a re-list after the kernel forgot it asks and parses nothing, makes no artifact, and
    shows the same names, kinds, sizes and xattrs as a first listing and as the tree makes them
    from one Entry per file (unpacked); also through the workflow view."""
    import ciartfs.providers.circleci.v2 as v2_module
    from inproc import tree_sees_no_packed_files

    parsed = []
    real_parse = v2_module.parse_artifacts
    monkeypatch.setattr(v2_module, "parse_artifacts", lambda doc, where: parsed.append(where) or real_parse(doc, where))
    v2 = v2_dataset(fake)
    build = v2.projects[("circleci", "6f0b5b0e-org", "a1b2c3-proj")].builds[42]
    for path, data in [("deep/a/b/c.txt", b"c\n"), ("deep/a/x.txt", b"x" * 70_000), ("/lead/slash.txt", b"lead\n"),
                       ("deep//double.txt", b"double\n"), ("out/f0.txt", b"a duplicate\n"), ("top.json", b"{}\n")]:
        build.add_artifact(path, data)
    build.add_artifact("node2.txt", b"on node 2\n", node_index=2)
    fs = await inproc(token=TOKEN)
    job, workflow_job = "circleci/6f0b5b0e-org/a1b2c3-proj/42", "github/acme/api/pipeline/7/ci/test"
    first, first_workflow = await fs.snapshot(job), await fs.snapshot(workflow_job)
    assert {"0/out/f4.txt", "0/deep/a/b/c.txt", "0/lead/slash.txt", "0/deep/double.txt", "1/bin/tool",
            "2/node2.txt"} <= set(first)
    assert first["0/deep/a/x.txt"][:2] == ("file", 70_000) and first["0/deep"][0] == "dir"
    assert set(first["0/top.json"][3]) == {"user.ciartfs.source", "user.ciartfs.url"}
    assert len(set(parsed)) == 2  # the two jobs' listings (a page at a time)
    parses = len(parsed)
    await fs.forget_everything()
    fake.clear_requests()
    listed = await fs.readdir(f"{job}/0/out")
    assert all(fs.node(a.inode).made_artifact is None for a in listed.values()), "an artifact made by a listing"
    assert await fs.snapshot(job) == first
    assert await fs.snapshot(workflow_job) == first_workflow
    assert len(parsed) == parses, "listed again by parsing the job's artifacts"
    assert not [r for r in fake.requests if r.path.endswith("/artifacts")]
    assert await fs.read_file(f"{job}/0/deep/a/x.txt") == b"x" * 70_000
    tree_sees_no_packed_files(monkeypatch)
    unpacked = await inproc(token=TOKEN)
    assert await unpacked.snapshot(job) == first
    assert await unpacked.snapshot(workflow_job) == first_workflow
    listed = await unpacked.readdir(f"{job}/0/out")
    assert all(unpacked.node(a.inode).made_artifact is not None for a in listed.values()), "not listed unpacked"
