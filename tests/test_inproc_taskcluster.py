"""Tier 2: Taskcluster in-process (tests/inproc.py): runs and `latest` across TTLs, errors
and expiry as errnos, what is kept and what is asked again."""

from __future__ import annotations

import errno
import json

from ciartfs.fakeserver.taskcluster import PAST
from datasets import slug, tc_dataset
from inproc import errno_of


def tc_fs(inproc, fake, **settings):
    return inproc(taskcluster_root_url=fake.api_url, **settings)


async def test_unknown_or_malformed_task_ids_are_enoent(fake, inproc):
    tc = tc_dataset(fake)
    fs = tc_fs(inproc, tc)
    assert await fs.listdir("taskcluster") == ["group"]  # tasks cannot be enumerated, but look up
    tc.clear_requests()
    for name in ("not-a-task", "x" * 22, "../etc", slug(1) + "x"):
        assert await errno_of(fs.lookup((await fs.resolve("taskcluster")).inode, name)) == errno.ENOENT, name
    assert not [r for r in tc.requests if "/api/queue/" in r.path], "malformed ids never reach the API"
    assert await errno_of(fs.stat(f"taskcluster/{slug(77)}")) == errno.ENOENT  # well-formed, unknown: 404
    assert await errno_of(fs.stat(f"taskcluster/{slug(1)}/5")) == errno.ENOENT
    assert await errno_of(fs.readdir(f"taskcluster/group/{slug(98)}")) == errno.ENOENT


async def test_error_artifact_fails_with_eio_and_says_why(fake, inproc, caplog):
    tc = tc_dataset(fake)
    fs = tc_fs(inproc, tc)
    fs.expect_errors = True
    path = f"taskcluster/{slug(1)}/1/public/missing.txt"
    assert (await fs.stat(path)).size == 0
    assert await errno_of(fs.open(path)) == errno.EIO
    reason = (await fs.getxattr(path, "user.ciartfs.error")).decode()
    assert "file-missing-on-worker" in reason and "was not found" in reason
    assert "file-missing-on-worker" in caplog.text
    source = json.loads(await fs.getxattr(path, "user.ciartfs.source"))
    assert source["task"] == slug(1) and source["run"] == 1 and source["storage_type"] == "error"
    assert "user.ciartfs.error" in await fs.listxattr(path)
    task_dir = f"taskcluster/{slug(1)}"
    assert json.loads(await fs.getxattr(task_dir, "user.ciartfs.source"))["task"] == slug(1)
    assert json.loads(await fs.getxattr(f"{task_dir}/1", "user.ciartfs.source"))["state"] == "completed"
    assert fs.ops.errors["EIO"] == 1


async def test_expired_and_unfinished_artifacts_never_fail_their_directory(fake, inproc, caplog):
    task = fake.queue.add_task(slug(11), name="old")
    run = task.add_run("completed")
    run.add_artifact("public/logs/live.log", b"still here\n")
    run.add_artifact("public/logs/old.log", b"gone\n", expires=PAST)
    run.add_artifact("public/build/half.bin", b"never finished\n", present=False)
    fs = tc_fs(inproc, fake)
    fs.expect_errors = True
    logs = f"taskcluster/{slug(11)}/0/public/logs"
    fake.clear_requests()
    assert await fs.listdir(logs) == ["live.log", "old.log"]  # listed, as the queue lists it
    assert await fs.read_file(f"{logs}/live.log") == b"still here\n"
    # known expired from the listing's `expires`: no request for it, ever
    assert await errno_of(fs.open(f"{logs}/old.log")) == errno.ENOENT
    assert "expired" in (await fs.getxattr(f"{logs}/old.log", "user.ciartfs.error")).decode()
    assert not [r for r in fake.requests if "old.log" in r.path], "an artifact known expired was asked for"
    assert "old.log" in caplog.text and "expired" in caplog.text
    # an upload that never finished: the queue answers 404; only that file is ENOENT
    build = f"taskcluster/{slug(11)}/0/public/build"
    assert await fs.listdir(build) == ["half.bin"]
    assert await errno_of(fs.open(f"{build}/half.bin")) == errno.ENOENT
    assert await fs.listdir(f"taskcluster/{slug(11)}/0/public") == ["build", "logs"]


