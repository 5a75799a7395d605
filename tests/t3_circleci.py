"""Tier 3: real mounts of the fake CircleCI, driven with ordinary tools and syscalls."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import blob, clean_env, expect_errno, wait_for
from datasets import STOP, STOP_EPOCH, files_of, sample, storage_gets


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


# -- the tree ------------------------------------------------------------------------------------

def test_tree_listing_modes_sizes_and_times(fake, mount):
    project = sample(fake)
    m = mount()
    root = m.path
    assert sorted(os.listdir(root)) == ["actions", "bitbucket", "circleci", "github"]
    proj = root / "github/acme/api"
    assert sorted(os.listdir(proj)) == ["1", "2", "3", "4", "branch", "latest", "pipeline"]
    assert os.readlink(proj / "latest") == "3"  # newest completed, any branch (4 is running)
    build = proj / "2"
    assert sorted(os.listdir(build)) == ["0", "1"]
    assert os.stat(build).st_mtime == STOP_EPOCH
    found = run("find", str(build), "-type", "f").stdout.split()
    assert sorted(str(Path(f).relative_to(build)) for f in found) == sorted(files_of(project, 2))
    for rel, data in files_of(project, 2).items():
        st = os.stat(build / rel)
        assert stat.S_IMODE(st.st_mode) == 0o444 and stat.S_ISREG(st.st_mode)
        assert st.st_size == len(data), rel
        assert st.st_mtime == STOP_EPOCH
        assert st.st_uid == os.getuid()
    for d in (root, root / "github", proj, build, build / "0", build / "0/coverage"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o555, d
    # `ls -l` (readdirplus) agrees with stat, sizes included
    out = run("ls", "-ln", str(build / "0/dist")).stdout
    assert f" {3 * 1024 * 1024 + 123} " in out
    assert storage_gets(fake), "sizes come from ranged GETs"
    assert not [r for r in fake.requests if r.method == "HEAD"], "never HEAD: presigned URLs refuse it"
    # extended attributes through the kernel (what they say is checked in-process)
    f = build / "0/coverage/index.html"
    assert set(os.listxattr(f)) == {"user.ciartfs.url", "user.ciartfs.source", "user.ciartfs.cached"}
    if shutil.which("getfattr"):
        out = run("getfattr", "-d", str(f))
        assert "user.ciartfs.url" in out.stdout and "user.ciartfs.source" in out.stdout
    # absent in our namespace; other namespaces (labels, ACLs) unsupported, which `ls -l`
    # remembers for the whole device instead of asking twice per file
    for name, expected in [("user.ciartfs.nope", errno.ENODATA), ("user.other", errno.ENODATA),
                           ("security.selinux", errno.EOPNOTSUPP), ("system.posix_acl_access", errno.EOPNOTSUPP)]:
        expect_errno(expected, os.getxattr, f, name)


def test_every_artifact_reads_back_byte_exact(fake, mount):
    project = sample(fake)
    m = mount()
    build = m.path / "github/acme/api/2"
    expected = {rel: hashlib.sha256(data).hexdigest() for rel, data in files_of(project, 2).items()}
    out = run("sha256sum", *sorted(expected), cwd=build)
    assert out.returncode == 0, out.stderr
    got = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.stdout.splitlines()}
    assert got == expected


def test_grep_recursive(fake, mount):
    sample(fake)
    m = mount()
    out = run("grep", "-rl", "FAILED", str(m.path / "github/acme/api/2"))
    assert out.stdout.split() == [str(m.path / "github/acme/api/2/0/test-results/junit.xml")]


def test_reads_across_blocks_past_eof_and_mmap(fake, mount):
    project = sample(fake)
    data = project.builds[2].artifacts[4].data  # dist/app.bin, 3 MiB + 123
    m = mount("--block-size", "64K")
    path = m.path / "github/acme/api/2/0/dist/app.bin"
    rng = random.Random(7)
    fd = os.open(path, os.O_RDONLY)
    try:
        bs = 64 * 1024
        cases = [(0, 1), (bs - 1, 2), (bs - 10, bs + 20), (5 * bs, 3 * bs), (len(data) - 5, 100),
                 (len(data), 10), (len(data) + 1000, 10)]
        cases += [(rng.randrange(len(data)), rng.randrange(1, 300_000)) for _ in range(40)]
        for off, size in cases:
            assert os.pread(fd, size, off) == data[off:off + size], (off, size)
    finally:
        os.close(fd)
    # mmap in a child process: a page fault holds this process's GIL, which the fake
    # server's threads (in this process) need to answer the fetch it causes.
    script = ("import mmap, hashlib, sys\n"
              "with open(sys.argv[1], 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:\n"
              "    print(mm[:16].hex(), mm[-16:].hex(), hashlib.sha256(mm).hexdigest())\n")
    out = run(sys.executable, "-c", script, str(path))
    assert out.stdout.split() == [data[:16].hex(), data[-16:].hex(), hashlib.sha256(data).hexdigest()], out.stderr
    assert (m.path / "github/acme/api/2/0/empty.txt").read_bytes() == b""


# -- errors --------------------------------------------------------------------------------------

def test_every_write_path_is_erofs(fake, mount):
    sample(fake)
    m = mount()
    d = m.path / "github/acme/api/2/0"
    f = d / "empty.txt"
    expect_errno(errno.EROFS, os.open, f, os.O_WRONLY)
    expect_errno(errno.EROFS, os.open, f, os.O_RDWR)
    expect_errno(errno.EROFS, os.open, d / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.EROFS, os.mkdir, d / "newdir")
    expect_errno(errno.EROFS, os.unlink, f)
    expect_errno(errno.EROFS, os.rmdir, d / "coverage")
    expect_errno(errno.EROFS, os.rename, f, d / "moved")
    expect_errno(errno.EROFS, os.chmod, f, 0o644)
    expect_errno(errno.EROFS, os.truncate, f, 0)
    expect_errno(errno.EROFS, os.utime, f, (1, 1))
    expect_errno(errno.EROFS, os.symlink, "x", d / "link")
    expect_errno(errno.EROFS, os.link, f, d / "hard")
    expect_errno(errno.EROFS, os.setxattr, f, "user.x", b"1")
    out = run("touch", str(d / "touched"))
    assert out.returncode != 0 and "Read-only file system" in out.stderr


def test_hung_storage_gives_eio_within_the_timeout(fake, mount):
    project = sample(fake)
    m = mount("--timeout", "2")
    m.expect_errors = True
    path = m.path / "github/acme/api/1/0/report.txt"
    fake.faults.storage_hang = True
    start = time.monotonic()
    assert os.stat(path).st_size == 0  # the file is there, its size unknown: a stat never fails on it
    expect_errno(errno.EIO, open, path, "rb")
    assert time.monotonic() - start < 10, "bounded: the timeout is 2 s"
    assert "no complete answer" in os.getxattr(path, "user.ciartfs.error").decode()
    start = time.monotonic()
    expect_errno(errno.EIO, open, path, "rb")
    assert time.monotonic() - start < 2, "the failure is remembered, not waited for again"
    fake.faults.storage_hang = False
    other = m.path / "github/acme/api/2/0/test-results/junit.xml"
    assert other.read_bytes() == project.builds[2].artifacts[0].data, "the mount recovers"


def test_server_ignoring_range_still_gives_exact_bytes(fake, mount):
    project = sample(fake)
    fake.faults.ignore_range = True
    m = mount("--block-size", "256K")
    data = project.builds[2].artifacts[4].data
    out = run("sha256sum", str(m.path / "github/acme/api/2/0/dist/app.bin"))
    assert out.stdout.split()[0] == hashlib.sha256(data).hexdigest()


# -- the block cache -----------------------------------------------------------------------------

def test_random_reads_fetch_about_what_they_read(fake, mount):
    """unzip -l reads a zip's tail: a random read must not pull in megabytes around it."""
    project = sample(fake)
    data = project.builds[2].artifacts[4].data  # 3 MiB + 123
    m = mount()  # default block size
    path = m.path / "github/acme/api/2/0/dist/app.bin"
    os.stat(path)
    fake.clear_requests()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in (len(data) - 22, len(data) // 2, 1_000_000):
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
    finally:
        os.close(fd)
    ranges = [tuple(int(n) for n in r.headers["range"].removeprefix("bytes=").split("-")) for r in storage_gets(fake)]
    fetched = sum(min(end + 1, len(data)) - start for start, end in ranges)
    assert len(ranges) <= 4 and fetched <= 4 * 128 * 1024, ranges


def test_unzip_list_of_a_large_zip_reads_only_its_tail(fake, mount):
    """unzip -l through the mount lists every member, and only the zip's tail crosses the
    network: a zip's size is learned from a ranged GET of its last 256 KiB, where unzip
    looks. Small and empty archives come whole from that one request."""
    if not shutil.which("unzip"):
        pytest.skip("unzip is not installed")
    import io
    import zipfile
    rng = random.Random(3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(600):
            z.writestr(f"pkg/mod-{i:04d}/data.bin", rng.randbytes(rng.randint(2000, 9000)))
    data = buf.getvalue()
    p = fake.add_project("github", "acme", "zips")
    build = p.add_build(build_num=1, stop_time=STOP)
    bundle = build.add_artifact("dist/bundle.zip", data)
    build.add_artifact("dist/tiny.jar", data[-5000:])
    build.add_artifact("dist/empty.whl", b"")
    m = mount()
    for name, expected in (("tiny.jar", data[-5000:]), ("empty.whl", b"")):
        assert (m.path / "github/acme/zips/1/0/dist" / name).read_bytes() == expected
    path = m.path / "github/acme/zips/1/0/dist/bundle.zip"
    os.stat(path.parent)
    # (a second file asked for in the directory has its siblings' sizes learned: the zip's too)
    assert os.stat(path).st_size == len(data)  # the size comes with the zip's last 256 KiB
    assert [r.headers["range"] for r in storage_gets(fake) if r.path == f"/blob/{bundle.blob_id}"] \
        == [f"bytes=-{256 * 1024}"]
    fake.clear_requests()
    out = run("unzip", "-l", str(path))
    assert out.returncode == 0, out.stderr
    listed = [line.split()[-1] for line in out.stdout.splitlines() if "pkg/mod-" in line]
    assert listed == [f"pkg/mod-{i:04d}/data.bin" for i in range(600)]
    assert storage_gets(fake) == []  # the central directory was in the tail
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()  # and the rest reads right


def test_concurrent_cold_readers_fetch_each_byte_once(fake, mount):
    project = sample(fake)
    data = project.builds[2].artifacts[4].data
    bs = 256 * 1024
    m = mount("--block-size", "256K")
    path = m.path / "github/acme/api/2/0/dist/app.bin"
    os.stat(path)  # size probe (a lookup: as for reading): fetches block 0
    fake.clear_requests()
    procs = [subprocess.Popen(["sha256sum", str(path)], stdout=subprocess.PIPE, text=True) for _ in range(16)]
    digests = {p.communicate(timeout=60)[0].split()[0] for p in procs}
    assert digests == {hashlib.sha256(data).hexdigest()}
    ranges = sorted(tuple(int(n) for n in r.headers["range"].removeprefix("bytes=").split("-")) for r in storage_gets(fake))
    # block-aligned, disjoint, and together exactly the rest of the file (the range may end past EOF)
    assert all(start % bs == 0 and (end + 1) % bs == 0 for start, end in ranges), ranges
    assert [start for start, _ in ranges] == [bs] + [end + 1 for _, end in ranges[:-1]], ranges
    assert ranges[-1][1] + 1 >= len(data) > ranges[-1][0], ranges
    assert len(ranges) < -(-len(data) // bs) - 1  # read-ahead asked for runs of blocks


def test_parallel_readers_in_threads_see_consistent_bytes(fake, mount):
    project = sample(fake)
    m = mount("--block-size", "64K")
    data = project.builds[2].artifacts[4].data
    path = m.path / "github/acme/api/2/0/dist/app.bin"
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with open(path, "rb") as f:
            for _ in range(30):
                off, size = rng.randrange(len(data)), rng.randrange(1, 200_000)
                f.seek(off)
                if f.read(size) != data[off:off + size]:
                    errors.append(f"mismatch at {off}+{size}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


def test_expired_presigned_url_is_resolved_again_transparently(fake, mount):
    project = sample(fake)
    data = project.builds[2].artifacts[4].data
    fake.faults.presign_ttl = 1
    m = mount("--block-size", "64K")
    path = m.path / "github/acme/api/2/0/dist/app.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 0) == data[:1000]
        time.sleep(2.2)  # the storage URL the mount holds has expired: storage says 403
        fake.clear_requests()
        assert os.pread(fd, 1000, 2_000_000) == data[2_000_000:2_001_000]
    finally:
        os.close(fd)
    statuses = [(r.server, r.status) for r in fake.requests if r.method == "GET"]
    assert ("storage", 403) in statuses and ("api", 302) in statuses and statuses[-1] == ("storage", 206)


def test_a_long_lived_mount_lets_go_of_what_the_kernel_forgot(fake, mount, tmp_path):
    """Nodes live while the kernel references them: once it forgets a build's inodes (here:
    dropping the kernel's dentry and inode caches), the mount frees them, and a later visit
    lists the build again from the disk-cached API documents, sizes from memory."""
    drop_caches = Path("/proc/sys/vm/drop_caches")
    if not os.access(drop_caches, os.W_OK):
        pytest.skip("needs root to make the kernel forget its inodes (/proc/sys/vm/drop_caches)")
    project = fake.add_project("github", "acme", "big")
    build = project.add_build(build_num=1, branch="main", status="success", lifecycle="finished", stop_time=STOP)
    files = {f"reports/r{i:03}.txt": blob(i, 100 + i) for i in range(300)}
    for path, data in files.items():
        build.add_artifact(path, data)
    m = mount()
    reports = m.path / "github/acme/big/1/0/reports"
    env = clean_env(tmp_path)

    def inodes() -> int:
        out = subprocess.run([sys.executable, "-m", "ciartfs", "status", str(m.path), "--json"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)[0]["inodes"]

    sizes = {e.name: e.stat().st_size for e in os.scandir(reports)}
    assert sizes == {p.rsplit("/", 1)[1]: len(d) for p, d in files.items()}
    assert wait_for(lambda: inodes() > 300)
    drop_caches.write_text("2")  # the kernel forgets every inode nothing holds
    assert wait_for(lambda: inodes() < 30), "the forgotten build's nodes are still held"
    fake.clear_requests()
    assert {e.name: e.stat().st_size for e in os.scandir(reports)} == sizes  # listed again
    assert (reports / "r042.txt").read_bytes() == files["reports/r042.txt"]
    assert [r for r in fake.requests if r.server == "api"] == [], "listed again from the cached API documents"
    assert storage_gets(fake) == [], "sizes and bytes from the caches"
