"""The fake Taskcluster queue against the queue's own JSON schemas
(tests/specs/taskcluster-queue/*.yml): task status, listArtifacts (every page),
listTaskGroup (every page), getArtifact and artifact-content (each storage type, links followed,
the latest run's form) validate, so a fake that drifts from the real queue fails CI.

The schemas are copied unchanged and so still hold the queue's build-time directives:
`{$const: name}` (a value from the queue's constants file) and `$ref`s to schemas the copy does
not include. `CONSTANTS` and `STAND_INS` below fill those in; they are ours, written from the
queue's documentation, and looser than the originals only where noted.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import mohawk
import pytest
import referencing
import referencing.jsonschema
import yaml

from ciartfs.fakeserver import FakeCI, demo_dataset
from ciartfs.fakeserver.dataset import DEMO_TASK_GROUP, DEMO_TASKS
from ciartfs.fakeserver.taskcluster import PAST
from conftest import SPECS_DIR, serving

SPEC_DIR = SPECS_DIR / "taskcluster-queue" if (SPECS_DIR / "taskcluster-queue/task-status.yml").is_file() else None

_SLUGID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8}[Q-T][A-Za-z0-9_-][CGKOSWaeimquy26-][A-Za-z0-9_-]{10}[AQgw]$"}
_TIME = {"type": "string", "format": "date-time"}
_IDENTIFIER = {"type": "string", "minLength": 1, "maxLength": 38, "pattern": "^([a-zA-Z0-9-_]*)$"}
CONSTANTS: dict[str, Any] = {
    "taskId": _SLUGID, "deadline": _TIME, "expires": _TIME, "created": _TIME,
    "min-run-id": 0, "max-run-id": 1000,
    "identifier-min-length": 1, "identifier-max-length": 38, "identifier-pattern": "^([a-zA-Z0-9-_]*)$",
}
STAND_INS: dict[str, Any] = {
    # one entry of listArtifacts, as the queue documents it
    "artifact-response.json": {
        "type": "object", "additionalProperties": False,
        "required": ["storageType", "name", "expires", "contentType"],
        "properties": {"storageType": {"enum": ["s3", "object", "reference", "link", "error"]},
                       "name": {"type": "string", "maxLength": 1024}, "expires": _TIME,
                       "contentType": {"type": "string", "maxLength": 255}}},
    # a task definition: the fields the queue requires (payload, extra, tags are free-form)
    "task.json": {
        "type": "object", "additionalProperties": False,
        "required": ["provisionerId", "workerType", "schedulerId", "taskGroupId", "dependencies", "requires",
                     "routes", "priority", "retries", "created", "deadline", "scopes", "payload", "metadata",
                     "tags", "extra"],
        "properties": {
            "provisionerId": _IDENTIFIER, "workerType": _IDENTIFIER, "schedulerId": _IDENTIFIER,
            "taskQueueId": {"type": "string", "pattern": "^[a-zA-Z0-9-_]{1,38}/[a-z]([-a-z0-9]{0,36}[a-z0-9])?$"},
            "projectId": _IDENTIFIER, "taskGroupId": _SLUGID,
            "dependencies": {"type": "array", "items": _SLUGID, "uniqueItems": True},
            "requires": {"enum": ["all-completed", "all-resolved"]},
            "routes": {"type": "array", "items": {"type": "string"}},
            "priority": {"enum": ["highest", "very-high", "high", "medium", "low", "very-low", "lowest", "normal"]},
            "retries": {"type": "integer", "minimum": 0, "maximum": 49},
            "created": _TIME, "deadline": _TIME, "expires": _TIME,
            "scopes": {"type": "array", "items": {"type": "string"}}, "payload": {"type": "object"},
            "metadata": {"type": "object", "additionalProperties": False,
                         "required": ["name", "description", "owner", "source"],
                         "properties": {"name": {"type": "string", "maxLength": 255},
                                        "description": {"type": "string"},
                                        "owner": {"type": "string", "format": "email"},
                                        "source": {"type": "string", "format": "uri"}}},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}}, "extra": {"type": "object"}}},
    "task-group-response.json": {"type": "object", "properties": {
        "taskGroupId": _SLUGID, "schedulerId": _IDENTIFIER, "expires": _TIME, "sealed": _TIME}},
    # temporary credentials for the object service (only in artifact-content answers)
    "object-credentials.json": {"type": "object", "required": ["clientId", "accessToken"],
                                "properties": {"clientId": {"type": "string"}, "accessToken": {"type": "string"},
                                               "certificate": {"type": "string"}}},
}


def _resolve_consts(node: Any) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$const"}:
            return CONSTANTS[node["$const"]]
        return {k: _resolve_consts(v) for k, v in node.items() if k != "$schema"}
    if isinstance(node, list):
        return [_resolve_consts(v) for v in node]
    return node


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    """RFC 3339 as the queue writes it ('2026-11-01T10:00:00.000Z'): a zone is required."""
    if not isinstance(value, str) or "T" not in value:
        return False
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


@_FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    return parts is not None and bool(parts.scheme) and bool(parts.netloc)


@pytest.fixture(scope="module")
def validator_for() -> Any:
    if SPEC_DIR is None:
        pytest.fail("the Taskcluster queue schemas are not found: set CIARTFS_SPECS to the specs directory")
    resources = {}
    for path in SPEC_DIR.glob("*.yml"):
        schema = _resolve_consts(yaml.safe_load(path.read_text()))
        resources[path.stem + ".json"] = referencing.Resource.from_contents(
            schema, default_specification=referencing.jsonschema.DRAFT7)
    for name, schema in STAND_INS.items():
        assert name not in resources, f"{name} is in the specs now: drop its stand-in"
        resources[name] = referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT7)
    registry = referencing.Registry().with_resources(resources.items())

    def make(name: str) -> jsonschema.Draft7Validator:
        return jsonschema.Draft7Validator({"$ref": name}, registry=registry, format_checker=_FORMATS)
    return make


@pytest.fixture(scope="module")
def queue() -> Iterator[FakeCI]:
    """The demo's task group (an expired artifact, a rerun task), and a task with an artifact of
    every storage type, an expired one and an unfinished upload."""
    server = FakeCI(tokens=set())
    demo_dataset(server)
    task = server.queue.add_task("sChEmAtAQaC0000000001A", DEMO_TASK_GROUP, name="every-kind")
    run = task.add_run("completed")
    run.add_artifact("public/s3.txt", b"s3\n")
    run.add_artifact("public/object.bin", b"object\n", storage_type="object")
    run.add_artifact("public/ref.txt", b"ref\n", storage_type="reference")
    run.add_artifact("public/error.txt", storage_type="error")
    run.add_artifact("public/expired.txt", b"old\n", expires=PAST)
    run.add_artifact("public/unfinished.txt", b"half\n", present=False)
    run.add_artifact("public/away.txt", storage_type="reference", url=ELSEWHERE)
    run.add_artifact("public/private-target.txt", storage_type="link", link="private/secret.txt")
    run.add_artifact("private/secret.txt", b"secret\n")
    for target in ("s3.txt", "object.bin", "away.txt", "error.txt", "unfinished.txt", "expired.txt", "link-to-s3.txt"):
        run.add_artifact(f"public/link-to-{target}", storage_type="link", link=f"public/{target}")
    run.add_artifact("public/cycle-a", storage_type="link", link="public/cycle-b")
    run.add_artifact("public/cycle-b", storage_type="link", link="public/cycle-a")
    run.add_artifact("public/which-run.txt", b"run 0\n")
    rerun = task.rerun("running")
    rerun.add_artifact("public/which-run.txt", b"run 1\n")
    rerun.add_live_log(b"still running\n")
    yield from serving(server)


ELSEWHERE = "https://elsewhere.example.com/their/ref.txt?sig=abc"  # a reference's own URL


def _get(server: FakeCI, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.api_url}/api/queue/v1/{path}", params=params, timeout=5, follow_redirects=False)


def _content(server: FakeCI, name: str, run: str = "runs/0/") -> httpx.Response:
    return _get(server, f"task/sChEmAtAQaC0000000001A/{run}artifact-content/{name}")


def _all_pages(server: FakeCI, path: str) -> list[dict[str, Any]]:
    pages, token = [], None
    while True:
        reply = _get(server, path, **({"continuationToken": token} if token else {}))
        assert reply.status_code == 200, reply.text
        pages.append(reply.json())
        token = pages[-1].get("continuationToken")
        if token is None:
            return pages


def _task_ids(server: FakeCI) -> list[str]:
    return list(server.queue.tasks)


def test_task_status_answers_follow_the_schema(queue, validator_for):
    validator = validator_for("task-status-response.json")
    for task_id in _task_ids(queue):
        reply = _get(queue, f"task/{task_id}/status")
        assert reply.status_code == 200
        validator.validate(reply.json())
    reasons = [r["reasonCreated"] for r in _get(queue, "task/sChEmAtAQaC0000000001A/status").json()["status"]["runs"]]
    assert reasons == ["scheduled", "rerun"]


def test_list_artifacts_pages_follow_the_schema(queue, validator_for):
    validator = validator_for("list-artifacts-response.json")
    seen_pages = 0
    for task_id, task in queue.queue.tasks.items():
        for run in task.runs:
            pages = _all_pages(queue, f"task/{task_id}/runs/{run.run_id}/artifacts")
            for page in pages:
                validator.validate(page)
            seen_pages += len(pages)
            assert [a["name"] for p in pages for a in p["artifacts"]] == [a.name for a in run.artifacts]
    assert seen_pages > len(queue.queue.tasks), "some listings took more than one page"


def test_list_task_group_pages_follow_the_schema(queue, validator_for):
    validator = validator_for("list-task-group-response.json")
    pages = _all_pages(queue, f"task-group/{DEMO_TASK_GROUP}/list")
    assert len(pages) > 1
    for page in pages:
        validator.validate(page)
    listed = {t["status"]["taskId"] for p in pages for t in p["tasks"]}
    assert listed == {t for t, task in queue.queue.tasks.items() if task.task_group_id == DEMO_TASK_GROUP}
    assert {*DEMO_TASKS, "sChEmAtAQaC0000000001A"} <= listed


def test_a_generated_group_follows_the_schemas_and_is_never_stored(queue, validator_for):
    """scripts/bench.py's 5k-task group: made when asked for, paged as the queue pages (1000)."""
    stored = len(queue.blobs.by_id), len(queue.queue.tasks)
    group = queue.queue.add_generated_group("gEnGrOuPQaC0000000077A", 2500, files=("public/a.log", "public/b.txt"))
    pages = _all_pages(queue, f"task-group/{group.group_id}/list")
    assert [len(p["tasks"]) for p in pages] == [1000, 1000, 500]
    for page in pages:
        validator_for("list-task-group-response.json").validate(page)
    listed = [t["status"]["taskId"] for p in pages for t in p["tasks"]]
    assert listed == [group.task_id(i) for i in range(2500)] and len(set(listed)) == 2500
    assert all(group.index_of(t) == i for i, t in enumerate(listed))
    needle_task = next(i for i in range(2500) if group.has_needle(i))
    task_id = group.task_id(needle_task)
    validator_for("task-status-response.json").validate(_get(queue, f"task/{task_id}/status").json())
    artifacts = _get(queue, f"task/{task_id}/runs/0/artifacts").json()
    validator_for("list-artifacts-response.json").validate(artifacts)
    assert [a["name"] for a in artifacts["artifacts"]] == ["public/a.log", "public/b.txt"]
    got = _get(queue, f"task/{task_id}/runs/0/artifacts/public/a.log")
    assert got.status_code == 303
    validator_for("get-artifact-response.json").validate(got.json())
    body = httpx.get(got.headers["location"], timeout=5).content
    assert body == group.data(needle_task, 0) and group.needle in body
    assert group.needle not in httpx.get(_get(queue, f"task/{group.task_id(needle_task + 1)}/runs/0/artifacts/public/a.log")
                                         .headers["location"], timeout=5).content
    assert _get(queue, f"task/{group.tag}QaC0000002500A/status").status_code == 404  # past the last task
    assert (len(queue.blobs.by_id), len(queue.queue.tasks)) == stored, "a generated group stores nothing"