async def test_expired_artifact_is_enoent_when_reached_by_path_alone(fake, inproc):
    """A lookup without a listing first (`cat path`): still ENOENT, never EIO or a dead directory."""
    task = fake.queue.add_task(slug(12), name="old")
    task.add_run("completed").add_artifact("public/old.txt", b"gone\n", expires=PAST)
    fs = tc_fs(inproc, fake)
    fs.expect_errors = True
    assert await errno_of(fs.open(f"taskcluster/{slug(12)}/0/public/old.txt")) == errno.ENOENT


# -- TTLs ------------------------------------------------------------------------------------------

async def test_rerun_of_a_resolved_task_shows_up_after_latest_ttl(fake, inproc, clock):
    task = fake.queue.add_task(slug(13), name="rerun-me")
    task.add_run("completed").add_artifact("public/logs/live.log", b"run 0\n")
    fs = tc_fs(inproc, fake, latest_ttl=60)
    root = f"taskcluster/{slug(13)}"
    assert await fs.listdir(root) == ["0", "latest"] and await fs.readlink(f"{root}/latest") == "0"
    assert await fs.read_file(f"{root}/latest/public/logs/live.log") == b"run 0\n"
    rerun = task.rerun("completed")
    rerun.add_artifact("public/logs/live.log", b"run 1\n")
    assert await fs.listdir(root) == ["0", "latest"], "asked again within the TTL"
    fs.advance(61)
    assert await fs.listdir(root) == ["0", "1", "latest"]
    assert await fs.readlink(f"{root}/latest") == "1"
    assert await fs.read_file(f"{root}/latest/public/logs/live.log") == b"run 1\n"
    assert await fs.read_file(f"{root}/0/public/logs/live.log") == b"run 0\n"  # run 0 unchanged
    # a resolved run's artifact list is kept: asked once, whatever the TTL
    fake.clear_requests()
    fs.advance(3600)
    assert await fs.listdir(f"{root}/0/public/logs") == ["live.log"]
    assert not [r for r in fake.requests if r.path.endswith(f"/task/{slug(13)}/runs/0/artifacts")]


async def test_running_task_log_grows_and_reference_is_not_cached(fake, inproc, clock, tmp_path):
    tc = tc_dataset(fake)
    task = tc.queue.add_task(slug(5), name="running")
    live = task.add_run("running").add_artifact("public/logs/live.log", b"line 1\n", storage_type="reference")
    cache = tmp_path / "shared-cache"
    fs = tc_fs(inproc, tc, latest_ttl=60, cache_dir=cache)
    path = f"taskcluster/{slug(5)}/0/public/logs/live.log"
    assert await fs.read_file(path) == b"line 1\n"
    live.data += b"line 2\n"
    fs.advance(61)
    assert await fs.read_file(path) == b"line 1\nline 2\n"
    # the resolved task's reference artifact: read through, never stored on disk
    ref = f"taskcluster/{slug(1)}/1/public/ref/link.txt"
    s3 = f"taskcluster/{slug(1)}/1/public/logs/live.log"
    assert await fs.read_file(ref) == b"referenced\n"
    assert await fs.read_file(s3) == b"run 1 log\nall good\n"
    await fs.settle()
    tc.clear_requests()
    again = tc_fs(inproc, tc, cache_dir=cache)
    assert await again.read_file(ref) == b"referenced\n"
    assert await again.read_file(s3) == b"run 1 log\nall good\n"
    fetched = [r.path for r in tc.requests if r.server == "api" and "/artifacts/" in r.path]
    assert any(p.endswith("ref/link.txt") for p in fetched), "a reference artifact is fetched again"
    assert not any(p.endswith("1/artifacts/public/logs/live.log") for p in fetched), "an s3 artifact came from disk"
