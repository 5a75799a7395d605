"""The fake CircleCI API v2 on the API host, as documented (pages of `items` with
`next_page_token`, a deliberately small page size so clients must follow it):

    GET /api/v2/project/{slug}/{job-number}/artifacts
    GET /api/v2/project/{slug}/job/{job-number}
    GET /api/v2/project/{slug}/pipeline/{pipeline-number}
    GET /api/v2/pipeline/{pipeline-id}/workflow
    GET /api/v2/workflow/{workflow-id}/job

    GET /api/v2/project/{slug}

A slug is `gh/<user>/<project>`, `bb/<user>/<project>` or `circleci/<org-id>/<project-id>`
(projects of the GitHub App and GitLab integrations). v1.1 builds are v2 jobs: the same
FakeBuild objects, job number = build number. A workflow's jobs are build numbers or
`FakeJob`s: jobs with no build behind them (not started: no `job_number`; approval jobs,
whose job details answer 404), or a build shown with another status (`retried`).

Answers follow the OpenAPI spec (tests/t1_v2_spec.py validates them), and the service's
habits the spec does not state: the artifact and workflow endpoints answer 401 without a
token even for public projects; a private project without a token is 404 "Project not
found" in text/plain; an unstarted job's `started_at` is null.

`routes(fake)` mounts it at /api/v2 on the API host; tokens, Faults.malformed_json and
Faults.hostile_json work as for v1.1 (circleci_v1.checked_token, circleci_v1.path_faults).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import urllib.parse
import uuid
from typing import TYPE_CHECKING, Any

from ciartfs.fakeserver.circleci_v1 import artifact_url, checked_token, path_faults, project_of
from ciartfs.fakeserver.routing import Reply, Request, Route

if TYPE_CHECKING:
    from ciartfs.fakeserver.model import FakeBuild, FakeProject
    from ciartfs.fakeserver.server import FakeCI

SLUG_PREFIX = {"gh": "github", "bb": "bitbucket", "github": "github", "bitbucket": "bitbucket", "circleci": "circleci"}
_ids = itertools.count(1)
PAGE_SIZE = 2  # FakeV2.page_size's default: small, so that clients must follow next_page_token


def _uuid() -> str:
    return str(uuid.UUID(int=next(_ids)))


@dataclasses.dataclass(eq=False)
class FakeJob:
    """A workflow job that is not (or not only) a build: see the module doc."""

    name: str
    status: str  # the spec's job status enum: "blocked", "on_hold", "retried", ...
    type: str = "build"  # or "approval"
    number: int | None = None  # a build number, or None for a job that has not started
    id: str = dataclasses.field(default_factory=lambda: _uuid())


@dataclasses.dataclass(eq=False)
class FakeWorkflow:
    name: str
    jobs: list[int | FakeJob]  # job (build) numbers, or jobs of their own
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

    def add_workflow(self, name: str, jobs: list[int | FakeJob], **kw: Any) -> FakeWorkflow:
        workflow = FakeWorkflow(name, jobs, **kw)
        self.workflows.append(workflow)
        return workflow


# v1.1 build statuses that the v2 job status enum names otherwise
_V2_STATUS = {"fixed": "success", "no_tests": "success", "not_running": "not_running", "queued": "queued",
              "scheduled": "queued", "running": "running", "retried": "retried", "canceled": "canceled",
              "infrastructure_fail": "infrastructure_fail", "timedout": "timedout", "not_run": "not_run",
              "failed": "failed", "success": "success"}
_SLUG_OF_VCS = {"github": "gh", "bitbucket": "bb", "circleci": "circleci"}
_USER_ID = "00000000-0000-4000-8000-0000000000aa"  # who started every workflow


def _page(items: list[Any], query: dict[str, str], page_size: int, shown: Any = None) -> dict[str, Any]:
    """One page of `items`, each made into its JSON by `shown` (only those on the page)."""
    token = query.get("page-token")
    try:
        start = int(base64.urlsafe_b64decode(token.encode())) if token else 0
    except ValueError:
        raise Reply(400, {"message": "bad page-token"}) from None
    end = start + page_size
    more = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    page = items[start:end]
    return {"items": page if shown is None else [shown(item) for item in page], "next_page_token": more}


def routes(fake: FakeCI) -> list[Route]:
    return [Route("api", "/api/v2", fake.v2.handle_request)]


class FakeV2:
    def __init__(self, fake: FakeCI) -> None:
        self.fake = fake
        self.pipelines: dict[tuple[str, str, str], list[FakePipeline]] = {}
        self.page_size = PAGE_SIZE

    def add_pipeline(self, project: FakeProject, number: int, **kw: Any) -> FakePipeline:
        pipeline = FakePipeline(number, **kw)
        self.pipelines.setdefault((project.vcs_type, project.username, project.reponame), []).append(pipeline)
        return pipeline

    def _all_pipelines(self) -> list[tuple[tuple[str, str, str], FakePipeline]]:
        return [(k, p) for k, ps in self.pipelines.items() for p in ps]

    def handle_request(self, request: Request) -> None:
        if request.method != "GET":
            raise Reply(405, {"message": "method not allowed"})
        token = checked_token(self.fake, request)
        path_faults(self.fake, request)
        segments = [urllib.parse.unquote(s) for s in request.raw_path.split("/")]
        if segments[:3] != ["", "api", "v2"]:
            return  # "/api/v2x...": not v2's
        self.handle(segments[3:], request.query, token)

    def handle(self, parts: list[str], query: dict[str, str], token: str | None) -> None:
        """parts: the path split after /api/v2/ (already unquoted)."""
        if len(parts) >= 4 and parts[0] == "project":
            vcs = SLUG_PREFIX.get(parts[1])
            if vcs is None:
                raise Reply(404, {"message": "Project not found"})
            rest = parts[4:]
            if len(rest) == 2 and rest[0].isdigit() and rest[1] == "artifacts":
                _need_token(token)
                project = self._project(vcs, parts[2], parts[3], token)
                build = self._build(project, int(rest[0]))
                raise Reply(200, _page(build.artifacts, query, self.page_size, lambda a: {
                    "path": a.path, "node_index": a.node_index, "url": artifact_url(self.fake, project, build, a)}))
            project = self._project(vcs, parts[2], parts[3], token)
            if not rest:
                raise Reply(200, self._project_doc(project))
            if len(rest) == 2 and rest[0] == "job" and rest[1].isdigit():
                raise Reply(200, self._job_details(project, self._build(project, int(rest[1]))))
            if len(rest) == 2 and rest[0] == "pipeline" and rest[1].isdigit():
                for p in self.pipelines.get((vcs, parts[2], parts[3]), []):
                    if p.number == int(rest[1]):
                        raise Reply(200, self._pipeline(project, p))
                raise Reply(404, {"message": "Pipeline not found"})
        if len(parts) == 3 and parts[0] == "pipeline" and parts[2] == "workflow":
            _need_token(token)
            for key, p in self._all_pipelines():
                if p.id == parts[1]:
                    project = self._project(*key, token)
                    raise Reply(200, _page([self._workflow(project, p, w) for w in p.workflows], query, self.page_size))
            raise Reply(404, {"message": "Pipeline not found"})
        if len(parts) == 3 and parts[0] == "workflow" and parts[2] == "job":
            _need_token(token)
            for key, p in self._all_pipelines():
                for w in p.workflows:
                    if w.id == parts[1]:
                        project = self._project(*key, token)
                        raise Reply(200, _page(self._workflow_jobs(project, w), query, self.page_size))
            raise Reply(404, {"message": "Workflow not found"})
        raise Reply(404, {"message": "Not found"})

    def _project(self, vcs: str, user: str, name: str, token: str | None) -> FakeProject:
        """As v1.1's, but the 404 is text/plain, as circleci.com's v2 answers it."""
        try:
            return project_of(self.fake, vcs, user, name, token)
        except Reply as reply:
            if reply.status == 404:
                raise Reply(404, b"Project not found", content_type="text/plain") from None
            raise

    def _where(self, build: FakeBuild) -> tuple[FakePipeline, FakeWorkflow] | None:
        for _, p in self._all_pipelines():
            for w in p.workflows:
                if any((j if isinstance(j, int) else j.number) == build.build_num for j in w.jobs):
                    return p, w
        return None

    def _workflow_jobs(self, project: FakeProject, w: FakeWorkflow) -> list[dict[str, Any]]:
        out = []
        for job in w.jobs:
            number = job if isinstance(job, int) else job.number
            build = project.builds.get(number) if number is not None else None
            if isinstance(job, FakeJob):
                doc: dict[str, Any] = {"id": job.id, "name": job.name, "type": job.type, "status": job.status}
            elif build is None:
                continue
            else:
                doc = {"id": _job_id(build), "name": _job_name(build), "type": "build", "status": _status(build)}
            doc |= {
                "started_at": build.start_time if build else None,
                "stopped_at": build.stop_time if build else None,
                "dependencies": [], "project_slug": _slug(project)}
            if number is not None:
                doc["job_number"] = number
            if doc["type"] == "approval":
                doc["approval_request_id"] = doc["id"]
            out.append(doc)
        return out

    def _job_details(self, project: FakeProject, build: FakeBuild) -> dict[str, Any]:
        where = self._where(build)
        pipeline_id, workflow = (where[0].id, where[1]) if where else (_uuid(), None)
        status = _status(build)
        nodes = sorted({a.node_index for a in build.artifacts}) or [0]
        return {
            "number": build.build_num, "name": _job_name(build), "status": status,
            "started_at": build.start_time, "stopped_at": build.stop_time,
            "created_at": build.queued_at or build.start_time, "queued_at": build.queued_at or build.start_time,
            "duration": 300000 if build.stop_time else None,
            "executor": {"resource_class": "medium", "type": "docker"},
            "project": {"id": _project_id(project), "slug": _slug(project), "name": project.reponame,
                        "external_url": f"https://github.com/{project.username}/{project.reponame}"},
            "organization": {"name": project.username}, "contexts": [],
            "web_url": f"https://app.circleci.com/pipelines/{_slug(project)}/jobs/{build.build_num}",
            "parallel_runs": [{"index": n, "status": status} for n in nodes], "parallelism": len(nodes),
            "latest_workflow": {"id": workflow.id if workflow else _uuid(), "name": workflow.name if workflow else "workflow"},
            "pipeline": {"id": pipeline_id}, "messages": [],
        }

    @staticmethod
    def _build(project: FakeProject, number: int) -> FakeBuild:
        build = project.builds.get(number)
        if build is None:
            raise Reply(404, {"message": "Job not found"})
        return build

    @staticmethod
    def _project_doc(project: FakeProject) -> dict[str, Any]:
        return {"slug": _slug(project), "name": project.reponame, "id": _project_id(project),
                "organization_name": project.username, "organization_slug": f"{_slug(project).rsplit('/', 1)[0]}",
                "organization_id": str(uuid.uuid5(uuid.NAMESPACE_URL, project.username)),
                "vcs_info": {"vcs_url": f"https://github.com/{project.username}/{project.reponame}",
                             "provider": {"github": "GitHub", "bitbucket": "Bitbucket"}.get(project.vcs_type, "CircleCI"),
                             "default_branch": "main"}}

    @staticmethod
    def _pipeline(project: FakeProject, p: FakePipeline) -> dict[str, Any]:
        repo = f"https://github.com/{project.username}/{project.reponame}"
        return {"id": p.id, "number": p.number, "state": p.state, "created_at": p.created_at, "updated_at": p.created_at,
                "project_slug": _slug(project), "errors": [],
                "trigger": {"type": "webhook", "received_at": p.created_at, "actor": {"login": "dev", "avatar_url": None}},
                "vcs": {"provider_name": "GitHub", "origin_repository_url": repo, "target_repository_url": repo,
                        "branch": p.branch, "revision": f"{p.number:040x}"}}

    @staticmethod
    def _workflow(project: FakeProject, p: FakePipeline, w: FakeWorkflow) -> dict[str, Any]:
        return {"id": w.id, "name": w.name, "status": w.status, "created_at": w.created_at,
                "stopped_at": w.stopped_at, "pipeline_id": p.id, "pipeline_number": p.number,
                "project_slug": _slug(project), "started_by": _USER_ID}


def _need_token(token: str | None) -> None:
    """circleci.com's v2 artifact and workflow endpoints refuse anonymous callers, public
    projects included."""
    if token is None:
        raise Reply(401, {"message": "You must log in first."})


def _slug(project: FakeProject) -> str:
    return f"{_SLUG_OF_VCS.get(project.vcs_type, project.vcs_type)}/{project.username}/{project.reponame}"


def _project_id(project: FakeProject) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, _slug(project)))


def _job_id(build: FakeBuild) -> str:
    return str(uuid.UUID(int=(1 << 64) + build.build_num))


def _job_name(build: FakeBuild) -> str:
    return build.subject or f"job-{build.build_num}"


def _status(build: FakeBuild) -> str:
    """The build's state in the v2 job status enum."""
    if build.lifecycle != "finished":
        return _V2_STATUS.get(build.lifecycle, "running")
    return _V2_STATUS.get(build.status, "failed")