def test_the_demo_has_the_awkward_cases(queue):
    """The demo (and so every test on it) meets a rerun task and an expired artifact."""
    runs = _get(queue, f"task/{DEMO_TASKS[1]}/status").json()["status"]["runs"]
    assert [r["reasonCreated"] for r in runs] == ["scheduled", "rerun"] and runs[0]["state"] == "failed"
    names = [a["name"] for p in _all_pages(queue, f"task/{DEMO_TASKS[1]}/runs/0/artifacts") for a in p["artifacts"]]
    expired = [n for n in names if _get(queue, f"task/{DEMO_TASKS[1]}/runs/0/artifacts/{n}").status_code == 410]
    assert expired == ["public/test_info/profile.json"]


@pytest.mark.parametrize("name,status", [("public/s3.txt", 303), ("public/object.bin", 303), ("public/ref.txt", 303),
                                         ("public/error.txt", 424), ("public/expired.txt", 410),
                                         ("public/unfinished.txt", 404)])
def test_get_artifact_answers_follow_the_schema(queue, validator_for, name, status):
    reply = _get(queue, f"task/sChEmAtAQaC0000000001A/runs/0/artifacts/{name}")
    assert reply.status_code == status, reply.text
    if status == 303:
        body = reply.json()
        validator_for("get-artifact-response.json").validate(body)
        assert body["url"] == reply.headers["location"]
        assert body["storageType"] == reply.headers["x-taskcluster-artifact-storage-type"]


