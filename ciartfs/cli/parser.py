"""Argument parsing: the `ciartfs` parser, `-o` mount options, and Settings from parsed arguments.

Precedence (flags over `-o` options over environment over config file) is load_settings' job;
this module only turns argv into the flags it takes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ciartfs import __version__
from ciartfs.config import Settings, all_options, load_settings, options_by_key, parse_bool
from ciartfs.errors import ConfigError
from ciartfs.providers import registry

# Generic mount(8) options that /etc/fstab lines carry and mount.fuse3 passes on: not ours.
_GENERIC_MOUNT_OPTIONS = {"rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto",
                          "user", "users", "nouser", "owner", "group", "defaults", "_netdev", "nofail",
                          "atime", "noatime", "relatime", "sync", "async"}


def parse_mount_options(values: list[str] | None) -> dict[str, str | bool]:
    """`-o key=value,switch,...` (as /etc/fstab and mount.fuse3 pass them) -> settings flags.
    Secrets are refused here too: a token never goes on a command line."""
    flags: dict[str, str | bool] = {}
    known = options_by_key()  # once: it loads and checks every provider's options
    for value in values or ():
        for item in filter(None, value.split(",")):
            key, eq, val = item.partition("=")
            key = key.strip().replace("-", "_")
            if key in _GENERIC_MOUNT_OPTIONS or key.startswith(("x-", "comment=")):
                continue
            if key in known:
                flags[key] = val if eq else True
            else:
                raise ConfigError(f"unknown mount option {key!r} (settings: {', '.join(known)})")
    return flags


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {**parse_mount_options(getattr(args, "options", None)),
             **{o.key: getattr(args, o.key) for o in all_options() if getattr(args, o.key, None) is not None}}
    config = Path(args.config) if args.config else None
    return load_settings(flags, config_path=config)


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground; SIGINT/SIGTERM unmount")
    p.add_argument("--config", metavar="PATH", help="config file (default ~/.config/ciartfs/config.toml)")
    for opt in all_options():
        flag = "--" + opt.key.replace("_", "-")
        env = f" [${opt.env}]" if opt.env else ""
        if opt.parse is parse_bool:  # a switch: present means true (env/config can say either)
            names = ["-v", flag] if opt.key == "verbose" else [flag]
            p.add_argument(*names, dest=opt.key, action="store_const", const=True, default=None, help=opt.help + env)
        else:
            p.add_argument(flag, dest=opt.key, metavar=opt.key.split("_")[-1].upper(), default=None, help=opt.help + env)
    p.add_argument("-o", dest="options", action="append", metavar="KEY=VALUE,...",
                   help="settings as mount options, as /etc/fstab passes them (e.g. -o cache_dir=/x,allow_other)")
    p.set_defaults(ready_fd=None)  # the pipe a forked daemon reports on (set in daemon._daemon)


def build_parser() -> argparse.ArgumentParser:
    providers = registry.providers()
    systems = ", ".join(p.title for p in providers)
    parser = argparse.ArgumentParser(
        prog="ciartfs",
        allow_abbrev=False,
        description="Mount CI build artifacts as a read-only filesystem.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  ciartfs mount ~/ci && ls ~/ci/{providers[0].example_path}\n"
               "  ciartfs demo /tmp/ci       # a local fake CI server, no account needed\n"
               "  ciartfs unmount ~/ci",
    )
    parser.add_argument("--version", action="version", version=f"ciartfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mount", allow_abbrev=False, help=f"mount {systems} artifacts at MOUNTPOINT",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  ciartfs mount ~/ci\n"
                              "  ciartfs mount -f -v ~/ci --latest-ttl 10\n"
                              "  ciartfs mount ~/ci -o cache_dir=/data/ciartfs,memory_cache=1G   # as /etc/fstab passes it",
                       description="Mount at MOUNTPOINT; returns once the mount answers. Credentials never come "
                                   "from a flag's value: " + "; ".join(f"{p.title} from {p.credential_help}"
                                                                       for p in providers if p.credential_help) + ".")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_settings(p)
    p = sub.add_parser("demo", allow_abbrev=False, help="start the bundled fake CI server and mount it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"examples:\n  ciartfs demo /tmp/ci && ls /tmp/ci/{providers[0].example_path}\n"
                              "  ciartfs demo -f /tmp/ci      # in the foreground; Ctrl-C unmounts",
                       description=f"Mount a built-in fake CI server ({systems}) with example builds at MOUNTPOINT "
                                   "(created if missing).")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_settings(p)
    p = sub.add_parser("prefetch", help="fetch files or trees of a mount into its disk cache, with progress",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "".join(f"  ciartfs prefetch{' -j 16' if i else ''} ~/ci/{p.example_path}\n"
                                                       for i, p in enumerate(providers) if p.example_path),
                       description="Read PATHs (files or directories inside a ciartfs mount) in parallel so that "
                                   "their bytes are in the disk cache; already cached files are skipped, so an "
                                   "interrupted run resumes.")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.add_argument("-j", "--jobs", type=int, default=8, help="files fetched at once (default 8)")
    p = sub.add_parser("status", help="show active mounts: settings, cache use, requests, hit ratio, errors",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  ciartfs status\n  ciartfs status ~/ci --json",
                       description="Show each active ciartfs mount of this user (or the one at MOUNTPOINT).")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("cache", help="inspect or clear the disk cache",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  ciartfs cache info\n  ciartfs cache clear --older-than 30",
                       description="'cache info' shows the disk cache; 'cache clear' empties it "
                                   "(e.g. ciartfs cache clear --older-than 30).")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", metavar="PATH", help="config file (default ~/.config/ciartfs/config.toml)")
    where.add_argument("--cache-dir", dest="cache_dir", metavar="DIR", default=None,
                       help="the cache dir (default: as a mount would use) [$CIARTFS_CACHE_DIR]")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("info", parents=[where], help="where the cache is and how much it holds")
    clear = cache_sub.add_parser("clear", parents=[where], help="remove cached blocks")
    clear.add_argument("--older-than", type=float, metavar="DAYS", default=None,
                       help="only blocks not used for this many days")
    p = sub.add_parser("unmount", aliases=["umount"], help="unmount MOUNTPOINT (fusermount3 -u works as well)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  ciartfs unmount ~/ci\n  ciartfs unmount --lazy ~/ci   # even if busy",
                       description="Unmount MOUNTPOINT; a stale mount (its process gone) is detached lazily.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now even if busy (also used for stale mounts)")
    return parser
