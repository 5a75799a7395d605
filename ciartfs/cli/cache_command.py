"""`ciartfs cache info` and `ciartfs cache clear`: the disk cache, without a mount."""

from __future__ import annotations

import argparse
import os
import stat
import time
from pathlib import Path

from ciartfs import status
from ciartfs.cli.parser import settings_from_args
from ciartfs.config import Settings


def _cache_files(settings: Settings) -> list[tuple[Path, os.stat_result]]:
    root = settings.cache_dir / "blocks"
    out = []
    if root.is_dir():
        for path in root.rglob("*"):
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((path, st))
    return out


def cmd_cache(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    files = _cache_files(settings)
    if args.cache_command == "info":
        used = sum(st.st_size for _, st in files)
        oldest = min((st.st_mtime for _, st in files), default=None)
        print(f"cache dir:  {settings.cache_dir}\n"
              f"disk use:   {status.human(used)} in {len(files)} files (bound {status.human(settings.cache_size)})\n"
              f"least recently used: " + (time.strftime("%Y-%m-%d %H:%M", time.localtime(oldest)) if oldest else "-"))
        return 0
    cutoff = time.time() - args.older_than * 86400 if args.older_than is not None else None
    removed = freed = 0
    for path, st in files:
        if cutoff is None or st.st_mtime < cutoff:
            try:
                path.unlink()
            except OSError:
                continue
            removed += 1
            freed += st.st_size
    print(f"removed {removed} files, {status.human(freed)}")
    return 0