def test_the_validator_catches_a_drifting_fake(queue, validator_for):
    """The check can fail: an answer missing a required field, or with a null time, is refused."""
    status = _get(queue, f"task/{DEMO_TASKS[0]}/status").json()
    validator = validator_for("task-status-response.json")
    del status["status"]["taskQueueId"]
    assert not validator.is_valid(status)
    status = _get(queue, f"task/{DEMO_TASKS[0]}/status").json()
    status["status"]["runs"][0]["resolved"] = None
    assert not validator.is_valid(status)
    listing = _get(queue, f"task/{DEMO_TASKS[0]}/runs/0/artifacts").json()
    listing["artifacts"][0]["expires"] = "yesterday"
    assert not validator_for("list-artifacts-response.json").is_valid(listing)


@pytest.mark.parametrize("name,storage_type", [("public/object.bin", "object"), ("public/s3.txt", "s3"),
                                               ("public/error.txt", "error"), ("public/ref.txt", "reference"),
                                               ("public/away.txt", "reference")])
def test_artifact_content_answers_follow_the_schema(queue, validator_for, name, storage_type):
    reply = _content(queue, name)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    validator_for("artifact-content-response.json").validate(body)
    assert body["storageType"] == storage_type


@pytest.mark.parametrize("name,target", [("public/link-to-s3.txt", "public/s3.txt"),
                                         ("public/link-to-link-to-s3.txt", "public/s3.txt"),
                                         ("public/link-to-away.txt", "public/away.txt"),
                                         ("public/link-to-error.txt", "public/error.txt")])
