"""Tier 4: one bad artifact never takes its directory down (real mounts of the fake CircleCI).

A directory holding an expired artifact (storage answers 410), a refused one (403), one whose
Content-Range names an absurd total (10^30 bytes) and one whose storage never answers is
listed, searched and walked like any other: every other file is there with its contents, each
bad one still appears, opening it fails with its own errno, `user.ciartfs.error` says why,
and the failure is remembered, so a second `grep -r` does not ask again.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from ciartfs.fakeserver import FakeArtifact, FakeCI

STOP = "2026-11-01T10:00:00Z"
GOOD = 12
TIMEOUT = 10.0  # the mount's --timeout: every bound below is well under it
# A listing waits SIZE_WAIT_SECONDS (2 s) at most for a slow size; the rest is a few round trips.
LISTING_BOUND = 5.0


def good_name(i: int) -> str:
    return f"good-{i:02d}.txt"


def bad_directory(fake: FakeCI, **bad: dict) -> tuple[str, dict[str, FakeArtifact]]:
    """github/acme/bad build 1: GOOD good files and the given bad ones, all in one directory.
    Returns the directory's path below the mount and the bad artifacts by name."""
    project = fake.add_project("github", "acme", "bad")
    build = project.add_build(build_num=1, stop_time=STOP)
    for i in range(GOOD):
        build.add_artifact(f"out/{good_name(i)}", f"line one\nneedle {i}\n".encode())
    made = {name: build.add_artifact(f"out/{name}", b"needle in a bad file\n", **kw) for name, kw in bad.items()}
    return "github/acme/bad/1/0/out", made


def timed(*cmd: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return out, time.monotonic() - start


def storage_gets_of(fake: FakeCI, artifact: FakeArtifact) -> int:
    return sum(1 for r in fake.requests if r.server == "storage" and r.path == f"/blob/{artifact.blob_id}")


def open_errno(path) -> int:
    with pytest.raises(OSError) as info:
        open(path, "rb").close()
    return info.value.errno


def check_grep(out: subprocess.CompletedProcess, root, bad_names) -> None:
    """grep -r found every good file's needle, and failed on each bad file (exit status 2)."""
    found = sorted(line for line in out.stdout.splitlines())
    assert found == sorted(f"{root}/{good_name(i)}:needle {i}" for i in range(GOOD)), out.stdout
    assert out.returncode == 2, out
    for name in bad_names:
        assert f"{root}/{name}" in out.stderr, out.stderr


def test_expired_refused_and_absurd_artifacts_leave_their_directory_whole(fake, mount):
    rel, bad = bad_directory(fake, **{
        "expired.txt": {"storage_status": 410},
        "refused.txt": {"storage_status": 403},
        "huge.txt": {"claimed_total": 10**30},
    })
    m = mount("--timeout", str(TIMEOUT))
    m.expect_errors = True
    root = m.path / rel
    expected_names = sorted([good_name(i) for i in range(GOOD)] + list(bad))

    out, took = timed("ls", "-l", str(root))
    assert out.returncode == 0, out.stderr
    assert sorted(line.split()[-1] for line in out.stdout.splitlines()[1:]) == expected_names
    assert took < LISTING_BOUND, f"ls -l took {took:.1f}s"
    for name in bad:
        assert os.stat(root / name).st_size == 0  # shown, its size unknown
    assert os.stat(root / good_name(3)).st_size == len(b"line one\nneedle 3\n")

    out, took = timed("find", str(root), "-type", "f")
    assert sorted(os.path.basename(p) for p in out.stdout.split()) == expected_names and out.returncode == 0
    assert took < LISTING_BOUND

    # each bad file fails on open with its own errno, and says why
    assert open_errno(root / "expired.txt") == errno.ENOENT
    assert open_errno(root / "refused.txt") == errno.EACCES
    assert open_errno(root / "huge.txt") == errno.EIO
    why = {name: os.getxattr(root / name, "user.ciartfs.error").decode() for name in bad}
    assert why["expired.txt"].startswith("ENOENT: ") and "410" in why["expired.txt"] and "expired" in why["expired.txt"]
    assert why["refused.txt"].startswith("EACCES: ") and "403" in why["refused.txt"]
    assert why["huge.txt"].startswith("EIO: ") and "Content-Range" in why["huge.txt"]
    assert "1000000000000000000000000000000" in why["huge.txt"]
    assert all("signature" not in text for text in why.values())  # presigned storage URLs stay out
    for name in bad:
        assert "user.ciartfs.error" in os.listxattr(root / name)
    assert "user.ciartfs.error" not in os.listxattr(root / good_name(0))
    with pytest.raises(OSError) as info:
        os.getxattr(root / good_name(0), "user.ciartfs.error")
    assert info.value.errno == errno.ENODATA

    # grep -r finds every good file's contents; the failures are remembered: no storage request
    # for the bad files again
    asked = {name: storage_gets_of(fake, a) for name, a in bad.items()}
    assert all(asked.values()), asked
    out, took = timed("grep", "-r", "needle", str(root))
    check_grep(out, root, bad)
    assert took < LISTING_BOUND, f"grep -r took {took:.1f}s"
    assert {name: storage_gets_of(fake, a) for name, a in bad.items()} == asked
    assert "Traceback" not in m.log_text() and "OverflowError" not in m.log_text()


def test_a_stalled_artifact_does_not_stall_its_directory_and_a_slow_one_gets_its_size(fake, mount):
    slow_data = b"slow but fine\n" * 10
    rel, bad = bad_directory(fake, **{
        "stalled.txt": {"stall": True},
        "slow.txt": {"delay": 6.0},  # well past the listing's bound
    })
    bad["slow.txt"].data = slow_data
    m = mount("--timeout", str(TIMEOUT))
    m.expect_errors = True
    root = m.path / rel

    listed_at = time.monotonic()
    out, took = timed("ls", "-l", str(root))
    assert out.returncode == 0, out.stderr
    sizes = {line.split()[-1]: int(line.split()[4]) for line in out.stdout.splitlines()[1:]}
    assert sorted(sizes) == sorted([good_name(i) for i in range(GOOD)] + ["stalled.txt", "slow.txt"])
    assert took < LISTING_BOUND, f"ls -l took {took:.1f}s"
    assert sizes["stalled.txt"] == 0 and sizes["slow.txt"] == 0  # not known yet
    assert sizes[good_name(11)] == len(b"line one\nneedle 11\n")

    out, took = timed("find", str(root), "-type", "f")
    assert len(out.stdout.split()) == GOOD + 2 and took < LISTING_BOUND

    # the slow file's size arrives in the background: a later stat shows it, and it reads whole
    deadline = time.monotonic() + TIMEOUT
    while os.stat(root / "slow.txt").st_size != len(slow_data) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.stat(root / "slow.txt").st_size == len(slow_data)
    assert (root / "slow.txt").read_bytes() == slow_data

    # grep -r finds every good file; the stalled one fails with EIO once its own request times
    # out (started by the listing above), never later
    out, took = timed("grep", "-r", "needle", str(root))
    check_grep(out, root, ["stalled.txt"])
    assert "Input/output error" in out.stderr
    assert time.monotonic() - listed_at < TIMEOUT + LISTING_BOUND
    why = os.getxattr(root / "stalled.txt", "user.ciartfs.error").decode()
    assert why.startswith("EIO: ") and "no complete answer" in why

    # remembered: a second grep -r does not wait for it again
    out, took = timed("grep", "-r", "needle", str(root))
    check_grep(out, root, ["stalled.txt"])
    assert took < LISTING_BOUND, f"the second grep -r took {took:.1f}s"
