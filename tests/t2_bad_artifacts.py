"""Tier 2: one bad artifact never takes its directory down, in-process (tests/inproc.py): each of
the fake's fault switches maps to its own errno on open and a reason in `user.ciartfs.error`, the
failure is remembered, and a host that never answers fails once the timeout has passed: trio's
clock is run ahead (`fs.hurry`) instead of waiting it out. Tools over a real mount: the tier 4 file."""

from __future__ import annotations

import errno

import trio

from ciartfs.fakeserver import FakeArtifact, FakeCI
from datasets import STOP, sample
from inproc import errno_of

GOOD = 6
TIMEOUT = 30.0


def good_name(i: int) -> str:
    return f"good-{i:02d}.txt"


def bad_directory(fake: FakeCI, **bad: dict) -> tuple[str, dict[str, FakeArtifact]]:
    """github/acme/bad build 1: GOOD good files and the given bad ones, all in one directory."""
    project = fake.add_project("github", "acme", "bad")
    build = project.add_build(build_num=1, stop_time=STOP)
    for i in range(GOOD):
        build.add_artifact(f"out/{good_name(i)}", f"line one\nneedle {i}\n".encode())
    made = {name: build.add_artifact(f"out/{name}", b"needle in a bad file\n", **kw) for name, kw in bad.items()}
    return "github/acme/bad/1/0/out", made


def storage_gets_of(fake: FakeCI, artifact: FakeArtifact) -> int:
    return sum(1 for r in fake.requests if r.server == "storage" and r.path == f"/blob/{artifact.blob_id}")


async def test_each_bad_artifact_fails_with_its_own_errno_and_says_why(fake, inproc, clock):
    rel, bad = bad_directory(fake, **{
        "expired.txt": {"storage_status": 410},
        "refused.txt": {"storage_status": 403},
        "huge.txt": {"claimed_total": 10**30},
        "stalled.txt": {"stall": True},
    })
    fs = await inproc(timeout=TIMEOUT)
    fs.expect_errors = True
    # not hurried: each stat waits (at most SIZE_WAIT_SECONDS) for its size
    listed = await fs.ls_l(rel)
    assert sorted(listed) == sorted([good_name(i) for i in range(GOOD)] + list(bad))
    for name in bad:
        assert listed[name].size == 0 and listed[name].attr_timeout == 0  # shown, its size unknown: asked again
    assert listed[good_name(3)].size == len(b"line one\nneedle 3\n")
    expected = {"expired.txt": errno.ENOENT, "refused.txt": errno.EACCES, "huge.txt": errno.EIO, "stalled.txt": errno.EIO}
    assert {name: await errno_of(fs.hurry(fs.open(f"{rel}/{name}"))) for name in bad} == expected
    why = {name: (await fs.getxattr(f"{rel}/{name}", "user.ciartfs.error")).decode() for name in bad}
    assert why["expired.txt"].startswith("ENOENT: ") and "410" in why["expired.txt"] and "expired" in why["expired.txt"]
    assert why["refused.txt"].startswith("EACCES: ") and "403" in why["refused.txt"]
    assert why["huge.txt"].startswith("EIO: ") and "Content-Range" in why["huge.txt"]
    assert "1000000000000000000000000000000" in why["huge.txt"]
    assert why["stalled.txt"].startswith("EIO: ") and "no complete answer" in why["stalled.txt"]
    assert all("signature" not in text for text in why.values())  # presigned storage URLs stay out
    for name in bad:
        assert "user.ciartfs.error" in await fs.listxattr(f"{rel}/{name}")
    assert "user.ciartfs.error" not in await fs.listxattr(f"{rel}/{good_name(0)}")
    assert await errno_of(fs.getxattr(f"{rel}/{good_name(0)}", "user.ciartfs.error")) == errno.ENODATA
    # remembered: opening again asks storage nothing (and so cannot wait on it)
    asked = {name: storage_gets_of(fake, a) for name, a in bad.items()}
    assert all(asked.values()), asked
    with trio.fail_after(TIMEOUT / 2):
        assert {name: await errno_of(fs.open(f"{rel}/{name}")) for name in bad} == expected
    assert {name: storage_gets_of(fake, a) for name, a in bad.items()} == asked
    for i in range(GOOD):
        assert await fs.read_file(f"{rel}/{good_name(i)}") == f"line one\nneedle {i}\n".encode()
    assert not fs.ops.errors["internal"]


async def test_a_bad_artifact_looked_up_by_name_is_there_and_fails_on_open(fake, inproc):
    """Opening a bad file by name (a lookup, no listing) finds it, and fails on open."""
    rel, _bad = bad_directory(fake, **{"expired.txt": {"storage_status": 410}})
    fs = await inproc()
    fs.expect_errors = True
    assert await errno_of(fs.open(f"{rel}/expired.txt")) == errno.ENOENT
    assert await fs.read_file(f"{rel}/{good_name(1)}") == b"line one\nneedle 1\n"
    assert await fs.listdir(rel) == sorted([good_name(i) for i in range(GOOD)] + ["expired.txt"])


async def test_hung_storage_gives_eio_after_the_timeout_and_the_filesystem_recovers(fake, inproc, clock):
    project = sample(fake)
    fs = await inproc(timeout=TIMEOUT)
    fs.expect_errors = True
    path = "github/acme/api/1/0/report.txt"
    fake.faults.storage_hang = True
    assert (await fs.hurry(fs.stat(path))).size == 0  # there, its size unknown: a stat never fails on it
    assert await errno_of(fs.hurry(fs.open(path))) == errno.EIO
    assert "no complete answer" in (await fs.getxattr(path, "user.ciartfs.error")).decode()
    fake.faults.storage_hang = False
    assert await fs.read_file("github/acme/api/2/0/test-results/junit.xml") == project.builds[2].artifacts[0].data


async def test_api_refusals_map_to_errnos(fake, inproc):
    """A build the API refuses: 401/403 EACCES, 404 ENOENT; the next ask is answered."""
    sample(fake)
    fs = await inproc()
    fs.expect_errors = True
    await fs.listdir("github/acme/api")
    for build, status, code in ((1, 401, errno.EACCES), (2, 403, errno.EACCES), (3, 404, errno.ENOENT)):
        fake.clear_requests()
        fake.faults.api_statuses = [status]
        assert await errno_of(fs.readdir(f"github/acme/api/{build}/0")) == code, status
        assert status in [r.status for r in fake.requests] and fake.faults.api_statuses == []
    assert await fs.listdir("github/acme/api/1/0") == ["report.txt"]