def test_artifact_content_follows_links_to_the_target(queue, validator_for, name, target):
    """A link is answered as the artifact it leads to (never as storageType `link`, which the
    schema does not allow): the same answer as asking for the target by name."""
    body = _content(queue, name).json()
    validator_for("artifact-content-response.json").validate(body)
    assert body["storageType"] != "link"
    direct = _content(queue, target).json()
    if body["storageType"] == "s3":  # presigned afresh: the same object, so the same bytes
        assert httpx.get(body["url"], timeout=5).content == httpx.get(direct["url"], timeout=5).content == b"s3\n"
    else:
        assert body == direct


def test_artifact_content_of_a_link_to_an_object_names_the_target_object(queue, validator_for):
    body = _content(queue, "public/link-to-object.bin").json()
    validator_for("artifact-content-response.json").validate(body)
    assert body["storageType"] == "object"
    assert body["name"] == "t/sChEmAtAQaC0000000001A/0/public/object.bin"
    assert queue.queue.objects[body["name"]].data == b"object\n"


def test_artifact_content_of_a_reference_is_its_own_url(queue, validator_for):
    body = _content(queue, "public/away.txt").json()
    validator_for("artifact-content-response.json").validate(body)
    assert body == {"storageType": "reference", "url": ELSEWHERE}
    # getArtifact redirects to the same URL
    assert _get(queue, "task/sChEmAtAQaC0000000001A/runs/0/artifacts/public/away.txt").headers["location"] == ELSEWHERE


