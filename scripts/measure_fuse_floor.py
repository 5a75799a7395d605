#!/usr/bin/env python3
"""What pyfuse3, trio and the kernel cost per file, with a filesystem that does nothing else.

    .venv/bin/python scripts/measure_fuse_floor.py [--files N] [--size BYTES] [--runs N] [--ciartfs-loop]

Mounts a read-only filesystem of N files of SIZE bytes (default 2000 of 100 KiB, as the
Actions `grep -rl` scenario: all in memory, answered at once, FLUSH refused once as ciartfs
does) in a child process, runs `grep -rl` over it, and prints the wall time and the child's
CPU seconds (/proc/PID/stat utime+stime) during the command. That is the floor under
ciartfs's figures for the same command: the three FUSE requests per file (OPEN, READ,
RELEASE) through pyfuse3's loop and trio, and the kernel's side of them. Stopped by pid and
unmounted in `finally`.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time

from benchlib.common import proc_cpu, stop_and_unmount  # (scripts/ is on sys.path when this file runs)
from ciartfs.cli.mountpoint import is_mounted


def serve(mountpoint: str, files: int, size: int, own_loop: bool) -> None:
    import pyfuse3
    import trio

    data = (b"2026-12-03T10:00:00 INFO the quick brown fox jumps over the lazy dog\n" * (size // 60 + 1))[:size]

    def attrs(inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, size
        a.st_blksize = 128 << 10
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.entry_timeout = a.attr_timeout = 86400.0
        return a

    class Floor(pyfuse3.Operations):
        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            return attrs(inode)

        async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            if parent != pyfuse3.ROOT_INODE or not name.startswith(b"f") or not name[1:].isdigit() \
                    or int(name[1:]) >= files:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attrs(int(name[1:]) + 2)

        async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
            return inode

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            for i in range(start_id, files):
                if not pyfuse3.readdir_reply(token, b"f%06d" % i, attrs(i + 2), i + 1):
                    break

        async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return data[off:off + size]

        async def flush(self, fh: int) -> None:
            raise pyfuse3.FUSEError(errno.ENOSYS)

        async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    pyfuse3.init(Floor(), mountpoint, set(pyfuse3.default_options) | {"fsname=floor", "ro"})
    if own_loop:  # what ciartfs's mount runs (fuse_loop.py)
        from ciartfs import fuse_loop
        if not fuse_loop.install():
            raise SystemExit("fuse_loop.install() declined: pyfuse3's own loop would run")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


def measure(files: int, size: int, own_loop: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as tmp:
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        child = subprocess.Popen([sys.executable, __file__, "--serve", mnt, "--files", str(files), "--size", str(size),
                                  *(["--ciartfs-loop"] if own_loop else [])])
        try:
            deadline = time.monotonic() + 10
            while not is_mounted(mnt):
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit("the floor filesystem did not mount")
                time.sleep(0.05)
            cpu0, t0 = proc_cpu(child.pid), time.perf_counter()
            # grep -l exits 1 when nothing matches: the point is that it read every file
            subprocess.run(["grep", "-rl", "NEEDLE-NOT-THERE", mnt], stdout=subprocess.DEVNULL, check=False)
            return time.perf_counter() - t0, proc_cpu(child.pid) - cpu0
        finally:
            stop_and_unmount(child, mnt, 10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", type=int, default=100 << 10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ciartfs-loop", action="store_true",
                   help="with ciartfs's replacement of pyfuse3's wait for the FUSE fd (fuse_loop.py)")
    p.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)  # (the child)
    a = p.parse_args()
    if a.serve:
        serve(a.serve, a.files, a.size, a.ciartfs_loop)
        return
    for _ in range(a.runs):
        wall, cpu = measure(a.files, a.size, a.ciartfs_loop)
        print(f"grep -rl over {a.files} files of {a.size} B: {wall:.3f} s wall, {cpu:.2f} CPU s in the filesystem "
              f"({cpu / a.files * 1e6:.0f} us per file)")


if __name__ == "__main__":
    main()
