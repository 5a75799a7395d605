"""The fake CircleCI API v2 on the API host, as documented (pages of `items` with
`next_page_token`, a deliberately small page size so clients must follow it):

    GET /api/v2/project/{slug}/{job-number}/artifacts
    GET /api/v2/project/{slug}/job/{job-number}
    GET /api/v2/project/{slug}/pipeline/{pipeline-number}
    GET /api/v2/pipeline/{pipeline-id}/workflow
    GET /api/v2/workflow/{workflow-id}/job

A slug is `gh/<user>/<project>`, `bb/<user>/<project>` or `circleci/<org-id>/<project-id>`
(projects of the GitHub App and GitLab integrations). v1.1 builds are v2 jobs: the same
FakeBuild objects, job number = build number.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import uuid
from typing import TYPE_CHECKING, Any

from ciartfs.fakeserver.reply import Reply

if TYPE_CHECKING:
    from ciartfs.fakeserver.model import FakeBuild, FakeProject
    from ciartfs.fakeserver.server import FakeCI

SLUG_PREFIX = {"gh": "github", "bb": "bitbucket", "github": "github", "bitbucket": "bitbucket", "circleci": "circleci"}
_ids = itertools.count(1)
PAGE_SIZE = 2


def _uuid() -> str:
    return str(uuid.UUID(int=next(_ids)))


@dataclasses.dataclass(eq=False)
class FakeWorkflow:
    name: str
    jobs: list[int]  # job (build) numbers
    status: str = "success"
    id: str = dataclasses.field(default_factory=_uuid)
    created_at: str = "2026-11-01T09:50:00.000Z"
    stopped_at: str | None = "2026-11-01T10:00:00.000Z"


@dataclasses.dataclass(eq=False)
class FakePipeline:
    number: int
    branch: str = "main"
    state: str = "created"
    workflows: list[FakeWorkflow] = dataclasses.field(default_factory=list)
    id: str = dataclasses.field(default_factory=_uuid)
    created_at: str = "2026-11-01T09:49:00.000Z"

    def add_workflow(self, name: str, jobs: list[int], **kw: Any) -> FakeWorkflow:
        workflow = FakeWorkflow(name, jobs, **kw)
        self.workflows.append(workflow)
        return workflow


def _page(items: list[Any], query: dict[str, str]) -> dict[str, Any]:
    token = query.get("page-token")
    try:
        start = int(base64.urlsafe_b64decode(token.encode())) if token else 0
    except ValueError:
        raise Reply(400, {"message": "bad page-token"}) from None
    end = start + PAGE_SIZE
    more = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return {"items": items[start:end], "next_page_token": more}


class FakeV2:
    def __init__(self, fake: FakeCI) -> None:
        self.fake = fake
        self.pipelines: dict[tuple[str, str, str], list[FakePipeline]] = {}

    def add_pipeline(self, project: FakeProject, number: int, **kw: Any) -> FakePipeline:
        pipeline = FakePipeline(number, **kw)
        self.pipelines.setdefault((project.vcs_type, project.username, project.reponame), []).append(pipeline)
        return pipeline

    def _all_pipelines(self) -> list[tuple[tuple[str, str, str], FakePipeline]]:
        return [(k, p) for k, ps in self.pipelines.items() for p in ps]

    def handle(self, parts: list[str], query: dict[str, str], token: str | None) -> None:
        """parts: the path split after /api/v2/ (already unquoted)."""
        if len(parts) >= 4 and parts[0] == "project":
            vcs = SLUG_PREFIX.get(parts[1])
            if vcs is None or len(parts) < 5:
                raise Reply(404, {"message": "Project not found"})
            project = self.fake._project(vcs, parts[2], parts[3], token)
            rest = parts[4:]
            if len(rest) == 2 and rest[0].isdigit() and rest[1] == "artifacts":
                build = self._build(project, int(rest[0]))
                items = [{"path": a.path, "node_index": a.node_index, "url": self.fake.artifact_url(project, build, a)}
                         for a in build.artifacts]
                raise Reply(200, _page(items, query))
            if len(rest) == 2 and rest[0] == "job" and rest[1].isdigit():
                raise Reply(200, self._job(self._build(project, int(rest[1]))))
            if len(rest) == 2 and rest[0] == "pipeline" and rest[1].isdigit():
                for p in self.pipelines.get((vcs, parts[2], parts[3]), []):
                    if p.number == int(rest[1]):
                        raise Reply(200, self._pipeline(p))
                raise Reply(404, {"message": "Pipeline not found"})
        if len(parts) == 3 and parts[0] == "pipeline" and parts[2] == "workflow":
            for key, p in self._all_pipelines():
                if p.id == parts[1]:
                    self.fake._project(*key, token)
                    raise Reply(200, _page([self._workflow(p, w) for w in p.workflows], query))
            raise Reply(404, {"message": "Pipeline not found"})
        if len(parts) == 3 and parts[0] == "workflow" and parts[2] == "job":
            for key, p in self._all_pipelines():
                for w in p.workflows:
                    if w.id == parts[1]:
                        project = self.fake._project(*key, token)
                        jobs = [self._job(project.builds[n], short=True) for n in w.jobs if n in project.builds]
                        raise Reply(200, _page(jobs, query))
            raise Reply(404, {"message": "Workflow not found"})
        raise Reply(404, {"message": "Not found"})

    @staticmethod
    def _build(project: FakeProject, number: int) -> FakeBuild:
        build = project.builds.get(number)
        if build is None:
            raise Reply(404, {"message": "Job not found"})
        return build

    @staticmethod
    def _job(build: FakeBuild, short: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "job_number": build.build_num, "name": build.subject or f"job-{build.build_num}",
            "status": build.status if build.lifecycle == "finished" else "running",
            "started_at": build.start_time, "stopped_at": build.stop_time, "id": _uuid(), "type": "build",
        }
        if not short:
            doc["number"] = doc.pop("job_number")
        return doc

    @staticmethod
    def _pipeline(p: FakePipeline) -> dict[str, Any]:
        return {"id": p.id, "number": p.number, "state": p.state, "created_at": p.created_at,
                "vcs": {"branch": p.branch, "revision": f"{p.number:040x}"}}

    @staticmethod
    def _workflow(p: FakePipeline, w: FakeWorkflow) -> dict[str, Any]:
        return {"id": w.id, "name": w.name, "status": w.status, "created_at": w.created_at,
                "stopped_at": w.stopped_at, "pipeline_id": p.id, "pipeline_number": p.number}
