"""Tier 2: names from the kernel and listings from the network that Python cannot take as they
come (too long, not UTF-8, nested past the stack) are clean errnos in-process (tests/inproc.py),
no internal error (the `inproc` fixture fails a test on one), and the filesystem works on."""

from __future__ import annotations

import errno

from datasets import sample
from inproc import errno_of

PROJECT = "github/acme/api"
ARTIFACTS_OF_3 = "/api/v1.1/project/github/acme/api/3/artifacts"


async def test_overlong_and_undecodable_names(fake, inproc):
    """Names from the kernel that Python cannot take as they come: clean errnos, no request
    for the undecodable ones, and the filesystem answers on."""
    sample(fake)
    fs = await inproc()
    proj = PROJECT
    await fs.stat(f"{proj}/2/0/empty.txt")  # listings in; what follows asks no API
    parents = [await fs.resolve(p) for p in ("", proj, f"{proj}/2/0")]
    asked = len(fake.requests)
    for parent in parents:  # at the root, a project (any number names a build), a build's node
        assert await errno_of(fs.lookup(parent.inode, b"7" * 256)) == errno.ENAMETOOLONG
        assert await errno_of(fs.lookup(parent.inode, "é".encode() * 128)) == errno.ENAMETOOLONG  # 256 bytes
        assert await errno_of(fs.lookup(parent.inode, b"7" * 255)) == errno.ENOENT  # the longest name there can be
        for undecodable in (b"\xff\xfe", b"caf\xe9", b"7\x80", b"\xed\xb3\xbf"):  # the last: a UTF-8 surrogate
            assert await errno_of(fs.lookup(parent.inode, undecodable)) == errno.ENOENT
    assert len(fake.requests) - asked <= 1  # 255 sevens: a build number the API is asked about, once
    assert await fs.read_file(f"{proj}/2/0/empty.txt") == b""


async def test_json_nested_deeper_than_the_stack_is_eio_and_the_filesystem_works_on(fake, inproc, caplog):
    project = sample(fake)
    project.builds[3].raw_artifacts = b"[" * 200_000 + b"]" * 200_000
    fs = await inproc()
    fs.expect_errors = True
    before = len(fake.requests)
    assert await errno_of(fs.readdir(f"{PROJECT}/3")) == errno.EIO
    asked = [r for r in fake.requests[before:] if r.path == ARTIFACTS_OF_3]
    # asked by the lookup of "3" (which shows the build without its files) and by opendir: once
    # each, a bad listing is not asked for again within an operation
    assert len(asked) <= 2, asked
    assert "nested too deep" in caplog.text
    assert await fs.listdir(f"{PROJECT}/2") == ["0", "1"]  # the rest works on
    assert await fs.read_file(f"{PROJECT}/1/0/report.txt") == b"build one\n"
    assert await errno_of(fs.readdir(f"{PROJECT}/3")) == errno.EIO  # and the bad one stays bad, cleanly
    assert not fs.ops.errors["internal"]


async def test_names_no_file_name_can_carry_are_skipped_not_fatal(fake, inproc, caplog):
    """JSON strings may hold lone surrogates (`"\\ud800"`), which no file name can encode: such a
    branch or artifact is skipped with a warning, and its siblings list as before."""
    project = sample(fake)
    project.add_build(build_num=5, branch="bad\ud800name", status="success", lifecycle="finished",
                      stop_time="2026-11-03T10:00:00Z")
    fs = await inproc()
    assert await fs.listdir(f"{PROJECT}/branch") == ["feature%2Fx", "main"]
    assert "5" in await fs.listdir(PROJECT) and await fs.listdir(f"{PROJECT}/5") == []  # the build itself is fine
    assert "skipping an entry whose name is not valid UTF-8" in caplog.text
