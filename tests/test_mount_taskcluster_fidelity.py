"""Taskcluster as the real queue behaves (issue 15): expired and unfinished artifacts, reruns,
temporary credentials. Real mounts against the fake queue, which follows the queue's schemas."""

from __future__ import annotations

import errno
import os
import time

import pytest

from ciartfs.fakeserver.taskcluster import PAST
from conftest import wait_for
from test_mount_taskcluster import slug, tc_mount


def test_expired_and_unfinished_artifacts_never_fail_their_directory(fake, mount):
    task = fake.queue.add_task(slug(11), name="old")
    run = task.add_run("completed")
    run.add_artifact("public/logs/live.log", b"still here\n")
    run.add_artifact("public/logs/old.log", b"gone\n", expires=PAST)
    run.add_artifact("public/build/half.bin", b"never finished\n", present=False)
    m = tc_mount(mount, fake)
    m.expect_errors = True
    logs = m.path / "taskcluster" / slug(11) / "0/public/logs"
    fake.clear_requests()
    assert sorted(os.listdir(logs)) == ["live.log", "old.log"]  # listed, as the queue lists it
    assert (logs / "live.log").read_bytes() == b"still here\n"
    # known expired from the listing's `expires`: no request for it, ever
    with pytest.raises(FileNotFoundError):
        (logs / "old.log").read_bytes()
    assert "expired" in os.getxattr(logs / "old.log", "user.ciartfs.error").decode()
    assert not [r for r in fake.requests if "old.log" in r.path], "an artifact known expired was asked for"
    assert "old.log" in m.log_text() and "expired" in m.log_text()
    # an upload that never finished: the queue answers 404; only that file is ENOENT
    build = logs.parent / "build"
    assert os.listdir(build) == ["half.bin"]
    with pytest.raises(FileNotFoundError):
        (build / "half.bin").read_bytes()
    assert sorted(os.listdir(logs.parent)) == ["build", "logs"]


def test_expired_artifact_is_enoent_when_reached_by_path_alone(fake, mount):
    """A lookup without a listing first (`cat path`): still ENOENT, never EIO or a dead directory."""
    task = fake.queue.add_task(slug(12), name="old")
    task.add_run("completed").add_artifact("public/old.txt", b"gone\n", expires=PAST)
    m = tc_mount(mount, fake)
    m.expect_errors = True
    with pytest.raises(OSError) as info:
        (m.path / "taskcluster" / slug(12) / "0/public/old.txt").read_bytes()
    assert info.value.errno == errno.ENOENT


def test_rerun_of_a_resolved_task_shows_up_after_latest_ttl(fake, mount):
    task = fake.queue.add_task(slug(13), name="rerun-me")
    task.add_run("completed").add_artifact("public/logs/live.log", b"run 0\n")
    m = tc_mount(mount, fake, "--latest-ttl", "1")
    root = m.path / "taskcluster" / slug(13)
    assert sorted(os.listdir(root)) == ["0", "latest"] and os.readlink(root / "latest") == "0"
    assert (root / "latest/public/logs/live.log").read_bytes() == b"run 0\n"
    rerun = task.rerun("completed")
    rerun.add_artifact("public/logs/live.log", b"run 1\n")
    assert wait_for(lambda: sorted(os.listdir(root)) == ["0", "1", "latest"], timeout=10), os.listdir(root)
    assert os.readlink(root / "latest") == "1"
    assert (root / "latest/public/logs/live.log").read_bytes() == b"run 1\n"
    assert (root / "0/public/logs/live.log").read_bytes() == b"run 0\n"  # run 0 unchanged
    # a resolved run's artifact list is kept: asked once, whatever the TTL
    fake.clear_requests()
    time.sleep(1.2)
    assert os.listdir(root / "0/public/logs") == ["live.log"]
    assert not [r for r in fake.requests if r.path.endswith(f"/task/{slug(13)}/runs/0/artifacts")]


def test_rerun_shows_up_after_a_remount_with_the_same_cache(fake, mount, tmp_path):
    task = fake.queue.add_task(slug(14), name="rerun-me")
    task.add_run("failed").add_artifact("public/logs/live.log", b"run 0\n")
    cache = tmp_path / "shared-cache"
    first = tc_mount(mount, fake, cache_dir=cache)
    root = first.path / "taskcluster" / slug(14)
    assert os.readlink(root / "latest") == "0"
    assert (root / "0/public/logs/live.log").read_bytes() == b"run 0\n"
    first.stop()
    task.rerun("completed").add_artifact("public/logs/live.log", b"run 1\n")
    second = tc_mount(mount, fake, cache_dir=cache)
    root = second.path / "taskcluster" / slug(14)
    assert sorted(os.listdir(root)) == ["0", "1", "latest"]
    assert os.readlink(root / "latest") == "1"
    assert (root / "latest/public/logs/live.log").read_bytes() == b"run 1\n"
    fake.clear_requests()
    assert (root / "0/public/logs/live.log").read_bytes() == b"run 0\n"
    assert not [r for r in fake.requests if "/runs/0/" in r.path], "run 0 (resolved) came from the disk cache"
