"""Tier 2 (in-process): names cost only the API listing; a file's size is learned when it is
asked for, and the second file asked for in a directory learns its siblings' sizes, by a
bounded pool of probes of 16 KiB each (issue 17). Bytes stay exact whatever size was shown."""

from __future__ import annotations

import errno
import os

import trio

from ciartfs.data.ranged import PROBE_BYTES
from ciartfs.namespace.tree import SIZE_PROBE_CONCURRENCY
from conftest import blob
from inproc import CTX, KERNEL_READ, errno_of

DIR = "github/acme/flat/1/0/many"
# sizes around the probe's and the block's edges (128 KiB blocks), an empty file, larger files
EDGES = [0, 1, PROBE_BYTES - 1, PROBE_BYTES, PROBE_BYTES + 1, (128 << 10) - 1, 128 << 10, (128 << 10) + 1,
         300 << 10, (1 << 20) + 17]


def flat(fake, sizes: list[int], **kw) -> dict[str, bytes]:
    """One build whose `many/` holds a file of each size: name -> bytes."""
    build = fake.add_project("github", "acme", "flat").add_build(
        build_num=1, branch="main", status="success", lifecycle="finished", stop_time="2026-11-01T10:00:00Z")
    files = {f"f{i:04d}.bin": blob(i, size) for i, size in enumerate(sizes)}
    for name, data in files.items():
        build.add_artifact(f"many/{name}", data, **kw)
    return files


def artifact_requests(fake) -> list:
    """Requests for artifact bytes: the API host's redirect, and storage."""
    return [r for r in fake.requests if r.server != "api" or r.path.startswith("/artifacts/")]


def storage_ranges(fake) -> list[str]:
    return [r.headers.get("range") for r in fake.requests if r.server == "storage" and r.method == "GET"]


async def test_a_listing_makes_no_storage_request(fake, inproc):
    files = flat(fake, [100 + i for i in range(300)])
    fs = await inproc()
    await fs.listdir("github/acme/flat/1/0")
    fake.clear_requests()
    listed = await fs.readdir(DIR)
    assert sorted(listed) == sorted(files)
    assert artifact_requests(fake) == []
    for name, attr in listed.items():
        # shown before its size is known: 0 bytes whose attributes expire at once (the kernel
        # asks again at each stat), under a name the kernel may keep
        assert attr.is_file and attr.size == 0 and attr.attr_timeout == 0 and attr.entry_timeout > 0, name
    assert all(fs.node(a.inode).size is None for a in listed.values())


async def test_ls_l_learns_each_size_with_one_16k_probe_and_keeps_what_it_brought(fake, inproc):
    sizes = [1000 + i for i in range(60)] + EDGES
    files = flat(fake, sizes)
    fs = await inproc()
    await fs.readdir(DIR)
    fake.clear_requests()
    attrs = await fs.ls_l(DIR)
    assert {n: a.size for n, a in attrs.items()} == {n: len(d) for n, d in files.items()}
    for name, attr in attrs.items():
        assert attr.attr_timeout > 0, name  # a known size is cached by the kernel as usual
    nonempty = sum(1 for d in files.values() if d)
    ranges = storage_ranges(fake)
    # one probe per file, 16 KiB at most (an empty file's probe is answered without a body)
    assert len(ranges) == len(files) and set(ranges) == {f"bytes=0-{PROBE_BYTES - 1}"}, ranges
    assert nonempty == len(files) - 1
    fake.clear_requests()
    for name, data in files.items():
        assert await fs.read_file(f"{DIR}/{name}") == data, name
        fits = len(data) <= PROBE_BYTES
        got = storage_ranges(fake)
        if fits:  # the probe brought it whole: served from the cache
            assert got == [], (name, got)
        else:  # the head is kept: block 0's first read fetches only the rest of it
            assert got[0] == f"bytes={PROBE_BYTES}-{min(len(data), 128 << 10) - 1}", (name, got)
        fake.clear_requests()


async def test_one_file_asked_for_costs_one_probe_and_a_second_learns_the_siblings(fake, inproc):
    files = flat(fake, [500 + i for i in range(3 * SIZE_PROBE_CONCURRENCY)], delay=0.1)
    names = sorted(files)
    fs = await inproc()
    listed = await fs.readdir(DIR)
    fake.clear_requests()
    assert (await fs.stat(f"{DIR}/{names[5]}")).size == len(files[names[5]])
    assert (await fs.stat(f"{DIR}/{names[5]}")).size == len(files[names[5]])  # (`cat`: stat, fstat)
    await trio.sleep(0.5)
    assert len(storage_ranges(fake)) == 1, "one file asked for: one probe"
    # a second file: every sibling's size is learned, concurrently (each answer takes 0.1 s:
    # one at a time, 28.8 s), at most SIZE_PROBE_CONCURRENCY (+ the files asked for) at once
    started = trio.current_time()
    assert (await fs.stat(f"{DIR}/{names[6]}")).size == len(files[names[6]])
    most = 0
    with trio.fail_after(10):
        while any(fs.node(a.inode).size is None for a in listed.values()):
            most = max(most, len(fs.tree._probes))
            await trio.sleep(0.01)
    assert trio.current_time() - started < 5
    assert 1 < most <= SIZE_PROBE_CONCURRENCY + 2
    assert len(storage_ranges(fake)) == len(files), "each size learned once"
    # and `ls -l` now asks storage nothing
    fake.clear_requests()
    attrs = await fs.ls_l(DIR)
    assert {n: a.size for n, a in attrs.items()} == {n: len(d) for n, d in files.items()}
    assert artifact_requests(fake) == []


