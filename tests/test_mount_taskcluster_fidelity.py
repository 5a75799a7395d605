"""Taskcluster as the real queue behaves (issue 15): expired and unfinished artifacts, reruns,
temporary credentials. Real mounts against the fake queue, which follows the queue's schemas."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest

from ciartfs.config import load_settings
from ciartfs.errors import ConfigError
from ciartfs.providers.taskcluster import provider as taskcluster
from datasets import slug, tc_mount


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


# -- temporary credentials: the certificate goes in the Hawk `ext` ------------------------------

CERT = {"version": 1, "scopes": ["queue:get-artifact:private/*"], "start": 1796000000000, "expiry": 1796090000000,
        "seed": "fake-seed-0123456789abcdef0123456789abcdef0123", "signature": "fake-signature="}


def test_certificate_ext_is_base64_json_of_the_parsed_certificate():
    cred = taskcluster.credential("https://tc.example", "temp/me", "tok", json.dumps(CERT))
    header = cred.headers_for("GET", "https://tc.example/api/queue/v1/task/x/status")["Authorization"]
    ext = re.search(r'ext="([^"]*)"', header).group(1)
    assert json.loads(base64.b64decode(ext, validate=True)) == {"certificate": CERT}  # an object, not a string
    plain = taskcluster.credential("https://tc.example", "me", "tok")
    assert "ext=" not in plain.headers_for("GET", "https://tc.example/api/queue/v1/task/x/status")["Authorization"]
    assert "signature" not in repr(cred) and "tok" not in repr(cred)


def test_certificate_comes_from_the_environment_and_is_checked():
    env = {"TASKCLUSTER_ROOT_URL": "https://tc.example/", "TASKCLUSTER_CLIENT_ID": "temp/me",
           "TASKCLUSTER_ACCESS_TOKEN": "tok", "TASKCLUSTER_CERTIFICATE": json.dumps(CERT)}
    settings = load_settings({}, env=env)
    assert json.loads(settings.provider("taskcluster").certificate) == CERT
    assert settings.provider("taskcluster").certificate in settings.secrets() and "fake-signature" not in repr(settings)
    with pytest.raises(ConfigError, match="not a JSON object") as info:
        load_settings({}, env={**env, "TASKCLUSTER_CERTIFICATE": "{not json fake-signature"})
    assert "fake-signature" not in str(info.value)
    with pytest.raises(ConfigError, match="without TASKCLUSTER_CLIENT_ID"):
        load_settings({}, env={"TASKCLUSTER_CERTIFICATE": json.dumps(CERT)})


def test_temporary_credentials_need_their_certificate(fake, mount):
    fake.queue.clients["temp/me"] = "temp-token"
    fake.queue.certificates["temp/me"] = CERT
    task = fake.queue.add_task(slug(15), name="private")
    task.add_run("completed").add_artifact("private/secret.txt", b"secret bytes\n")
    creds = {"TASKCLUSTER_CLIENT_ID": "temp/me", "TASKCLUSTER_ACCESS_TOKEN": "temp-token"}
    without = mount("--taskcluster-root-url", fake.api_url, env=creds)
    without.expect_errors = True
    with pytest.raises(PermissionError):
        (without.path / "taskcluster" / slug(15) / "0/private/secret.txt").read_bytes()
    assert [r.status for r in fake.requests if r.path.endswith("private/secret.txt")] == [401]
    with_cert = mount("--taskcluster-root-url", fake.api_url, env={**creds, "TASKCLUSTER_CERTIFICATE": json.dumps(CERT)})
    assert (with_cert.path / "taskcluster" / slug(15) / "0/private/secret.txt").read_bytes() == b"secret bytes\n"
    assert "fake-signature" not in with_cert.log_text() + without.log_text()


def test_offline_remount_still_shows_a_task_whose_status_is_no_longer_kept_as_final(fake, mount, tmp_path):
    """The task status is remembered as last seen (not as final): --offline still lists it."""
    task = fake.queue.add_task(slug(16), name="offline")
    task.add_run("completed").add_artifact("public/logs/live.log", b"run 0\n")
    cache = tmp_path / "offline-cache"
    online = tc_mount(mount, fake, cache_dir=cache)
    root = online.path / "taskcluster" / slug(16)
    assert (root / "latest/public/logs/live.log").read_bytes() == b"run 0\n"
    online.stop()
    fake.clear_requests()
    offline = tc_mount(mount, fake, "--offline", cache_dir=cache)
    root = offline.path / "taskcluster" / slug(16)
    assert sorted(os.listdir(root)) == ["0", "latest"] and os.readlink(root / "latest") == "0"
    assert (root / "latest/public/logs/live.log").read_bytes() == b"run 0\n"
    assert fake.requests == [], "offline: nothing reached the network"


def test_expiry_is_judged_by_the_clock_when_listed():
    """In-process, with a fake clock: the listing's `expires` decides; no time means not expired."""
    clock = [1_000.0]
    api = taskcluster.QueueApi(None, "https://tc.example", now=lambda: clock[0])  # type: ignore[arg-type]
    run = taskcluster.Run(0, "completed", 10.0, 20.0)
    source = taskcluster._RunDir(api, 60.0, slug(17), run)
    records = taskcluster.parse_artifacts({"artifacts": [
        {"name": "public/a.txt", "storageType": "s3", "expires": "1970-01-01T00:16:40.000Z", "contentType": "text/plain"},
        {"name": "public/b.txt", "storageType": "error", "expires": "1970-01-01T00:20:00.000Z", "contentType": "x"},
        {"name": "public/c.txt", "storageType": "s3", "contentType": "text/plain"}]}, "test")
    assert [r.expires for r in records] == [1000.0, 1200.0, None]
    clock[0] = 999.0
    assert [source._file(r.name, r.name, r).artifact.gone for r in records] == [None, None, None]
    clock[0] = 1000.0  # `expires` is the moment it is deleted
    files = [source._file(r.name, r.name, r).artifact for r in records]
    assert files[0].gone and "1970-01-01T00:16:40Z" in files[0].gone and files[1].gone is None and files[1].error
    clock[0] = 5000.0
    files = [source._file(r.name, r.name, r).artifact for r in records]
    assert files[1].gone and not files[1].error and files[2].gone is None
