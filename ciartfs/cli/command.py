"""The `ciartfs` command (console script and `python -m ciartfs`): parse, dispatch, exit code.

Subcommands live beside it: mounting (mount, demo, unmount), status_command, cache_command,
warm (prefetch). A UsageError or ConfigError is one line on stderr and exit status 1.
"""

from __future__ import annotations

import sys
from typing import Any

from ciartfs.cli.cache_command import cmd_cache
from ciartfs.cli.mounting import cmd_mount, cmd_unmount
from ciartfs.cli.parser import build_parser
from ciartfs.cli.status_command import cmd_status
from ciartfs.cli.usage import UsageError
from ciartfs.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except ConfigError as e:  # a provider that cannot be loaded ($CIARTFS_EXTRA_PROVIDERS)
        print(f"ciartfs: {e}", file=sys.stderr)
        return 1
    args: Any = parser.parse_args(argv)
    try:
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "demo":
            return cmd_mount(args, demo=True)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "prefetch":
            from ciartfs.cli.warm import cmd_prefetch  # tqdm only for this command

            return cmd_prefetch(args)
        if args.command == "cache":
            return cmd_cache(args)
        return cmd_unmount(args)
    except (UsageError, ConfigError) as e:
        print(f"ciartfs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
