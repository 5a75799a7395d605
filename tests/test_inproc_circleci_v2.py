"""Tier 2: CircleCI API v2 in-process (tests/inproc.py): workflow listings across TTLs."""

from __future__ import annotations

import json

from ciartfs.fakeserver.v2 import FakeJob
from conftest import TOKEN
from datasets import v2_dataset


def _api_requests(fake, suffix: str) -> int:
    """How many times a listing was asked for (its first page)."""
    return len([r for r in fake.requests if r.server == "api" and r.path.endswith(suffix) and "page-token" not in r.query])


async def test_waiting_workflow_lists_its_started_jobs_and_is_refreshed(fake, inproc, clock, caplog):
    """A workflow on hold: one job ran, one is queued and one blocked (neither has a
    job_number yet), an approval job waits. Its listing shows every job; the ones without
    artifacts are empty directories that say why; after --latest-ttl it is asked again."""
    v2 = v2_dataset(fake)
    gh = v2.projects["github", "acme", "api"]
    pipeline = v2.v2.add_pipeline(gh, 8)
    waiting = pipeline.add_workflow("release", [10, FakeJob("integration", "queued"), FakeJob("hold", "on_hold", type="approval"),
                                                FakeJob("deploy", "blocked")], status="on_hold", stopped_at=None)
    fs = inproc(latest_ttl=60, circleci_token=TOKEN)
    release = "github/acme/api/pipeline/8/release"
    assert await fs.listdir(release) == ["build", "deploy", "hold", "integration"]
    assert await fs.read_file(f"{release}/build/0/report.txt") == b"job 10 (build)\n"
    for name, why in [("deploy", "has not started (status blocked)"), ("integration", "has not started (status queued)"),
                      ("hold", "an approval job")]:
        assert await fs.listdir(f"{release}/{name}") == []
        assert why in (await fs.getxattr(f"{release}/{name}", "user.ciartfs.empty")).decode()
        job = json.loads(await fs.getxattr(f"{release}/{name}", "user.ciartfs.job"))
        assert job["number"] is None and job["name"] == name
    assert json.loads(await fs.getxattr(f"{release}/build", "user.ciartfs.job"))["number"] == 10
    assert not [r for r in v2.requests if "/job/" in r.path and not r.path.startswith("/api/v2/workflow/")]
    # the approval is given, deploy runs as job 15: the running workflow is asked again after its TTL
    deploy = gh.add_build(build_num=15, subject="deploy")
    deploy.add_artifact("deployed.txt", b"deployed\n")
    waiting.jobs = [10, FakeJob("integration", "success", number=None), FakeJob("hold", "success", type="approval"), 15]
    waiting.status, waiting.stopped_at = "success", "2026-11-01T10:30:00.000Z"
    assert await fs.listdir(f"{release}/deploy") == [], "asked again within the TTL"
    fs.advance(61)
    assert await fs.listdir(f"{release}/deploy") == ["0"], "a waiting workflow was not re-listed"
    assert await fs.read_file(f"{release}/deploy/0/deployed.txt") == b"deployed\n"
    assert "Traceback" not in caplog.text and not fs.ops.errors


async def test_finished_workflow_with_retried_jobs_is_kept(fake, inproc, clock):
    """`retried` is terminal: a finished workflow with a retried job, and that job's artifact
    list, are fetched once, not again after --latest-ttl."""
    v2 = v2_dataset(fake)
    gh = v2.projects["github", "acme", "api"]
    pipeline = v2.v2.add_pipeline(gh, 9)
    flaky = pipeline.add_workflow("flaky", [FakeJob("test", "retried", number=11), 13], status="success")
    fs = inproc(latest_ttl=60, circleci_token=TOKEN)
    wf = "github/acme/api/pipeline/9/flaky"
    assert await fs.listdir(wf) == ["test", "test~2"]  # the retried run keeps the name, its rerun ~2
    assert await fs.read_file(f"{wf}/test/0/report.txt") == b"job 11 (test)\n"
    assert await fs.read_file(f"{wf}/test~2/0/report.txt") == b"job 13 (test)\n"
    before = (_api_requests(v2, f"/workflow/{flaky.id}/job"), _api_requests(v2, "/11/artifacts"))
    assert before == (1, 1)
    for _ in range(3):
        fs.advance(3600)
        assert await fs.listdir(wf) == ["test", "test~2"]
        assert await fs.listdir(f"{wf}/test/0") == ["coverage", "report.txt"]
    assert (_api_requests(v2, f"/workflow/{flaky.id}/job"), _api_requests(v2, "/11/artifacts")) == before
