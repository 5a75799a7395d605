"""Tier 3: Taskcluster artifacts through real mounts, next to the CircleCI ones."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from datasets import slug, tc_dataset, tc_mount


@pytest.fixture
def tc(fake):
    return tc_dataset(fake)


def run(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def test_tree_runs_latest_and_byte_exact_reads(tc, mount):
    m = tc_mount(mount, tc)
    root = m.path / "taskcluster"
    assert sorted(os.listdir(m.path)) == ["actions", "bitbucket", "circleci", "github", "taskcluster"]
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


def test_grep_over_a_task_group_reads_each_task_once(fake, mount):
    """`grep -rl` over a group of 150 tasks (walked ahead, tree.py): every match found, each
    task's artifacts listed once and each log fetched once, whatever ran ahead of grep."""
    group = fake.queue.add_generated_group("gRePgRoUQaC0000000000A", 150, files=("public/logs/live_backing.log",))
    m = tc_mount(mount, fake)
    root = m.path / "taskcluster/group" / group.group_id
    assert len(os.listdir(root)) == 300  # a directory and a name link per task
    fake.clear_requests()
    found = run("grep", "-rl", group.needle.decode(), str(root)).stdout.split()
    assert sorted(found) == sorted(str(root / group.task_id(i) / "0/public/logs/live_backing.log")
                                   for i in range(150) if group.has_needle(i))
    listings = [r.path for r in fake.requests if r.path.endswith("/runs/0/artifacts")]
    assert sorted(listings) == sorted(f"/api/queue/v1/task/{group.task_id(i)}/runs/0/artifacts" for i in range(150))
    assert len([r for r in fake.requests if r.server == "storage"]) == 150