async def read_inode(fs, inode: int) -> bytes:
    """open, reads, release of an inode the kernel holds (its dentry from readdirplus: no lookup)."""
    fh = (await fs.ops.open(inode, os.O_RDONLY, CTX)).fh
    try:
        parts = []
        while data := await fs.read(fh, sum(map(len, parts)), KERNEL_READ):
            parts.append(data)
        return b"".join(parts)
    finally:
        await fs.release(fh)


async def test_open_of_a_file_shown_with_its_size_unknown_reads_exact_bytes(fake, inproc):
    files = flat(fake, EDGES + EDGES)
    fs = await inproc()
    listed = await fs.readdir(DIR)
    assert all(a.size == 0 for a in listed.values())
    fake.clear_requests()
    for name, data in files.items():  # open without a stat first: the open learns the true size
        assert await read_inode(fs, listed[name].inode) == data, name
        assert (await fs.ops.getattr(listed[name].inode, CTX)).st_size == len(data), name
    # an open's probe fetches block 0, which its first read wants, not 16 KiB and then the rest
    assert f"bytes=0-{PROBE_BYTES - 1}" not in storage_ranges(fake)
    # and a lookup (a path walked: `cat path` with no listing before) reads exact bytes too
    for name, data in files.items():
        assert await fs.read_file(f"{DIR}/{name}") == data, name


async def test_a_kept_head_is_joined_only_with_the_same_artifact_s_rest(fake, inproc):
    """The file's storage changes size between the probe and the read: an error, never mixed bytes."""
    files = flat(fake, [300 << 10, 300 << 10])
    fs = await inproc()
    fs.expect_errors = True
    attrs = await fs.ls_l(DIR)
    name = sorted(files)[0]
    assert attrs[name].size == 300 << 10
    artifact = fake.projects[("github", "acme", "flat")].builds[1].artifacts[0]
    artifact.claimed_total = (300 << 10) + 5  # its 206 answers now name another total
    fh = await fs.open(f"{DIR}/{name}")
    try:
        assert await errno_of(fs.read(fh, 0, 4096)) == errno.EIO
    finally:
        await fs.release(fh)


async def test_in_a_directory_files_are_opened_in_sizes_are_probed_as_for_reading(fake, inproc):
    """`grep -r`: the kernel's permission check asks getattr before each open. Once a file of a
    directory was opened, its siblings' probes bring block 0 (what their reads want: one
    request per file), not 16 KiB and then the rest."""
    files = flat(fake, [20_000 + i for i in range(40)])
    fs = await inproc()
    listed = await fs.readdir(DIR)
    names = sorted(files)
    fake.clear_requests()
    for name in names:  # getattr, open, reads: as grep does, with the dentries readdirplus gave
        await fs.ops.getattr(listed[name].inode, CTX)
        assert await read_inode(fs, listed[name].inode) == files[name], name
    ranges = storage_ranges(fake)
    # the first file: a 16 KiB probe (a getattr, nothing opened yet), then the rest of it
    assert ranges[:2] == [f"bytes=0-{PROBE_BYTES - 1}", f"bytes={PROBE_BYTES}-{len(files[names[0]]) - 1}"]
    # every other file: one request for all of it
    assert sorted(ranges[2:]) == sorted(f"bytes=0-{(128 << 10) - 1}" for _ in names[1:]), ranges


async def test_a_disk_filter_s_false_positive_costs_no_block_0_fetch(fake, inproc):
    """`ls -l` of 100k large files fetched block 0 whole (128 KiB, not the 16 KiB probe) for about
    180 of them: the disk cache's filter (a Bloom filter, which fills with the size records the
    probes write) said "maybe" for their block 0, and a maybe was taken as held. A "maybe" now
    looks on disk first; a block that is not there is probed as any other."""
    files = flat(fake, [300 << 10] * 20)
    fs = await inproc()
    disk = fs.mount.reader.blocks.disk
    assert disk is not None
    disk.might_have = lambda key: True  # every look-up a false positive (for what is not there)
    await fs.readdir(DIR)
    fake.clear_requests()
    attrs = await fs.ls_l(DIR)
    assert {n: a.size for n, a in attrs.items()} == {n: len(d) for n, d in files.items()}
    assert storage_ranges(fake) == [f"bytes=0-{PROBE_BYTES - 1}"] * len(files)
    name = next(iter(files))
    assert await fs.read_file(f"{DIR}/{name}") == files[name]  # what the probe brought is still right
