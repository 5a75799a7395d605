"""Tier 2: Taskcluster in-process (tests/inproc.py): runs and `latest` across TTLs, errors
and expiry as errnos, what is kept and what is asked again."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import sqlite3

from ciartfs import fs as fs_module
from ciartfs.fakeserver.taskcluster import PAST
from datasets import TC_ID, TC_TOKEN, slug, tc_dataset
from inproc import errno_of


async def tc_fs(inproc, fake, **settings):
    return await inproc(taskcluster_root_url=fake.api_url, **settings)


async def test_unknown_or_malformed_task_ids_are_enoent(fake, inproc):
    tc = tc_dataset(fake)
    fs = await tc_fs(inproc, tc)
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
    fs = await tc_fs(inproc, tc)
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
    fs = await tc_fs(inproc, fake)
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
    fs = await tc_fs(inproc, fake)
    fs.expect_errors = True
    assert await errno_of(fs.open(f"taskcluster/{slug(12)}/0/public/old.txt")) == errno.ENOENT


# -- TTLs ------------------------------------------------------------------------------------------

async def test_rerun_of_a_resolved_task_shows_up_after_latest_ttl(fake, inproc, clock):
    task = fake.queue.add_task(slug(13), name="rerun-me")
    task.add_run("completed").add_artifact("public/logs/live.log", b"run 0\n")
    fs = await tc_fs(inproc, fake, latest_ttl=60)
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


async def test_the_kernel_keeps_a_group_s_entries_as_long_as_the_group_s_listing(fake, inproc, clock):
    """fs.py: an entry of a complete listing that can change (a task: it can be re-run) is shown
    with timeouts up to that listing's TTL, no staler than the tree itself (which answers from
    the listing until then): `grep -r` over a group makes no lookup per task. Then, briefly."""
    group = fake.queue.add_generated_group("gRoUpTtLQaC0000000000A", 3)
    fs = await tc_fs(inproc, fake, latest_ttl=60)
    path = "taskcluster/group/gRoUpTtLQaC0000000000A"
    listed = await fs.readdir(path)
    task, name = listed[group.task_id(1)], listed[group.name_of(1)]
    assert task.is_dir and name.is_link
    for attr in (task, name):
        assert 59 <= attr.entry_timeout <= 60 and attr.attr_timeout == attr.entry_timeout
    fs.advance(45)
    attr = fs.ops.attributes(fs.node(task.inode))
    assert 14 <= attr.entry_timeout <= 15 and attr.attr_timeout == attr.entry_timeout, "what is left of the TTL"
    fs.advance(20)  # the listing is stale: asked again at the next lookup; until then, briefly
    attr = fs.ops.attributes(fs.node(task.inode))
    assert attr.entry_timeout == attr.attr_timeout == fs_module.MUTABLE_TIMEOUT
    # a task looked up by id alone (taskcluster/<taskId>: no listing names it) stays brief
    alone = await fs.stat(f"taskcluster/{group.task_id(2)}")
    assert alone.entry_timeout == alone.attr_timeout == fs_module.MUTABLE_TIMEOUT
    # what never changes is kept as long as ever; an unknown size is still asked again
    run = (await fs.readdir(f"{path}/{group.task_id(1)}"))["0"]
    assert run.entry_timeout == fs_module.IMMUTABLE_TIMEOUT
    log = (await fs.readdir(f"{path}/{group.task_id(1)}/0/public/logs"))["live_backing.log"]
    assert log.attr_timeout == 0 and log.entry_timeout == fs_module.IMMUTABLE_TIMEOUT


async def test_running_task_log_grows_and_reference_is_not_cached(fake, inproc, clock, tmp_path):
    tc = tc_dataset(fake)
    task = tc.queue.add_task(slug(5), name="running")
    live = task.add_run("running").add_artifact("public/logs/live.log", b"line 1\n", storage_type="reference")
    cache = tmp_path / "shared-cache"
    fs = await tc_fs(inproc, tc, latest_ttl=60, cache_dir=cache)
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
    again = await tc_fs(inproc, tc, cache_dir=cache)
    assert await again.read_file(ref) == b"referenced\n"
    assert await again.read_file(s3) == b"run 1 log\nall good\n"
    fetched = [r.path for r in tc.requests if r.server == "api" and "/artifacts/" in r.path]
    assert any(p.endswith("ref/link.txt") for p in fetched), "a reference artifact is fetched again"
    assert not any(p.endswith("1/artifacts/public/logs/live.log") for p in fetched), "an s3 artifact came from disk"


async def test_pagination_is_followed(fake, inproc):
    tc = tc_dataset(fake)
    run0 = tc.queue.tasks[slug(2)].runs[0]
    for i in range(9):
        run0.add_artifact(f"public/many/f{i}.txt", f"{i}\n".encode())
    fs = await tc_fs(inproc, tc)
    assert await fs.listdir(f"taskcluster/{slug(2)}/0/public/many") == [f"f{i}.txt" for i in range(9)]
    pages = [r for r in tc.requests if r.path.endswith(f"/task/{slug(2)}/runs/0/artifacts")]
    assert len(pages) == 5 and sum("continuationToken" in r.query for r in pages) == 4


async def test_no_taskcluster_dir_without_a_root_url(fake, inproc):
    tc_dataset(fake)
    fs = await inproc()
    assert await fs.listdir("") == ["actions", "bitbucket", "circleci", "github"]
    assert await errno_of(fs.stat("taskcluster")) == errno.ENOENT


# -- credentials -----------------------------------------------------------------------------------

async def test_private_artifacts_need_hawk_credentials_that_never_reach_storage(fake, inproc, caplog):
    caplog.set_level(logging.DEBUG, logger="ciartfs")
    tc = tc_dataset(fake)
    secret = f"taskcluster/{slug(1)}/1/private/secret.txt"
    anon = await tc_fs(inproc, tc)
    anon.expect_errors = True
    assert await errno_of(anon.open(secret)) == errno.EACCES
    assert await anon.read_file(f"taskcluster/{slug(1)}/1/public/logs/live.log") == b"run 1 log\nall good\n"
    authed = await tc_fs(inproc, tc, env={"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN})
    tc.clear_requests()
    assert await authed.read_file(secret) == b"secret bytes\n"
    api = [r for r in tc.requests if r.server == "api" and "private" in r.path]
    assert api and all(r.headers.get("authorization", "").startswith("Hawk ") for r in api)
    storage = [r for r in tc.requests if r.server == "storage"]
    assert storage and all("authorization" not in r.headers for r in storage)
    assert caplog.text and TC_TOKEN not in caplog.text


CERT = {"version": 1, "scopes": ["queue:get-artifact:private/*"], "start": 1796000000000, "expiry": 1796090000000,
        "seed": "fake-seed-0123456789abcdef0123456789abcdef0123", "signature": "fake-signature="}


async def test_temporary_credentials_need_their_certificate(fake, inproc, caplog):
    caplog.set_level(logging.DEBUG, logger="ciartfs")
    fake.queue.clients["temp/me"] = "temp-token"
    fake.queue.certificates["temp/me"] = CERT
    task = fake.queue.add_task(slug(15), name="private")
    task.add_run("completed").add_artifact("private/secret.txt", b"secret bytes\n")
    secret = f"taskcluster/{slug(15)}/0/private/secret.txt"
    creds = {"TASKCLUSTER_CLIENT_ID": "temp/me", "TASKCLUSTER_ACCESS_TOKEN": "temp-token"}
    without = await tc_fs(inproc, fake, env=creds)
    without.expect_errors = True
    assert await errno_of(without.open(secret)) == errno.EACCES
    assert [r.status for r in fake.requests if r.path.endswith("private/secret.txt")] == [401]
    with_cert = await tc_fs(inproc, fake, env={**creds, "TASKCLUSTER_CERTIFICATE": json.dumps(CERT)})
    assert await with_cert.read_file(secret) == b"secret bytes\n"
    assert caplog.text and "fake-signature" not in caplog.text


# -- what is kept: a second mount, offline -----------------------------------------------------------

async def test_rerun_shows_up_after_a_remount_with_the_same_cache(fake, inproc, tmp_path):
    task = fake.queue.add_task(slug(14), name="rerun-me")
    task.add_run("failed").add_artifact("public/logs/live.log", b"run 0\n")
    cache = tmp_path / "shared-cache"
    first = await tc_fs(inproc, fake, cache_dir=cache)
    root = f"taskcluster/{slug(14)}"
    assert await first.readlink(f"{root}/latest") == "0"
    assert await first.read_file(f"{root}/0/public/logs/live.log") == b"run 0\n"
    await first.close()
    task.rerun("completed").add_artifact("public/logs/live.log", b"run 1\n")
    second = await tc_fs(inproc, fake, cache_dir=cache)
    assert await second.listdir(root) == ["0", "1", "latest"]
    assert await second.readlink(f"{root}/latest") == "1"
    assert await second.read_file(f"{root}/latest/public/logs/live.log") == b"run 1\n"
    fake.clear_requests()
    assert await second.read_file(f"{root}/0/public/logs/live.log") == b"run 0\n"
    assert not [r for r in fake.requests if "/runs/0/" in r.path], "run 0 (resolved) came from the disk cache"


async def test_offline_remount_still_shows_a_task_whose_status_is_no_longer_kept_as_final(fake, inproc, tmp_path):
    """The task status is remembered as last seen (not as final): offline still lists it."""
    task = fake.queue.add_task(slug(16), name="offline")
    task.add_run("completed").add_artifact("public/logs/live.log", b"run 0\n")
    cache = tmp_path / "offline-cache"
    root = f"taskcluster/{slug(16)}"
    online = await tc_fs(inproc, fake, cache_dir=cache)
    assert await online.read_file(f"{root}/latest/public/logs/live.log") == b"run 0\n"
    await online.close()
    fake.clear_requests()
    offline = await tc_fs(inproc, fake, cache_dir=cache, offline=True)
    assert await offline.listdir(root) == ["0", "latest"] and await offline.readlink(f"{root}/latest") == "0"
    assert await offline.read_file(f"{root}/latest/public/logs/live.log") == b"run 0\n"
    assert fake.requests == [], "offline: nothing reached the network"


# -- byte sources: gzip-encoded and object artifacts -------------------------------------------------

async def test_gzip_artifact_is_served_decoded_with_true_size(fake, inproc):
    tc = tc_dataset(fake)
    fs = await tc_fs(inproc, tc, block_size=16 << 10)
    report = tc.queue.tasks[slug(1)].runs[1].artifacts[3]
    path = f"taskcluster/{slug(1)}/1/public/test/report.json"
    assert len(gzip.compress(report.data)) < len(report.data) // 10  # truly compressed on the wire
    assert (await fs.stat(path)).size == len(report.data)
    fh = await fs.open(path)
    for off in (0, 16383, 40000, len(report.data) - 3):
        assert await fs.read(fh, off, 20000) == report.data[off:off + 20000]
    await fs.release(fh)


OBJECT = bytes(range(256)) * 4096 * 3  # 3 MiB: many 128 KiB blocks
WRONG = {"sha256": "0" * 64, "sha512": "0" * 128}


async def test_blocks_of_a_mismatched_object_are_not_kept_in_the_disk_cache(fake, inproc, tmp_path):
    """A second mount over the same disk cache finds nothing of the bad object to serve."""
    task = fake.queue.add_task(slug(43), name="liar")
    task.add_run("completed").add_artifact("public/large.bin", OBJECT, storage_type="object", hashes=dict(WRONG))
    cache = tmp_path / "cache-kept"
    fs = await tc_fs(inproc, fake, cache_dir=cache)
    fs.expect_errors = True
    assert await errno_of(fs.read_file(f"taskcluster/{slug(43)}/0/public/large.bin")) == errno.EIO
    await fs.close()
    # what the next mount would serve: records of a whole block (API documents are far smaller);
    # the index is asked directly, as a second mount's store would
    with contextlib.closing(sqlite3.connect(cache / "blocks" / "index.sqlite")) as index:
        (cached,) = index.execute("SELECT COUNT(*) FROM entries WHERE len >= ?", (128 << 10,)).fetchone()
        (documents,) = index.execute("SELECT COUNT(*) FROM entries").fetchone()
    assert documents > 0, "the mount kept nothing at all (the check below could not fail)"
    assert not cached, f"{cached} blocks of an artifact found wrong are still in the disk cache"


async def test_a_private_object_uses_our_credentials_for_the_queue_and_only_the_temporary_ones_for_the_object_service(
        fake, inproc, caplog):
    caplog.set_level(logging.DEBUG, logger="ciartfs")
    task = fake.queue.add_task(slug(44), name="private")
    task.add_run("completed").add_artifact("private/secret.bin", OBJECT[:5000], storage_type="object")
    fake.queue.clients[TC_ID] = TC_TOKEN
    fs = await tc_fs(inproc, fake, env={"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN})
    fake.clear_requests()
    assert await fs.read_file(f"taskcluster/{slug(44)}/0/private/secret.bin") == OBJECT[:5000]
    content = [r for r in fake.requests if "/artifact-content/" in r.path]
    starts = [r for r in fake.requests if r.path.startswith("/api/object/v1/start-download/")]
    assert [r.status for r in content] == [200] and [r.status for r in starts] == [200]
    assert f'id="{TC_ID}"' in content[0].headers["authorization"]
    assert TC_ID not in starts[0].headers["authorization"]  # the object service sees only the temporary client
    assert "object-download/" in starts[0].headers["authorization"]
    # nothing else got a credential: not the storage the queue redirects to
    assert [r for r in fake.requests if r.server == "storage"]
    assert not [r for r in fake.requests if r.server == "storage" and "authorization" in r.headers]
    assert caplog.text and TC_TOKEN not in caplog.text


async def test_a_resolved_run_listed_again_after_forget_comes_from_its_kept_listing_as_unpacked(fake, inproc,
                                                                                                 monkeypatch):
    """A resolved run's listing never changes: it is kept placed and packed (namespace/packed.py),
    its `reference` artifacts (which may change) apart, so a re-list after the kernel forgot it
    asks nothing again and makes no artifact, and shows the same names, kinds, sizes and xattrs
    (each file's own `source`, its error) as a first listing, and as the run listed unpacked
    (one Entry per file, as before it was packed)."""
    import ciartfs.providers.taskcluster.provider as tc_module
    from inproc import tree_sees_no_packed_files

    parsed = []
    real_parse = tc_module.parse_artifacts
    monkeypatch.setattr(tc_module, "parse_artifacts", lambda doc, where: parsed.append(where) or real_parse(doc, where))
    tc = tc_dataset(fake)
    run = tc.queue.tasks[slug(1)].runs[1]
    run.add_artifact("top.txt", b"at the top\n")
    run.add_artifact("public/logs/old.log", b"gone\n", expires=PAST)
    run.add_artifact("/public/lead.txt", b"a leading slash\n")
    run.add_artifact("public/deep/a/b/c.txt", b"c" * 70_000)
    fs = await tc_fs(inproc, tc, env={"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN})
    fs.expect_errors = True
    top = f"taskcluster/{slug(1)}/1"
    first = await fs.snapshot(top)
    assert first["top.txt"][:2] == ("file", 11) and first["public/deep/a/b/c.txt"][:2] == ("file", 70_000)
    assert json.loads(first["public/lead.txt"][3]["user.ciartfs.source"])["name"] == "/public/lead.txt"
    assert "expired" in first["public/logs/old.log"][3]["user.ciartfs.error"].decode()
    assert b"file-missing-on-worker" in first["public/missing.txt"][3]["user.ciartfs.error"]
    listing = f"/task/{slug(1)}/runs/1/artifacts"
    assert len([r for r in tc.requests if r.path.endswith(listing) and "continuationToken" not in r.query]) == 1
    pages = len(parsed)
    await fs.forget_everything()
    tc.clear_requests()
    listed = await fs.readdir(f"{top}/public/build")
    assert all(fs.node(a.inode).made_artifact is None for a in listed.values()), "an artifact made by a listing"
    assert fs.node((await fs.resolve(f"{top}/public/ref/link.txt")).inode).immutable is False  # a reference, apart
    assert await fs.snapshot(top) == first
    assert not [r for r in tc.requests if r.path.endswith(listing)], "the run's listing asked for again"
    assert len(parsed) == pages, "listed again by parsing the run's listing"
    assert await fs.read_file(f"{top}/public/deep/a/b/c.txt") == b"c" * 70_000
    monkeypatch.setattr(tc_module, "pack", lambda *args, **kwargs: None)  # the run's entries made as before
    tree_sees_no_packed_files(monkeypatch)
    unpacked = await tc_fs(inproc, tc, env={"TASKCLUSTER_CLIENT_ID": TC_ID, "TASKCLUSTER_ACCESS_TOKEN": TC_TOKEN})
    unpacked.expect_errors = True
    assert await unpacked.snapshot(top) == first
