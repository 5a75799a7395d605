"""Tier 1: Taskcluster as the real queue behaves (issue 15), in units: temporary credentials' certificates
and expiry judged by the clock. Expired and unfinished artifacts, reruns and credentials through the
filesystem are tested in-process (tier 2)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from ciartfs.config import load_settings
from ciartfs.errors import ConfigError
from ciartfs.providers.taskcluster import provider as taskcluster
from datasets import slug

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
