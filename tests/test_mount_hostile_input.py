"""Tier 3: names from the kernel and listings from the network that Python cannot take as they
come (too long, not UTF-8, nested past the stack) reach the kernel as clean errnos, no
traceback in the log (the `mount` fixture fails a test on one), and the mount works on."""

from __future__ import annotations

import errno
import os

from test_mount_circleci import expect_errno, sample

PROJECT = "github/acme/api"
ARTIFACTS_OF_3 = "/api/v1.1/project/github/acme/api/3/artifacts"


def test_overlong_and_undecodable_names(fake, mount):
    sample(fake)
    m = mount()
    root = os.fsencode(m.path)
    os.stat(m.path / PROJECT / "2/0/empty.txt")  # listings in; what follows asks no API
    # at the root, a project (any number names a build), a build's node: different directories
    parents = [b"", b"/" + PROJECT.encode(), b"/" + PROJECT.encode() + b"/2/0"]
    asked = len(fake.requests)
    for parent in parents:
        expect_errno(errno.ENAMETOOLONG, os.stat, root + parent + b"/" + b"7" * 256)
        expect_errno(errno.ENAMETOOLONG, os.stat, root + parent + b"/" + "é".encode() * 128)  # 256 bytes
        expect_errno(errno.ENOENT, os.stat, root + parent + b"/" + b"7" * 255)  # the longest name there can be
        for undecodable in (b"\xff\xfe", b"caf\xe9", b"7\x80", b"\xed\xb3\xbf"):  # the last: a UTF-8 surrogate
            expect_errno(errno.ENOENT, os.stat, root + parent + b"/" + undecodable)
    assert len(fake.requests) - asked <= 1  # 255 sevens: a build number the API is asked about, once
    assert (m.path / PROJECT / "2/0/empty.txt").read_bytes() == b""  # still answering


def test_json_nested_deeper_than_the_stack_is_eio_and_the_mount_works_on(fake, mount):
    project = sample(fake)
    project.builds[3].raw_artifacts = b"[" * 200_000 + b"]" * 200_000
    m = mount()
    m.expect_errors = True
    before = len(fake.requests)
    expect_errno(errno.EIO, os.listdir, m.path / PROJECT / "3")
    asked = [r for r in fake.requests[before:] if r.path == ARTIFACTS_OF_3]
    # asked by the lookup of "3" (which shows the build without its files) and by opendir: once
    # each, a bad listing is not asked for again within an operation
    assert len(asked) <= 2, asked
    assert "nested too deep" in m.log_text()
    assert sorted(os.listdir(m.path / PROJECT / "2")) == ["0", "1"]  # the rest of the mount works on
    assert (m.path / PROJECT / "1/0/report.txt").read_bytes() == b"build one\n"
    expect_errno(errno.EIO, os.listdir, m.path / PROJECT / "3")  # and the bad one stays bad, cleanly


def test_names_no_file_name_can_carry_are_skipped_not_fatal(fake, mount):
    """JSON strings may hold lone surrogates (`"\\ud800"`), which no file name can encode: such a
    branch or artifact is skipped with a warning, and its siblings list as before."""
    project = sample(fake)
    project.add_build(build_num=5, branch="bad\ud800name", status="success", lifecycle="finished",
                      stop_time="2026-11-03T10:00:00Z")
    m = mount()
    assert sorted(os.listdir(m.path / PROJECT / "branch")) == ["feature%2Fx", "main"]
    assert "5" in os.listdir(m.path / PROJECT) and os.listdir(m.path / PROJECT / "5") == []  # the build itself is fine
    assert "skipping an entry whose name is not valid UTF-8" in m.log_text()
