"""CircleCI API v2: jobs of v2-only projects, and the workflow view of any project.

    circleci/<org-id>/<project-id>/<job-number>/<node>/<path>         (GitHub App / GitLab projects)
    <vcs>/<user>/<project>/pipeline/<number>/<workflow>/<job>/<node>/<path>

Names from the API (workflow and job names) become file names by one documented rule
(`unique_names`): '%' -> '%25', '/' -> '%2F'; an empty name, '.' or '..' gets a leading '_';
over 255 bytes, it is cut and given a short hash; duplicates (a re-run workflow has the same
name) keep the name for the oldest and add '~2', '~3' ... in creation order.
Every listing follows `next_page_token`. Nothing here knows about FUSE or caching.

A workflow lists every job, also those without artifacts: a job that has not started (no
`job_number`: blocked, queued, waiting on an approval) and an approval job (type `approval`;
the job-details API answers 404 for it) are empty directories whose `user.ciartfs.job` says
why. Terminal statuses (TERMINAL_JOB, TERMINAL_WORKFLOW, checked against the spec's enums by
tests/t1_v2_spec.py) make a job or workflow immutable; every other status, including one
the spec does not know, is asked about again after the TTL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from ciartfs.errors import BadListing, NotFound
from ciartfs.namespace.model import CompleteDir, Entry, Kind, StaticDir, many_made
from ciartfs.namespace.names import NAME_MAX
from ciartfs.namespace.packed import KeptListings
from ciartfs.providers import pages, parse_time
from ciartfs.providers.apidocs import ApiDocs, Keep
from ciartfs.providers.circleci.v1 import (
    ArtifactRecord,
    KeptNodes,
    PackedNode,
    TokenAwareDocs,
    encode_branch,
    node_entries,
    not_visible,
    parse_artifacts,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
V2_SLUG = {"github": "gh", "bitbucket": "bb", "circleci": "circleci"}
# The spec's job `status` enum, split: these never change again (a `retried` job stays
# retried: its rerun is another job)...
TERMINAL_JOB = frozenset({"success", "failed", "canceled", "infrastructure_fail", "timedout", "not_run",
                          "unauthorized", "terminated-unknown", "retried"})
# ... and these may (a blocked job starts, an on_hold approval is approved).
PENDING_JOB = frozenset({"running", "queued", "not_running", "on_hold", "blocked"})
TERMINAL_WORKFLOW = frozenset({"success", "failed", "error", "canceled", "unauthorized", "not_run"})
PENDING_WORKFLOW = frozenset({"running", "failing", "on_hold"})


def unique_names(items: list[T], name_of: Callable[[T], Any], order_of: Callable[[T], Any]) -> list[tuple[str, T]]:
    """Deterministic, valid, unique file names for API-named things (rule in the module doc)."""
    def safe(name: Any) -> str:
        text = encode_branch(name if isinstance(name, str) else str(name)).replace("\x00", "%00")
        text = text.encode("utf-8", "replace").decode()  # a lone surrogate from JSON becomes '?'
        if text in ("", ".", ".."):
            text = "_" + text
        if len(text.encode()) > NAME_MAX:
            digest = hashlib.sha1(text.encode()).hexdigest()[:8]
            text = text.encode()[:NAME_MAX - 10].decode(errors="ignore") + "~" + digest
        return text

    out: list[tuple[str, T]] = []
    taken: set[str] = set()
    for item in sorted(items, key=order_of):
        base = name = safe(name_of(item))
        n = 1
        while name in taken:
            n += 1
            name = f"{base}~{n}"
        taken.add(name)
        out.append((name, item))
    return out


@dataclasses.dataclass(frozen=True)
class Job:
    number: int | None  # None: the job has not started (the spec does not require job_number)
    name: str
    status: str
    stopped_at: float | None
    started_at: float | None
    type: str = "build"  # or "approval"
    id: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB

    @property
    def why_empty(self) -> str | None:
        """Why the job has no artifacts to list, or None if it may have some."""
        if self.type == "approval":
            return "an approval job: it has no artifacts"
        if self.number is None:
            return f"the job has not started (status {self.status or 'unknown'}): it has no number yet"
        return None

    @property
    def mtime(self) -> float:
        return self.stopped_at or self.started_at or 0.0


@dataclasses.dataclass(frozen=True)
class Workflow:
    id: str
    name: str
    status: str
    created_at: str

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_WORKFLOW


def parse_job(doc: Any, where: str) -> Job:
    if not isinstance(doc, dict):
        raise BadListing(f"{where}: a job is not an object")
    number = doc.get("job_number", doc.get("number"))
    if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number <= 0):
        raise BadListing(f"{where}: a job number that is not a positive integer")
    status, kind, job_id = doc.get("status"), doc.get("type"), doc.get("id")
    return Job(number, str(doc.get("name") or number or job_id or ""), status if isinstance(status, str) else "",
               parse_time(doc.get("stopped_at")), parse_time(doc.get("started_at")),
               kind if isinstance(kind, str) else "build", job_id if isinstance(job_id, str) else "")


def _finished(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("status") in TERMINAL_JOB


class CircleCIV2Api:
    def __init__(self, docs: ApiDocs, host: str, *, token_set: bool = False, kept: KeptNodes | None = None) -> None:
        self.docs = TokenAwareDocs(docs, token_set)
        self.token_set = token_set
        self.host = host
        self.base = host + "/api/v2"
        self.host_id = urllib.parse.urlsplit(host).netloc
        # finished jobs' listings, placed, by "v2|<where>/<job>" (shared with v1.1's API on one host)
        self.kept: KeptNodes = kept if kept is not None else KeptListings()

    async def _pages(self, url: str, keep: Keep = None) -> AsyncIterator[list[Any]]:
        """Each page's items, a page at a time."""
        async for doc in pages(self.docs, url, token_param="page-token", token_field="next_page_token", keep=keep):
            if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
                raise BadListing(f"{url}: no 'items' list")
            yield doc["items"]

    async def _items(self, url: str, keep: Keep = None) -> AsyncIterator[Any]:
        async for items in self._pages(url, keep):
            for item in items:
                yield item

    @staticmethod
    def slug(vcs: str, user: str, project: str) -> str:
        def q(s: str) -> str:
            return urllib.parse.quote(s, safe="")

        return f"{V2_SLUG[vcs]}/{q(user)}/{q(project)}"

    async def job(self, slug: str, number: int) -> Job:
        url = f"{self.base}/project/{slug}/job/{number}"
        return parse_job(await self.docs.get_json(url, keep=_finished), url)

    async def job_artifacts(self, slug: str, number: int, *, done: bool) -> list[ArtifactRecord]:
        url = f"{self.base}/project/{slug}/{number}/artifacts"
        # parsed a page at a time: a page's documents are gone before the next page's arrive, so
        # only the records, which the listing needs, are alive together (100 pages of 1000)
        records: list[ArtifactRecord] = []
        async for items in self._pages(url, keep=done):
            records += parse_artifacts(items, url)
        return records

    async def pipeline_id(self, slug: str, number: int) -> str:
        url = f"{self.base}/project/{slug}/pipeline/{number}"
        doc = await self.docs.get_json(url, keep=True)  # a pipeline's id never changes
        pipeline = doc.get("id") if isinstance(doc, dict) else None
        if not isinstance(pipeline, str):
            raise BadListing(f"{url}: no pipeline 'id'")
        return pipeline

    async def workflows(self, pipeline_id: str) -> list[Workflow]:
        url = f"{self.base}/pipeline/{pipeline_id}/workflow"
        out = []
        async for item in self._items(url):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise BadListing(f"{url}: a workflow without an 'id'")
            out.append(Workflow(item["id"], str(item.get("name") or item["id"]), str(item.get("status") or ""),
                                str(item.get("created_at") or "")))
        return out

    async def workflow_jobs(self, workflow: Workflow) -> list[Job]:
        url = f"{self.base}/workflow/{workflow.id}/job"
        return [parse_job(item, url) async for item in self._items(url, keep=workflow.done)]


