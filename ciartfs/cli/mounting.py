"""`ciartfs mount`, `ciartfs demo` and `ciartfs unmount`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

from ciartfs.cli.daemon import run_background, run_foreground
from ciartfs.cli.demo import demo_hints
from ciartfs.cli.mountpoint import check_mountpoint, is_mounted, is_stale
from ciartfs.cli.parser import settings_from_args
from ciartfs.cli.usage import UsageError
from ciartfs.private_dir import ensure_private_dir


def cmd_mount(args: argparse.Namespace, *, demo: bool = False) -> int:
    settings = settings_from_args(args)
    if demo:
        os.makedirs(args.mountpoint, exist_ok=True)
    check_mountpoint(args.mountpoint)
    try:  # (the demo caches blocks in a temporary directory, but logs here)
        ensure_private_dir(settings.cache_dir)
    except OSError as e:
        raise UsageError(f"refusing the cache dir: {e}; use --cache-dir with a directory of your own") from None
    if args.foreground:
        return run_foreground(args, settings, demo=demo)
    code = run_background(args, settings, demo=demo)
    if demo and code == 0:
        print(demo_hints(args.mountpoint))
    return code


def cmd_unmount(args: argparse.Namespace) -> int:
    path = args.mountpoint
    if not is_mounted(path):
        raise UsageError(f"{path} is not mounted")
    stale = is_stale(path)
    fusermount = shutil.which("fusermount3") or "fusermount3"
    cmd = [fusermount, "-u"] + (["-z"] if args.lazy or stale else []) + [path]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        line = (result.stderr.strip().splitlines() or [f"{fusermount} failed"])[-1]
        hint = "; close what uses it, or use --lazy" if "busy" in line.lower() else ""
        raise UsageError(line + hint)
    return 0
