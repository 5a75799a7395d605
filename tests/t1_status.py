"""Units: the status directory is the user's own, planted links are never followed, and what
`ciartfs status` prints carries no control characters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ciartfs import status

NOBODY = 65534


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    return base / "ciartfs"


def test_publish_and_read_back(runtime: Path) -> None:
    status.publish(os.getpid(), {"pid": os.getpid(), "mountpoint": "/x"})
    assert status.active_mounts() == [{"pid": os.getpid(), "mountpoint": "/x"}]
    assert runtime.stat().st_mode & 0o777 == 0o700
    assert (runtime / f"{os.getpid()}.json").stat().st_mode & 0o777 == 0o600
    status.withdraw(os.getpid())
    assert status.active_mounts() == []


def test_without_xdg_runtime_dir_status_lives_under_the_cache_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert status.runtime_dir() == tmp_path / "cache/ciartfs/run"
    status.publish(os.getpid(), {"pid": os.getpid()})
    assert (tmp_path / "cache/ciartfs/run" / f"{os.getpid()}.json").is_file()
    assert not (tmp_path / "tmp").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_directory_owned_by_another_user_is_refused(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    with pytest.raises(status.UnsafeRuntimeDir, match="owned by"):
        status.publish(os.getpid(), {"pid": os.getpid()})
    with pytest.raises(status.UnsafeRuntimeDir):
        status.active_mounts()
    assert os.listdir(runtime) == []


def test_a_directory_writable_by_others_or_a_symlink_is_refused(runtime: Path, tmp_path: Path) -> None:
    runtime.mkdir()
    os.chmod(runtime, 0o777)
    with pytest.raises(status.UnsafeRuntimeDir, match="writable"):
        status.publish(os.getpid(), {"pid": os.getpid()})
    runtime.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    runtime.symlink_to(elsewhere)
    with pytest.raises(status.UnsafeRuntimeDir, match="not a directory"):
        status.publish(os.getpid(), {"pid": os.getpid()})
    assert os.listdir(elsewhere) == []


def test_planted_symlinks_in_the_directory_are_never_followed(runtime: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root only")
    victim.chmod(0o600)
    runtime.mkdir(mode=0o700)
    pid = os.getpid()
    (runtime / f"{pid}.json.tmp").symlink_to(victim)
    (runtime / f"{pid}.json").symlink_to(victim)
    status.publish(pid, {"pid": pid})
    assert victim.read_text() == "root only"
    assert not (runtime / f"{pid}.json").is_symlink()
    assert json.loads((runtime / f"{pid}.json").read_text()) == {"pid": pid}
    (runtime / "1.json").symlink_to(victim)  # a link is not read as a status document either
    assert status.active_mounts() == [{"pid": pid}]
    status.withdraw(pid)
    assert victim.read_text() == "root only"


def test_status_output_has_no_control_characters() -> None:
    doc = {"pid": 7, "uptime": 1.0, "mountpoint": "/mnt/\x1b]0;owned\x07x\n\rfake line",
           "settings": {"circleci_host": "https://h\x1b[2J", "circleci_token": False, "cache_dir": "/c\x00",
                        "cache_size": 1, "memory_cache": 1},
           "stats": {"memory_hits": 0, "disk_hits": 0, "misses": 0, "http_requests": 0, "bytes_fetched": 0,
                     "bytes_served": 0},
           "disk_bytes": 0, "memory_bytes": 0, "errors": {"EIO\x1b[31m": 1}}
    text = status.format_status(doc)
    assert not any((ord(c) < 32 and c != "\n") or 0x7f <= ord(c) <= 0x9f for c in text)
    assert text.count("\n") == 5  # six lines, one per field, none added by the document
    assert "/mnt/]0;ownedxfake line" in text