@pytest.mark.parametrize("name,status,code", [
    ("public/unfinished.txt", 404, "ResourceNotFound"), ("public/link-to-unfinished.txt", 404, "ResourceNotFound"),
    ("public/expired.txt", 410, "ResourceExpired"), ("public/link-to-expired.txt", 410, "ResourceExpired"),
    ("public/no-such.txt", 404, "ResourceNotFound"), ("public/cycle-a", 400, "InputError"),
    ("public/private-target.txt", 403, "InsufficientScopes")])
def test_artifact_content_refuses_as_the_queue_does(queue, name, status, code):
    """Uploads never finished are 404, expired ones 410 (also at the end of a link), a link
    cycle 400, a link to a non-public artifact needs credentials; getArtifact answers alike."""
    for path in (f"task/sChEmAtAQaC0000000001A/runs/0/artifact-content/{name}",
                 f"task/sChEmAtAQaC0000000001A/runs/0/artifacts/{name}"):
        reply = _get(queue, path)
        assert (reply.status_code, reply.json().get("code")) == (status, code), (path, reply.text)


def test_latest_artifact_content_answers_for_the_last_run(queue, validator_for):
    validator = validator_for("artifact-content-response.json")
    latest = _content(queue, "public/which-run.txt", run="")
    assert latest.status_code == 200, latest.text
    validator.validate(latest.json())
    assert httpx.get(latest.json()["url"], timeout=5).content == b"run 1\n"
    assert httpx.get(_content(queue, "public/which-run.txt").json()["url"], timeout=5).content == b"run 0\n"
    live = _content(queue, "public/logs/live.log", run="").json()  # a running task's live log
    validator.validate(live)
    assert live["storageType"] == "reference" and live["url"].startswith(f"{queue.livelog_url}/log/")
    assert _content(queue, "public/s3.txt", run="").status_code == 404  # only run 0 has it
    assert _get(queue, "task/nOsUcHtAsK000000000000/artifact-content/public/s3.txt").status_code == 404


def test_the_validator_refuses_a_link_answer(validator_for):
    """The check on links can fail: a `link` answer, or a reference without its URL, is refused."""
    validator = validator_for("artifact-content-response.json")
    assert not validator.is_valid({"storageType": "link", "url": "https://example.com/x"})
    assert not validator.is_valid({"storageType": "reference"})
    assert validator.is_valid({"storageType": "reference", "url": ELSEWHERE})


# The object service's startDownload answer for the `getUrl` method, written from its
# documentation (services/object/schemas/v1/download-method-geturl.yml and hashes.yml): the
# repo has no copy of the object service's schemas.
GET_URL_ANSWER = {
    "type": "object", "additionalProperties": False, "required": ["method", "url", "expires", "hashes"],
    "properties": {
        "method": {"const": "getUrl"}, "url": {"type": "string", "format": "uri"}, "expires": _TIME,
        "hashes": {"type": "object", "additionalProperties": True, "properties": {
            "sha256": {"type": "string", "pattern": "^[a-z0-9]{64}$"},
            "sha512": {"type": "string", "pattern": "^[a-z0-9]{128}$"}}}}}


def test_start_download_answers_the_getUrl_method_with_hashes(queue):
    content = _get(queue, "task/sChEmAtAQaC0000000001A/runs/0/artifact-content/public/object.bin").json()
    creds = content["credentials"]
    url = f"{queue.api_url}/api/object/v1/start-download/{urllib.parse.quote(content['name'], safe='')}"
    body = b'{"acceptDownloadMethods":{"getUrl":true}}'

    def put(ext: str | None) -> httpx.Response:
        sender = mohawk.Sender({"id": creds["clientId"], "key": creds["accessToken"], "algorithm": "sha256"},
                               url, "PUT", content="", content_type="", always_hash_content=False, ext=ext)
        return httpx.put(url, content=body, headers={"Authorization": sender.request_header,
                                                     "Content-Type": "application/json"}, timeout=5)

    ext = base64.b64encode(json.dumps({"certificate": json.loads(creds["certificate"])}).encode()).decode()
    assert put(None).status_code == 401  # temporary credentials need their certificate
    reply = put(ext)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    jsonschema.Draft7Validator(GET_URL_ANSWER, format_checker=_FORMATS).validate(answer)
    assert answer["hashes"]["sha256"] == hashlib.sha256(b"object\n").hexdigest()
    assert not jsonschema.Draft7Validator(GET_URL_ANSWER).is_valid({**answer, "hashes": {"sha256": "xyz"}})
