"""`ciartfs prefetch PATH...`: warm a mount's disk cache with whole files, in parallel.

(The command's name is `prefetch`; this module is `warm` so that it is not taken for the
reader's read-ahead inside a mount, which is data/reader.py's.)

It reads through the mount, so the mount's own cache path stores the blocks; a file whose
`user.ciartfs.cached` already equals its size is skipped, which makes a second run (or a run
after Ctrl-C) resume where the first stopped. Progress: a tqdm bar on a terminal, plain
lines otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Iterable

from tqdm import tqdm

from ciartfs.cli.usage import UsageError

CHUNK = 1 << 20
# Plain-line progress (not a terminal): one line at most this often.
LINE_INTERVAL = 2.0


def collect(paths: Iterable[str]) -> list[tuple[str, int]]:
    """(file, size) for every regular file at or below the paths (symlinks not followed)."""
    out = []
    for top in paths:
        if os.path.isfile(top) and not os.path.islink(top):
            out.append((top, os.stat(top).st_size))
            continue
        if not os.path.isdir(top):
            raise FileNotFoundError(top)
        for dirpath, _, filenames in os.walk(top):
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    out.append((path, os.stat(path).st_size))
    return out


def cached_bytes(path: str) -> int | None:
    try:
        return int(os.getxattr(path, "user.ciartfs.cached"))
    except (OSError, ValueError):
        return None  # not a ciartfs file


class _Progress:
    def __init__(self, total: int, files: int, terminal: bool) -> None:
        self.lock = threading.Lock()
        self.files_total, self.files_done, self.bytes_done, self.total = files, 0, 0, total
        self.started = self.last_line = time.monotonic()
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                        desc=f"0/{files} files") if terminal else None

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes_done += n
            if self.bar is not None:
                self.bar.update(n)
            elif time.monotonic() - self.last_line >= LINE_INTERVAL:
                self.last_line = time.monotonic()
                print(self.line(), flush=True)

    def file_done(self) -> None:
        with self.lock:
            self.files_done += 1
            if self.bar is not None:
                self.bar.set_description(f"{self.files_done}/{self.files_total} files")

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes_done / elapsed
        eta = (self.total - self.bytes_done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "-"
        return (f"{self.files_done}/{self.files_total} files, {self.bytes_done}/{self.total} bytes, "
                f"{rate / (1 << 20):.1f} MiB/s, ETA {eta_text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def warm(paths: list[str], jobs: int = 8, terminal: bool | None = None) -> int:
    """Returns the number of files that failed."""
    files = collect(paths)
    if files and cached_bytes(files[0][0]) is None:
        raise ValueError(f"{files[0][0]} is not on a ciartfs mount")
    todo = [(p, size) for p, size in files if cached_bytes(p) != size]
    skipped = len(files) - len(todo)
    total = sum(size for _, size in todo)
    terminal = sys.stdout.isatty() if terminal is None else terminal
    print(f"{len(files)} files, {skipped} already cached; fetching {len(todo)} ({total} bytes)", flush=True)
    progress = _Progress(total, len(todo), terminal)
    failures: list[str] = []
    # Ctrl-C: running reads stop after their current chunk. (Cancelling the pool's futures
    # only drops files not started, and the interpreter waits for its threads at exit.)
    stop = threading.Event()

    def fetch(path: str) -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                while not stop.is_set() and (chunk := f.read(CHUNK)):
                    progress.add(len(chunk))
        except OSError as e:
            failures.append(f"{path}: {e.strerror}")
        progress.file_done()

    pool = concurrent.futures.ThreadPoolExecutor(max(1, jobs))
    try:
        for future in [pool.submit(fetch, p) for p, _ in todo]:
            future.result()
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
        print(f"\ninterrupted: {progress.files_done} of {len(todo)} files done; run again to resume", flush=True)
        raise
    pool.shutdown()
    progress.close()
    print(f"done: {progress.line()}", flush=True)
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return len(failures)


def cmd_prefetch(args: argparse.Namespace) -> int:
    try:
        failed = warm(args.paths, jobs=args.jobs)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot prefetch: {e}") from None
    return 1 if failed else 0
