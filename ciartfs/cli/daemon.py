"""The daemon start-up: serve in the foreground, or fork a daemon that reports on a ready pipe.

Background mode forks (no exec: nothing is imported from the caller's directory) a child that
serves in a new session and reports on a pipe "ok" once the kernel has the mount, or one error
line. The parent then checks that the mount answers before it exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

from ciartfs.cli.demo import demo_backend
from ciartfs.cli.logs import setup_logging
from ciartfs.cli.usage import UsageError
from ciartfs.config import Settings

log = logging.getLogger("ciartfs")

READY_TIMEOUT = 60.0


def report_ready(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def run_foreground(args: argparse.Namespace, settings: Settings, *, demo: bool) -> int:
    import ciartfs.mount as mount  # pyfuse3 is imported only by commands that mount

    setup_logging(settings, to_stderr=args.ready_fd is None)
    with contextlib.ExitStack() as stack:
        if demo:
            settings = stack.enter_context(demo_backend(settings))
        ready = lambda: report_ready(args.ready_fd, "ok")  # noqa: E731
        try:
            mount.serve(settings, args.mountpoint, on_ready=ready)
        except RuntimeError as e:  # pyfuse3.init failing to mount
            message = f"cannot mount {args.mountpoint}: {e}"
            report_ready(args.ready_fd, "error: " + message)
            log.error("%s", message)
            return 1
    return 0


def run_background(args: argparse.Namespace, settings: Settings, *, demo: bool) -> int:
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
        code = run_foreground(args, settings, demo=demo)
    except BaseException as e:  # noqa: BLE001 - the child must end here, never in the parent's code
        report_ready(ready_fd, f"error: the mount process failed: {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