# -- the directory layout ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Slug:
    api: CircleCIV2Api
    slug: str  # for URLs
    where: str  # for cache keys: "github/acme/api", "circleci/<org>/<project>" (as v1.1's)
    ttl: float


def _job_entry(p: _Slug, name: str, job: Job) -> Entry:
    info = {"job": json.dumps(dataclasses.asdict(job))}
    why_empty = job.why_empty
    if why_empty is not None or job.number is None:  # listed, so the workflow shows all its jobs; nothing to ask the API
        info["empty"] = why_empty or "no job number"
        return Entry(name, Kind.DIR, mtime=job.mtime, immutable=job.done,
                     source=StaticDir([], ttl=None if job.done else p.ttl), info=info)
    return Entry(name, Kind.DIR, mtime=job.mtime, immutable=job.done, source=_JobDir(p, job, job.number), info=info)


class _JobDir(CompleteDir):
    def __init__(self, p: _Slug, job: Job, number: int) -> None:
        self.p, self.job, self.number = p, job, number
        self.ttl = None if job.done else p.ttl

    async def list(self) -> list[Entry]:
        p, job, number = self.p, self.job, self.number
        where = f"{p.where}/{number}"
        # a finished job's listing never changes: kept placed, so a re-list starts from there
        records: list[ArtifactRecord] | list[PackedNode] | None = p.api.kept.get("v2|" + where) if job.done else None
        if records is None:
            records = await p.api.job_artifacts(p.slug, number, done=job.done)
        source = lambda node: json.dumps({"provider": "circleci-v2", "slug": p.slug, "job": number,  # noqa: E731
                                          "node": node})
        with many_made():
            return node_entries(records, host=p.api.host, host_id=p.api.host_id, where=where, mtime=job.mtime,
                                immutable=job.done, ttl=self.ttl, source=source, kept=p.api.kept, kept_as="v2|" + where)


