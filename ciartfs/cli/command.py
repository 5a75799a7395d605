"""Command line: `ciartfs mount`, `ciartfs unmount`, `ciartfs demo`.

Background mode forks (no exec: nothing is imported from the caller's directory) a child that
serves in a new session and reports on a pipe "ok" once the kernel has the mount, or one error
line. The parent then checks that the mount answers before it exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from ciartfs import __version__, status
from ciartfs.private_dir import ensure_private_dir
from ciartfs.config import ConfigError, Settings, all_options, load_settings, options_by_key, parse_bool
from ciartfs.providers import registry
from ciartfs.providers.base import Configured

log = logging.getLogger("ciartfs")

READY_TIMEOUT = 60.0
DEMO_TOKEN = "demo-token"


class UsageError(Exception):
    """A one-line reason the command cannot run."""


# -- logging -------------------------------------------------------------------------------------

class RedactingFormatter(logging.Formatter):
    """Replaces every secret in the finished line, tracebacks included."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(settings: Settings, *, to_stderr: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if settings.verbose else logging.INFO)
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", settings.secrets())
    handlers: list[logging.Handler] = []
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_file, errors="backslashreplace"))  # names from JSON may hold lone surrogates
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # httpx logs every URL at INFO (presigned URLs carry signatures); pyfuse3 logs each worker.
    for noisy in ("httpx", "httpcore", "hpack", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- mount point checks --------------------------------------------------------------------------

def _unescape_mount_path(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def is_mounted(path: str) -> bool:
    """True if `path` is a mount point, also when it is a dead FUSE mount (ENOTCONN)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape_mount_path(fields[4]) == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def is_stale(path: str) -> bool:
    """A FUSE mount whose process is gone. statvfs always reaches the filesystem; stat may be
    answered from the kernel's attribute cache."""
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def check_mountpoint(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UsageError(f"{path} is a stale mount (its ciartfs process is gone); run 'ciartfs unmount {path}' first") from None
        raise UsageError(f"mountpoint {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        if is_stale(path):
            raise UsageError(f"{path} is a stale mount (its ciartfs process is gone); run 'ciartfs unmount {path}' first")
        raise UsageError(f"mountpoint {path} is busy: something is already mounted there")
    problem = fuse_access_problem()
    if problem:
        raise UsageError(problem)


def fuse_access_problem(device: str = "/dev/fuse") -> str | None:
    """Why this user cannot mount, or None. libfuse opens /dev/fuse as the user (then mounts
    through the setuid fusermount3 when not root), so the device itself must be open to them."""
    try:
        st = os.stat(device)
    except OSError as e:
        return (f"{device} is missing ({e.strerror}): FUSE is not available here "
                f"(load the fuse kernel module, or give the container /dev/fuse)")
    try:
        os.close(os.open(device, os.O_RDWR))
    except OSError as e:
        if os.geteuid() == 0:
            return f"{device} is not usable ({e.strerror}); is FUSE allowed here?"
        return (f"{device} is not accessible to {_user_name()} ({e.strerror}; mode {stat.S_IMODE(st.st_mode):04o}, "
                f"owner uid {st.st_uid}): ask an administrator to run 'chmod 0666 {device}' (the fuse3 "
                f"package's default), or mount as root")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing, and users other than root mount through it: install the fuse3 package"
    return None


def _user_name() -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"uid {os.geteuid()}"


# -- commands ------------------------------------------------------------------------------------

# Generic mount(8) options that /etc/fstab lines carry and mount.fuse3 passes on: not ours.
_GENERIC_MOUNT_OPTIONS = {"rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto",
                          "user", "users", "nouser", "owner", "group", "defaults", "_netdev", "nofail",
                          "atime", "noatime", "relatime", "sync", "async"}


def parse_mount_options(values: list[str] | None) -> dict[str, str | bool]:
    """`-o key=value,switch,...` (as /etc/fstab and mount.fuse3 pass them) -> settings flags.
    Secrets are refused here too: a token never goes on a command line."""
    flags: dict[str, str | bool] = {}
    for value in values or ():
        for item in filter(None, value.split(",")):
            key, eq, val = item.partition("=")
            key = key.strip().replace("-", "_")
            if key in _GENERIC_MOUNT_OPTIONS or key.startswith("x-") or key.startswith("comment="):
                continue
            if key in options_by_key():
                flags[key] = val if eq else True
            else:
                raise ConfigError(f"unknown mount option {key!r} (settings: {', '.join(o.key for o in all_options())})")
    return flags


def _settings(args: argparse.Namespace) -> Settings:
    flags = {**parse_mount_options(getattr(args, "options", None)),
             **{o.key: getattr(args, o.key) for o in all_options() if getattr(args, o.key, None) is not None}}
    config = Path(args.config) if args.config else None
    return load_settings(flags, config_path=config)


def _report_ready(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _run_foreground(args: argparse.Namespace, settings: Settings, *, demo: bool) -> int:
    import ciartfs.mount as mount  # pyfuse3 is imported only by commands that mount

    setup_logging(settings, to_stderr=args.ready_fd is None)
    fake = None
    demo_cache = None
    try:
        if demo:
            from ciartfs.fakeserver import FakeCI, demo_dataset
            from ciartfs.fakeserver.server import api_modules_for

            fake = FakeCI(tokens={DEMO_TOKEN}, api_modules=api_modules_for(registry.providers()))
            demo_dataset(fake)
            fake.start()
            demo_cache = tempfile.mkdtemp(prefix="ciartfs-demo-cache-")
            # every provider the fake serves, at the fake, whatever the settings said
            in_force = tuple(Configured(p, demo) for p in registry.providers()
                             if (demo := p.demo(fake.api_url, DEMO_TOKEN)) is not None)
            settings = dataclasses.replace(settings, providers=in_force, cache_dir=Path(demo_cache))
            log.info("demo: fake CI server at %s", fake.api_url)
        ready = lambda: _report_ready(args.ready_fd, "ok")  # noqa: E731
        try:
            mount.serve(settings, args.mountpoint, on_ready=ready)
        except RuntimeError as e:  # pyfuse3.init failing to mount
            message = f"cannot mount {args.mountpoint}: {e}"
            _report_ready(args.ready_fd, "error: " + message)
            log.error("%s", message)
            return 1
    finally:
        if fake is not None:
            fake.stop()
        if demo_cache is not None:
            shutil.rmtree(demo_cache, ignore_errors=True)
    return 0


def _run_background(args: argparse.Namespace, settings: Settings, *, demo: bool) -> int:
    """Fork (without exec) a daemon that serves the mount, and return once the mount answers.

    No exec, on purpose: a re-executed `python -m ciartfs` would put the caller's current
    directory first on sys.path, so a `ciartfs/` folder there would run with the user's uid and
    tokens (or break the mount with an ImportError when run beside a checkout). The child is
    this process, with the modules it already imported."""
    log_file = settings.log_file or (settings.cache_dir / "ciartfs.log")
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing buffered is written twice
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _daemon(args, dataclasses.replace(settings, log_file=log_file), write_fd, log_file, demo=demo)
    os.close(write_fd)
    message = b""
    deadline = time.monotonic() + READY_TIMEOUT
    with os.fdopen(read_fd, "rb") as pipe:
        while not message.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
                os.kill(pid, signal.SIGTERM)
                raise UsageError(f"the mount did not come up within {READY_TIMEOUT:.0f}s; see {log_file}")
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                break
            message += chunk
    text = message.decode(errors="replace").strip()
    if text != "ok":
        _, status_code = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status_code)
        raise UsageError(text.removeprefix("error: ") or f"the mount process exited with {code}; see {log_file}")
    try:
        os.stat(args.mountpoint)  # answered by the new mount: it is serving
    except OSError as e:
        raise UsageError(f"mounted {args.mountpoint} but it does not answer: {e.strerror}") from None
    print(f"ciartfs: mounted {args.mountpoint} (pid {pid}, log {log_file})")
    return 0


def _daemon(args: argparse.Namespace, settings: Settings, ready_fd: int, log_file: Path, *, demo: bool) -> NoReturn:
    """The forked child: a new session, no terminal, stderr to the log; never returns."""
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        err = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(err, 2)
        os.close(devnull)
        os.close(err)
        args.ready_fd = ready_fd
        code = _run_foreground(args, settings, demo=demo)
    except BaseException as e:  # noqa: BLE001 - the child must end here, never in the parent's code
        _report_ready(ready_fd, f"error: the mount process failed: {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def cmd_mount(args: argparse.Namespace, *, demo: bool = False) -> int:
    settings = _settings(args)
    if demo:
        os.makedirs(args.mountpoint, exist_ok=True)
    check_mountpoint(args.mountpoint)
    try:  # (the demo caches blocks in a temporary directory, but logs here)
        ensure_private_dir(settings.cache_dir)
    except OSError as e:
        raise UsageError(f"refusing the cache dir: {e}; use --cache-dir with a directory of your own") from None
    if args.foreground:
        return _run_foreground(args, settings, demo=demo)
    code = _run_background(args, settings, demo=demo)
    if demo and code == 0:
        mp = args.mountpoint
        tries = [line for p in registry.providers() for line in p.demo_examples(mp)]
        print("Try:\n" + "".join(f"  {line}\n" for line in tries) +
              f"Stop it with: ciartfs unmount {mp}")
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


def cmd_prefetch(args: argparse.Namespace) -> int:
    from ciartfs.cli.warm import prefetch

    try:
        failed = prefetch(args.paths, jobs=args.jobs)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot prefetch: {e}") from None
    return 1 if failed else 0


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
    settings = _settings(args)
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


# -- argument parsing ----------------------------------------------------------------------------

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
    p.set_defaults(ready_fd=None)  # the pipe a forked daemon reports on (set in _daemon)


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
            return cmd_prefetch(args)
        if args.command == "cache":
            return cmd_cache(args)
        return cmd_unmount(args)
    except (UsageError, ConfigError) as e:
        print(f"ciartfs: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
