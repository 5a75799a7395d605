"""Tier 3: Taskcluster artifacts through real mounts, next to the CircleCI ones."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import blob

TC_ID, TC_TOKEN = "project/ciartfs/tester", "tc-access-token-xyz"


def slug(n: int) -> str:
    """A well-formed slugid (taskId / taskGroupId)."""
    return f"fAkEtAsK{'Q'}a{'C'}{n:010d}A"


@pytest.fixture
def tc(fake):
    """Task 1: two runs (run 0 failed, run 1 completed) in group G with a third task."""
    q = fake.queue
    q.clients[TC_ID] = TC_TOKEN
    group = slug(99)
    t1 = q.add_task(slug(1), group, name="build-linux")
    r0 = t1.add_run("failed")
    r0.add_artifact("public/logs/live.log", b"run 0 log\nFAILED: flaky\n")
    r1 = t1.add_run("completed")
    r1.add_artifact("public/logs/live.log", b"run 1 log\nall good\n")
    r1.add_artifact("public/build/target.tar.gz", blob(1, 2 * 1024 * 1024 + 7))
    r1.add_artifact("public/build/notes.txt", b"notes\n", gzip=True)
    r1.add_artifact("public/test/report.json", b'{"failed": 0}\n' * 5000, gzip=True)
    r1.add_artifact("public/missing.txt", storage_type="error", reason="file-missing-on-worker",
                    message="/builds/worker/missing.txt was not found")
    r1.add_artifact("public/ref/link.txt", b"referenced\n", storage_type="reference")
    r1.add_artifact("public/obj/object.bin", blob(2, 5000), storage_type="object")
    r1.add_artifact("private/secret.txt", b"secret bytes\n")
    t2 = q.add_task(slug(2), group, name="test-linux")
    t2.add_run("completed").add_artifact("public/logs/live.log", b"task 2\n")
    t3 = q.add_task(slug(3), group, name="build-linux")  # a duplicate name: no link
    t3.add_run("completed").add_artifact("public/logs/live.log", b"task 3\n")
    return fake


def tc_mount(mount, fake, *args, creds=False, **kw):
    env = {"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN} if creds else {}
    return mount("--taskcluster-root-url", fake.api_url, *args, env=env, **kw)


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def test_tree_runs_latest_and_byte_exact_reads(tc, mount):
    m = tc_mount(mount, tc)
    root = m.path / "taskcluster"
    assert sorted(os.listdir(m.path)) == ["bitbucket", "circleci", "github", "taskcluster"]
    assert os.listdir(root) == ["group"]  # tasks cannot be enumerated...
    task = root / slug(1)
    here = os.getcwd()
    os.chdir(task)  # ...but any taskId looks up, and cd works without listing first
    try:
        assert sorted(os.listdir(".")) == ["0", "1", "latest"]
        assert os.readlink("latest") == "1"
    finally:
        os.chdir(here)
    run1 = task / "1"
    r1 = tc.queue.tasks[slug(1)].runs[1]
    for art in r1.artifacts:
        if art.storage_type == "error" or art.name.startswith("private/"):
            continue
        path = run1 / art.name
        assert path.stat().st_size == len(art.data), art.name  # gzip: the decoded size
        out = run("sha256sum", str(path))
        assert out.stdout.split()[0] == hashlib.sha256(art.data).hexdigest(), art.name
    assert (task / "0/public/logs/live.log").read_bytes() == b"run 0 log\nFAILED: flaky\n"
    grep = run("grep", "-rl", "FAILED", str(task))
    assert grep.stdout.split() == [str(task / "0/public/logs/live.log")]
    assert (task / "latest/public/logs/live.log").read_bytes() == b"run 1 log\nall good\n"


def test_pagination_is_followed(tc, mount):
    run0 = tc.queue.tasks[slug(2)].runs[0]
    for i in range(9):
        run0.add_artifact(f"public/many/f{i}.txt", f"{i}\n".encode())
    m = tc_mount(mount, tc)
    assert sorted(os.listdir(m.path / "taskcluster" / slug(2) / "0/public/many")) == [f"f{i}.txt" for i in range(9)]
    pages = [r for r in tc.requests if r.path.endswith(f"/task/{slug(2)}/runs/0/artifacts")]
    assert len(pages) == 5 and sum("continuationToken" in r.query for r in pages) == 4


def test_unknown_or_malformed_task_ids_are_enoent(tc, mount):
    m = tc_mount(mount, tc)
    tc.clear_requests()
    for name in ("not-a-task", "x" * 22, "../etc", slug(1) + "x"):
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "taskcluster" / name)
    assert not [r for r in tc.requests if "/api/queue/" in r.path], "malformed ids never reach the API"
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "taskcluster" / slug(77))  # well-formed, unknown: the queue says 404
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "taskcluster" / slug(1) / "5")


def test_error_artifact_fails_with_eio_and_says_why(tc, mount):
    m = tc_mount(mount, tc)
    m.expect_errors = True
    path = m.path / "taskcluster" / slug(1) / "1/public/missing.txt"
    assert path.stat().st_size == 0
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO and time.monotonic() - start < 10
    reason = os.getxattr(path, "user.ciartfs.error").decode()
    assert "file-missing-on-worker" in reason and "was not found" in reason
    assert "file-missing-on-worker" in m.log_text()
    source = json.loads(os.getxattr(path, "user.ciartfs.source"))
    assert source["task"] == slug(1) and source["run"] == 1 and source["storage_type"] == "error"
    assert "user.ciartfs.error" in os.listxattr(path)
    task_dir = m.path / "taskcluster" / slug(1)
    assert json.loads(os.getxattr(task_dir, "user.ciartfs.source"))["task"] == slug(1)
    assert json.loads(os.getxattr(task_dir / "1", "user.ciartfs.source"))["state"] == "completed"


def test_gzip_artifact_is_served_decoded_with_true_size(tc, mount):
    m = tc_mount(mount, tc, "--block-size", "16K")
    report = tc.queue.tasks[slug(1)].runs[1].artifacts[3]
    path = m.path / "taskcluster" / slug(1) / "1/public/test/report.json"
    assert len(gzip.compress(report.data)) < len(report.data) // 10  # truly compressed on the wire
    assert path.stat().st_size == len(report.data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in (0, 16383, 40000, len(report.data) - 3):
            assert os.pread(fd, 20000, off) == report.data[off:off + 20000]
    finally:
        os.close(fd)


def test_private_artifacts_need_hawk_credentials_that_never_reach_storage(tc, mount):
    anon = tc_mount(mount, tc)
    anon.expect_errors = True
    with pytest.raises(PermissionError):
        (anon.path / "taskcluster" / slug(1) / "1/private/secret.txt").read_bytes()
    assert (anon.path / "taskcluster" / slug(1) / "1/public/logs/live.log").read_bytes() == b"run 1 log\nall good\n"
    authed = tc_mount(mount, tc, creds=True)
    tc.clear_requests()
    assert (authed.path / "taskcluster" / slug(1) / "1/private/secret.txt").read_bytes() == b"secret bytes\n"
    api = [r for r in tc.requests if r.server == "api" and "private" in r.path]
    assert api and all(r.headers.get("authorization", "").startswith("Hawk ") for r in api)
    storage = [r for r in tc.requests if r.server == "storage"]
    assert storage and all("authorization" not in r.headers for r in storage)
    for m in (anon, authed):
        assert TC_TOKEN not in m.log_text()


def test_task_group_lists_tasks_and_unique_name_links(tc, mount):
    m = tc_mount(mount, tc)
    group = m.path / "taskcluster/group" / slug(99)
    names = sorted(os.listdir(group))
    assert names == sorted([slug(1), slug(2), slug(3), "test-linux"])  # build-linux is not unique
    assert os.readlink(group / "test-linux") == slug(2)
    assert (group / "test-linux/0/public/logs/live.log").read_bytes() == b"task 2\n"
    assert os.path.isdir(group / slug(1)) and not os.path.islink(group / slug(1))
    found = run("grep", "-rl", "task 3", str(group)).stdout.split()
    assert found == [str(group / slug(3) / "0/public/logs/live.log")]
    with pytest.raises(FileNotFoundError):
        os.listdir(m.path / "taskcluster/group" / slug(98))


def test_running_task_log_grows_and_reference_is_not_cached(tc, mount, tmp_path):
    task = tc.queue.add_task(slug(5), name="running")
    live = task.add_run("running").add_artifact("public/logs/live.log", b"line 1\n", storage_type="reference")
    m = tc_mount(mount, tc, "--latest-ttl", "1")
    path = m.path / "taskcluster" / slug(5) / "0/public/logs/live.log"
    assert path.read_bytes() == b"line 1\n"
    live.data += b"line 2\n"
    deadline = time.monotonic() + 10
    while path.read_bytes() != b"line 1\nline 2\n":
        assert time.monotonic() < deadline, "a running task's log was not re-read"
        time.sleep(0.3)
    # the resolved task's reference artifact: read through, never stored on disk
    ref = m.path / "taskcluster" / slug(1) / "1/public/ref/link.txt"
    assert ref.read_bytes() == b"referenced\n"
    assert (m.path / "taskcluster" / slug(1) / "1/public/logs/live.log").read_bytes() == b"run 1 log\nall good\n"
    m.stop()
    tc.clear_requests()
    again = tc_mount(mount, tc)
    assert (again.path / "taskcluster" / slug(1) / "1/public/ref/link.txt").read_bytes() == b"referenced\n"
    assert (again.path / "taskcluster" / slug(1) / "1/public/logs/live.log").read_bytes() == b"run 1 log\nall good\n"
    fetched = [r.path for r in tc.requests if r.server == "api" and "/artifacts/" in r.path]
    assert any(p.endswith("ref/link.txt") for p in fetched), "a reference artifact is fetched again"
    assert not any(p.endswith("1/artifacts/public/logs/live.log") for p in fetched), "an s3 artifact came from disk"


def test_no_taskcluster_dir_without_a_root_url(tc, mount):
    m = mount()
    assert sorted(os.listdir(m.path)) == ["bitbucket", "circleci", "github"]
    assert not Path(m.path / "taskcluster").exists()