def v2_root_entry(api: CircleCIV2Api, *, ttl: float, mtime: float) -> Entry:
    """circleci/<org-id>/<project-id>/<job-number>/ for projects that only have v2 slugs."""
    return Entry("circleci", Kind.DIR, mtime=mtime, immutable=True, source=_Names(
        lambda org: Entry(org, Kind.DIR, mtime=mtime, immutable=True, source=_Names(
            lambda proj: Entry(proj, Kind.DIR, mtime=mtime, source=_Jobs(_Slug(
                api, api.slug("circleci", org, proj), f"circleci/{org}/{proj}", ttl)))))))


def pipelines_entry(api: CircleCIV2Api, vcs: str, user: str, project: str, ttl: float) -> Entry:
    """<vcs>/<user>/<project>/pipeline/: pipelines by number (they cannot be listed cheaply)."""
    return Entry("pipeline", Kind.DIR, source=_Pipelines(_Slug(api, api.slug(vcs, user, project),
                                                              f"{vcs}/{user}/{project}", ttl)))


class _Names:
    """A directory that cannot be listed; any plain name looks up as made by `make`."""

    ttl = None
    complete = False

    def __init__(self, make: Callable[[str], Entry]) -> None:
        self.make = make

    async def list(self) -> None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        return self.make(name) if name and "/" not in name and name not in (".", "..") else None


class _Jobs:
    ttl = None
    complete = False

    def __init__(self, p: _Slug) -> None:
        self.p = p

    async def list(self) -> None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        if not name.isdigit() or name != str(int(name)):
            return None
        try:
            job = await self.p.api.job(self.p.slug, int(name))
        except NotFound:  # also an approval job's number: job details answer 404 for those
            log.warning("%s", not_visible(f"{self.p.where}/{name}", self.p.api.token_set))
            return None
        return _job_entry(self.p, name, job)


class _Pipelines(_Jobs):
    async def lookup(self, name: str) -> Entry | None:
        if not name.isdigit() or name != str(int(name)):
            return None
        try:
            pipeline_id = await self.p.api.pipeline_id(self.p.slug, int(name))
        except NotFound:
            log.warning("%s", not_visible(f"{self.p.where}/pipeline/{name}", self.p.api.token_set))
            return None
        return Entry(name, Kind.DIR, source=_PipelineDir(self.p, pipeline_id))


class _PipelineDir(CompleteDir):
    """The pipeline's workflows by name."""

    def __init__(self, p: _Slug, pipeline_id: str) -> None:
        self.p, self.pipeline_id, self.ttl = p, pipeline_id, p.ttl

    async def list(self) -> list[Entry]:
        workflows = await self.p.api.workflows(self.pipeline_id)
        return [Entry(name, Kind.DIR, mtime=parse_time(w.created_at) or 0.0, immutable=w.done,
                      source=_WorkflowDir(self.p, w), info={"workflow": json.dumps(dataclasses.asdict(w))})
                for name, w in unique_names(workflows, lambda w: w.name, lambda w: (w.created_at, w.id))]


class _WorkflowDir(CompleteDir):
    """The workflow's jobs by name."""

    def __init__(self, p: _Slug, workflow: Workflow) -> None:
        self.p, self.workflow = p, workflow
        self.ttl = None if workflow.done else p.ttl

    async def list(self) -> list[Entry]:
        jobs = await self.p.api.workflow_jobs(self.workflow)
        return [_job_entry(self.p, name, job)
                for name, job in unique_names(jobs, lambda j: j.name, _job_order)]


def _job_order(job: Job) -> tuple[bool, int, str, str]:
    """Started jobs by number, then the rest by name and id: a name taken twice keeps it for
    the started job."""
    return (job.number is None, job.number or 0, job.name, job.id)
