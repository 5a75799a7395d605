"""`ciartfs cache info` and `ciartfs cache clear`: the disk cache, without a mount.

Both go through the store's index (ciartfs/data/packstore.py), so they are safe beside running
mounts: a cleared pack is a miss for them, never wrong bytes. `clear` without `--older-than` also
removes the files of the previous cache layout (one file per block)."""

from __future__ import annotations

import argparse
import time

from ciartfs import status
from ciartfs.cli.parser import settings_from_args
from ciartfs.data.cache import DiskStore


def cmd_cache(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    root = settings.cache_dir / "blocks"
    if args.cache_command == "info" and not root.is_dir():
        print(f"cache dir:  {settings.cache_dir}\n"
              f"disk use:   {status.human(0)} in 0 files (bound {status.human(settings.cache_size)})\n"
              "least recently used: -")
        return 0
    settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = DiskStore(root, settings.cache_size)
    try:
        if args.cache_command == "info":
            d = store.describe()
            oldest = d["least_recently_used"]
            print(f"cache dir:  {settings.cache_dir}\n"
                  f"disk use:   {status.human(d['bytes'])} in {d['files']} files, {d['records']} blocks "
                  f"(bound {status.human(settings.cache_size)})\n"
                  f"least recently used: " + (time.strftime("%Y-%m-%d %H:%M", time.localtime(oldest)) if oldest else "-"))
            return 0
        cutoff = time.time() - args.older_than * 86400 if args.older_than is not None else None
        removed, freed = store.clear(cutoff)
    finally:
        store.close()
    print(f"removed {removed} files, {status.human(freed)}")
    return 0
