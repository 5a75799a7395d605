"""Taskcluster `object` artifacts (issue 15): read through the queue's 303 like the others, and
their content hashes, which the object service gives (artifact-content, then startDownload
with the temporary credentials it hands out), checked when a whole artifact was read. Real
mounts against the fake queue and object service."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest

from datasets import slug, tc_mount

SMALL = b"small object\n" * 10  # one block
LARGE = bytes(range(256)) * 4096 * 3  # 3 MiB: many 128 KiB blocks, read-ahead and all
WRONG = {"sha256": "0" * 64, "sha512": "0" * 128}


def _mismatch_lines(m) -> list[str]:
    return [line for line in m.log_text().splitlines() if "content hash mismatch" in line and "WARNING" in line]


def test_object_artifacts_read_byte_exact_and_their_hashes_are_checked(fake, mount):
    task = fake.queue.add_task(slug(41), name="objects")
    run = task.add_run("completed")
    run.add_artifact("public/small.txt", SMALL, storage_type="object")
    run.add_artifact("public/large.bin", LARGE, storage_type="object")
    # stored gzip-encoded: the hashes are those of the content, checked on the decoded bytes
    run.add_artifact("public/log.txt", SMALL * 3000, storage_type="object", gzip=True)
    m = tc_mount(mount, fake)
    base = m.path / "taskcluster" / slug(41) / "0/public"
    fake.clear_requests()
    assert (base / "small.txt").read_bytes() == SMALL
    assert (base / "log.txt").read_bytes() == SMALL * 3000
    out = subprocess.run(["sha256sum", str(base / "large.bin")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == hashlib.sha256(LARGE).hexdigest()
    # the hashes were asked for, each object once, through the new path: artifact-content (GET)
    # then the object service's startDownload (PUT, with the temporary credentials)
    content = [r for r in fake.requests if "/artifact-content/" in r.path]
    starts = [r for r in fake.requests if r.path.startswith("/api/object/v1/start-download/")]
    assert sorted(r.path.rsplit("/", 1)[-1] for r in content) == ["large.bin", "log.txt", "small.txt"]
    assert len(starts) == 3 and all(r.method == "PUT" and r.status == 200 for r in starts)
    assert all(r.headers["authorization"].startswith("Hawk ") for r in starts)
    assert not _mismatch_lines(m)


@pytest.mark.parametrize("reader", [["cat"], ["sha256sum"]])
def test_a_lying_hash_is_eio_for_a_whole_read_and_its_siblings_read_fine(fake, mount, reader):
    task = fake.queue.add_task(slug(42), name="liar")
    run = task.add_run("completed")
    run.add_artifact("public/small.txt", SMALL, storage_type="object", hashes=dict(WRONG))
    run.add_artifact("public/large.bin", LARGE, storage_type="object", hashes={"sha256": WRONG["sha256"]})
    run.add_artifact("public/fine.bin", LARGE, storage_type="object")
    run.add_artifact("public/plain.txt", b"an s3 artifact\n")
    m = tc_mount(mount, fake)
    m.expect_errors = True
    base = m.path / "taskcluster" / slug(42) / "0/public"
    for name in ("small.txt", "large.bin"):
        before = len(_mismatch_lines(m))
        out = subprocess.run([*reader, str(base / name)], capture_output=True, timeout=60)
        assert out.returncode != 0, f"{reader[0]} {name} succeeded on bytes whose hash is wrong"
        assert b"Input/output error" in out.stderr
        if name == "small.txt":
            assert out.stdout == b"", "a one-block artifact with a wrong hash served bytes"
        # one log line for it, naming the algorithm that did not match
        lines = _mismatch_lines(m)[before:]
        assert len(lines) == 1, lines
        assert name in lines[0] and "sha256" in lines[0]
        # and again: still EIO (never served as right), without another warning
        with pytest.raises(OSError) as info:
            (base / name).read_bytes()
        assert info.value.errno == errno.EIO
        assert len(_mismatch_lines(m)) == before + 1
    # the siblings: an object with honest hashes, and an s3 artifact
    assert (base / "fine.bin").read_bytes() == LARGE
    assert (base / "plain.txt").read_bytes() == b"an s3 artifact\n"
    assert sorted(os.listdir(base)) == ["fine.bin", "large.bin", "plain.txt", "small.txt"]
