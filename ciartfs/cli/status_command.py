"""`ciartfs status`: the active mounts of this user, from their status files."""

from __future__ import annotations

import argparse
import json
import os

from ciartfs import status
from ciartfs.cli.usage import UsageError


def cmd_status(args: argparse.Namespace) -> int:
    try:
        mounts = status.active_mounts()
    except status.UnsafeRuntimeDir as e:
        raise UsageError(f"refusing the status directory: {e}") from None
    if args.mountpoint:
        target = os.path.realpath(args.mountpoint)
        mounts = [m for m in mounts if m["mountpoint"] == target]
        if not mounts:
            raise UsageError(f"no ciartfs mount at {args.mountpoint}")
    if args.json:
        print(json.dumps(mounts, indent=1, sort_keys=True))
    elif not mounts:
        print("no ciartfs mounts")
    else:
        print("\n\n".join(status.format_status(m) for m in mounts))
    return 0
