"""The fake CircleCI v2 server against the real API's OpenAPI definition
(tests/specs/circleci/v2-openapi.json): every answer of every v2 endpoint ciartfs uses
validates against the spec's response schema, so a fake that drifts from the spec fails CI.

OpenAPI 3.0 schemas are JSON Schema (draft 4/5) plus a few keywords; `spec_validator` turns
them into plain JSON Schema: `nullable` / `x-nullable` allow null, and `$ref`s to
`#/components/...` resolve within the spec document (a `referencing` registry holding it).
It is also stricter than the spec in one way: an object schema that names its properties
accepts no others, so a field the fake invents (or misspells) fails too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema

from ciartfs.fakeserver import FakeCI, demo_dataset
from ciartfs.fakeserver.v2 import FakeJob
from ciartfs.providers.circleci import v2 as circleci_v2
from conftest import SPECS_DIR, TOKEN

SPEC_PATH = SPECS_DIR / "circleci/v2-openapi.json" if (SPECS_DIR / "circleci/v2-openapi.json").is_file() else None
SPEC_URI = "urn:circleci-v2-openapi"
# Where the real service is known to answer outside its own spec, and the fake does as it
# does (each one a JSON pointer into the spec, and why):
KNOWN_DEVIATIONS = {
    # a job that has not started (blocked, queued, an approval on hold) has "started_at": null
    "/paths/~1workflow~1{id}~1job/get/responses/200/content/application~1json/schema/properties/items/items/properties/started_at",
    "/paths/~1project~1{project-slug}~1job~1{job-number}/get/responses/200/content/application~1json/schema/properties/started_at",
}
# The v2 endpoints ciartfs uses (and the fake answers), as the spec names them.
ENDPOINTS = ("/project/{project-slug}", "/project/{project-slug}/pipeline/{pipeline-number}",
             "/pipeline/{pipeline-id}/workflow", "/workflow/{id}/job", "/project/{project-slug}/job/{job-number}",
             "/project/{project-slug}/{job-number}/artifacts")


def _pointer(path: str) -> str:
    return "/paths/" + path.replace("~", "~0").replace("/", "~1") + "/get/responses/200/content/application~1json/schema"


def _as_json_schema(node: Any, pointer: str = "") -> Any:
    """The spec document with OpenAPI's schema keywords turned into JSON Schema (module doc)."""
    if isinstance(node, list):
        return [_as_json_schema(item, f"{pointer}/{i}") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {k: _as_json_schema(v, f"{pointer}/{k.replace('~', '~0').replace('/', '~1')}") for k, v in node.items()}
    nullable = out.pop("nullable", False) or out.pop("x-nullable", False) or pointer in KNOWN_DEVIATIONS
    if nullable and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def spec_validator(path: str, document: dict[str, Any]) -> jsonschema.Draft4Validator:
    """A validator of the 200 answer of GET `path` (as the spec names it)."""
    resource = referencing.Resource.from_contents(_as_json_schema(document),
                                                  default_specification=referencing.jsonschema.DRAFT4)
    registry = referencing.Registry().with_resource(SPEC_URI, resource)
    return jsonschema.Draft4Validator({"$ref": SPEC_URI + "#" + _pointer(path)}, registry=registry)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if SPEC_PATH is None:
        pytest.fail(f"the CircleCI v2 OpenAPI spec is not in {SPECS_DIR} (set CIARTFS_SPECS)")
    return json.loads(SPEC_PATH.read_text())


@pytest.fixture
def rich(fake: FakeCI) -> FakeCI:
    """The demo data, a v2-only project, and a finished workflow with a retried job."""
    demo_dataset(fake)
    only = fake.add_project("circleci", "6f0b5b0e-org", "a1b2c3-proj")
    only.add_build(build_num=42, subject="build").add_artifact("out/a.txt", b"a\n", node_index=1)
    api = fake.projects["github", "acme", "api"]
    pipeline = fake.v2.add_pipeline(api, 9)
    pipeline.add_workflow("flaky", [FakeJob("test", "retried", number=8), 9, FakeJob("skipped", "not_run")],
                          status="success")
    return fake


def _get(fake: FakeCI, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{fake.api_url}/api/v2/{path}", params=params, headers={"Circle-Token": TOKEN}, timeout=10)


def _pages(fake: FakeCI, path: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        resp = _get(fake, path, **({"page-token": token} if token else {}))
        assert resp.status_code == 200, (path, resp.text)
        doc = resp.json()
        yield doc
        token = doc["next_page_token"]
        if token is None:
            return


def _answers(fake: FakeCI) -> Iterator[tuple[str, Any]]:
    """(spec path, answer) for every v2 answer the fake gives about its data."""
    for (vcs, user, name), project in fake.projects.items():
        slug = f"{ {'github': 'gh', 'bitbucket': 'bb'}.get(vcs, vcs)}/{user}/{name}"
        resp = _get(fake, f"project/{slug}")
        assert resp.status_code == 200, resp.text
        yield "/project/{project-slug}", resp.json()
        for number in project.builds:
            resp = _get(fake, f"project/{slug}/job/{number}")
            assert resp.status_code == 200, resp.text
            yield "/project/{project-slug}/job/{job-number}", resp.json()
            for doc in _pages(fake, f"project/{slug}/{number}/artifacts"):
                yield "/project/{project-slug}/{job-number}/artifacts", doc
        for pipeline in fake.v2.pipelines.get((vcs, user, name), []):
            resp = _get(fake, f"project/{slug}/pipeline/{pipeline.number}")
            assert resp.status_code == 200, resp.text
            yield "/project/{project-slug}/pipeline/{pipeline-number}", resp.json()
            for doc in _pages(fake, f"pipeline/{pipeline.id}/workflow"):
                yield "/pipeline/{pipeline-id}/workflow", doc
                for workflow in doc["items"]:
                    for jobs in _pages(fake, f"workflow/{workflow['id']}/job"):
                        yield "/workflow/{id}/job", jobs


def test_every_fake_answer_validates_against_the_spec(rich, spec):
    validators = {path: spec_validator(path, spec) for path in ENDPOINTS}
    seen: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
    problems = []
    job_kinds = set()
    for path, doc in _answers(rich):
        seen[path] += 1
        problems += [f"{path}: {e.json_path}: {e.message}" for e in validators[path].iter_errors(doc)]
        if path == "/workflow/{id}/job":
            job_kinds |= {(j["type"], j["status"], "job_number" in j) for j in doc["items"]}
    assert not problems, "\n".join(problems[:20])
    assert all(seen.values()), seen  # every endpoint was checked, and with data
    # the awkward cases were among them
    assert {("approval", "on_hold", False), ("build", "blocked", False), ("build", "queued", False),
            ("build", "retried", True)} <= job_kinds


def test_the_check_catches_drift(spec):
    """Each of these is a way the fake could drift; each must fail validation."""
    jobs = spec_validator("/workflow/{id}/job", spec)
    good = {"id": "00000000-0000-0000-0000-000000000001", "name": "build", "type": "build", "status": "blocked",
            "started_at": None, "stopped_at": None, "dependencies": [], "project_slug": "gh/acme/api"}
    jobs.validate({"items": [good], "next_page_token": None})
    for bad in ({**good, "status": "fixed"},  # a v1.1 status
                {k: v for k, v in good.items() if k != "project_slug"},  # a required field missing
                {**good, "number": 3},  # a field the spec does not have (job details' name for it)
                {**good, "type": "manual"}):
        with pytest.raises(jsonschema.ValidationError):
            jobs.validate({"items": [bad], "next_page_token": None})
    artifacts = spec_validator("/project/{project-slug}/{job-number}/artifacts", spec)
    with pytest.raises(jsonschema.ValidationError):
        artifacts.validate({"items": []})  # next_page_token is required, if null
    with pytest.raises(jsonschema.ValidationError):
        spec_validator("/pipeline/{pipeline-id}/workflow", spec).validate(
            {"items": [{"id": "x", "name": "ci", "status": "on_hold"}], "next_page_token": None})


def _enum(spec: dict[str, Any], path: str, *keys: str) -> set[str]:
    node = spec
    for part in _pointer(path).split("/")[1:]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    for key in keys:
        node = node[key]
    return set(node["enum"])


def test_terminal_statuses_cover_the_spec(spec):
    """Every status the spec names is either terminal (cached for good) or pending (asked
    again after the TTL): a status the provider does not classify would be a silent guess."""
    job_statuses = _enum(spec, "/workflow/{id}/job", "properties", "items", "items", "properties", "status")
    assert job_statuses == _enum(spec, "/project/{project-slug}/job/{job-number}", "properties", "status")
    assert job_statuses == circleci_v2.TERMINAL_JOB | circleci_v2.PENDING_JOB
    assert not circleci_v2.TERMINAL_JOB & circleci_v2.PENDING_JOB
    assert {"retried", "not_run", "canceled"} <= circleci_v2.TERMINAL_JOB
    assert {"blocked", "on_hold", "queued", "not_running"} <= circleci_v2.PENDING_JOB
    workflow_statuses = _enum(spec, "/pipeline/{pipeline-id}/workflow", "properties", "items", "items", "properties", "status")
    assert workflow_statuses == circleci_v2.TERMINAL_WORKFLOW | circleci_v2.PENDING_WORKFLOW
    assert not circleci_v2.TERMINAL_WORKFLOW & circleci_v2.PENDING_WORKFLOW
    assert {"on_hold", "running", "failing"} == circleci_v2.PENDING_WORKFLOW


def test_the_fake_refuses_anonymous_callers_where_circleci_does(rich):
    """401 without a token on the v2 artifact and workflow endpoints, public projects too;
    a private project is 404 "Project not found" in text/plain."""
    pipeline = rich.v2.pipelines["github", "acme", "api"][0]
    workflow = pipeline.workflows[0]
    for path in ("project/gh/acme/api/2/artifacts", f"pipeline/{pipeline.id}/workflow", f"workflow/{workflow.id}/job"):
        resp = httpx.get(f"{rich.api_url}/api/v2/{path}", timeout=10)
        assert resp.status_code == 401, path
        assert _get(rich, path).status_code == 200, path
    assert httpx.get(f"{rich.api_url}/api/v2/project/gh/acme/api/job/2", timeout=10).status_code == 200
    private = httpx.get(f"{rich.api_url}/api/v2/project/gh/acme/secret/job/1", timeout=10)
    assert private.status_code == 404 and private.text == "Project not found"
    assert private.headers["content-type"].startswith("text/plain")
    assert _get(rich, "project/gh/acme/secret/job/1").status_code == 200
