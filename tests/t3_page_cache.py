"""Tier 3: what the kernel does with a completed build's file between our reads: the page
cache serves a re-read (the daemon's read handler is not reached), and a sequential read
comes in requests larger than 128 KiB where root may raise the mount's read-ahead.

The daemon's counters are read as `ciartfs status --json` shows them (published every few
seconds): a snapshot counts only once it was published after what it must include."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ciartfs.kernel_readahead import READAHEAD_KB
from conftest import blob, clean_env, wait_for
from datasets import STOP


def status_after(m, tmp_path: Path, moment: float) -> dict[str, Any]:
    """The mount's status as published after `moment` (time.time())."""
    env = clean_env(tmp_path)
    docs: list[dict[str, Any]] = []

    def published() -> bool:
        out = subprocess.run([sys.executable, "-m", "ciartfs", "status", str(m.path), "--json"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        (doc,) = json.loads(out.stdout)
        docs[:] = [doc]
        return doc["started"] + doc["uptime"] > moment

    assert wait_for(published, timeout=15), "no status published after the read"
    return docs[0]["stats"]


def completed_build_file(fake, size: int) -> tuple[str, bytes]:
    project = fake.add_project("github", "acme", "pages")
    build = project.add_build(build_num=1, branch="main", status="success", lifecycle="finished", stop_time=STOP)
    data = blob(17, size)
    build.add_artifact("out/big.bin", data)
    return "github/acme/pages/1/0/out/big.bin", data


def test_a_completed_builds_file_is_read_again_from_the_page_cache(fake, mount, tmp_path):
    """Default settings (a memory cache smaller than nothing here matters): the second `cat`
    of a completed build's file, after an `ls -l` and a `stat` of it, makes no read request:
    the kernel keeps the file's pages across opens (keep_cache), and nothing it is shown
    between the reads (size, mtime) differs, which would make it drop them."""
    path, data = completed_build_file(fake, 3 << 20)
    m = mount()
    target = m.path / path
    assert target.read_bytes() == data
    before = status_after(m, tmp_path, time.time())
    assert before["reads"] > 0 and before["bytes_served"] >= len(data)
    listing = subprocess.run(["ls", "-l", str(target.parent)], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0 and str(len(data)) in listing.stdout
    assert os.stat(target).st_size == len(data)
    assert target.read_bytes() == data
    after = status_after(m, tmp_path, time.time())
    assert (after["reads"], after["bytes_served"]) == (before["reads"], before["bytes_served"]), \
        "the re-read reached the daemon: the kernel dropped the file's pages"


def test_sequential_reads_come_in_requests_of_the_raised_read_ahead(fake, mount, tmp_path):
    """Root may raise the mount's read-ahead window (kernel_readahead.py): a cold `cat` of
    8 MiB then takes far fewer than the 64 requests of 128 KiB the kernel sends by default."""
    if os.geteuid() != 0:
        pytest.skip("only root may raise a mount's read-ahead (/sys/class/bdi/*/read_ahead_kb)")
    path, data = completed_build_file(fake, 8 << 20)
    m = mount()
    dev = os.stat(m.path).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert wait_for(lambda: int(bdi.read_text()) == READAHEAD_KB, timeout=10)
    assert (m.path / path).read_bytes() == data
    stats = status_after(m, tmp_path, time.time())
    assert stats["bytes_served"] == len(data)
    assert stats["reads"] <= len(data) // (128 << 10) // 3, f"{stats['reads']} read requests for 8 MiB"
