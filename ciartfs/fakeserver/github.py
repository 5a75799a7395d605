"""A fake GitHub Actions REST API (runs and artifacts) on the API host, with the artifacts' bytes
on the "blob" host (azureblob.py: Azure Blob storage behind SAS URLs):

    GET /repos/{owner}/{repo}/actions/workflows[?per_page=&page=]
    GET /repos/{owner}/{repo}/actions/artifacts[?per_page=&page=&name=]   the repository's, newest first
    GET /repos/{owner}/{repo}/actions/runs[?per_page=&page=&branch=&status=&event=&head_sha=]
    GET /repos/{owner}/{repo}/actions/workflows/{workflow_id or file name}/runs[?same]
    GET /repos/{owner}/{repo}/actions/runs/{run_id}
    GET /repos/{owner}/{repo}/actions/runs/{run_id}/artifacts[?per_page=&page=&name=]
    GET /repos/{owner}/{repo}/actions/artifacts/{artifact_id}
    GET /repos/{owner}/{repo}/actions/artifacts/{artifact_id}/zip   302 to a SAS URL on "blob"
    (each also as /repositories/{repository_id}/..., the form GitHub's Link headers use)

Checked against docs.github.com ("REST API endpoints for GitHub Actions artifacts", "... for
workflow runs", "Using pagination in the REST API", "Rate limits for the REST API", "Best
practices": conditional requests) and the OpenAPI description's `artifact` and `workflow-run`
schemas (github/rest-api-description, via php-api-clients/github's copy), plus reports of the
real service's answers (github/docs#36482, rest-api-description#4569, upload-artifact#51).
What the fake keeps of the real service, awkward parts included:

- Answers are compact JSON (`application/json; charset=utf-8`): {"total_count", "workflow_runs"}
  and {"total_count", "artifacts"}, runs newest first. Field names as the schemas name them;
  an artifact's `digest` is "sha256:<hex>" of the stored blob, null for artifacts uploaded
  before digests existed (`FakeGhArtifact.digest_known=False`); `size_in_bytes` is the blob's,
  except for old (upload-artifact v3) artifacts, whose size was the files' total
  (`reported_size`): a client must not take it for the download's length.
- Paging: `per_page` (default 30, capped at 100), `page` (from 1). `Link` lists, in GitHub's
  order, prev, next, last, first - each only when it applies, none when one page holds all -
  and its URLs use `/repositories/{id}/...` (not the /repos/owner/repo of the request), keep
  the request's other parameters in their order, and replace or append `page`. With a filter
  (branch, status, event, head_sha, actor, created, check_suite_id) the runs listing reaches at
  most 1,000 results (docs: "will return up to 1,000 results for each search"); total_count
  still counts every match.
- `status` filters either `status` (requested, in_progress, completed, queued, waiting,
  pending) or `conclusion` (success, failure, cancelled, ...).
- Auth: `Authorization: Bearer <t>` or `token <t>`, t in FakeCI.tokens. An unknown token is
  401 "Bad credentials" on every endpoint, public repositories included. A private repository
  without a valid token is 404, as if it did not exist. Public repositories list without one,
  but their artifacts' /zip does not: 403 "You must have the actions scope to download
  artifacts." (the docs say otherwise; the service does this, see the issues above). An
  expired artifact's /zip is 410 "Artifact has expired"; an unknown one 404.
- The /zip 302's Location is valid `url_ttl` seconds (GitHub: 1 minute) and must be fetched
  without the token (azureblob.py refuses Authorization).
- Errors: {"message", "documentation_url", "status": "<code as a string>"}; unknown paths 404
  {"message": "Not Found", ...}.
- Every answer (errors too) carries X-RateLimit-Limit/-Remaining/-Reset/-Used/-Resource
  ("core"); limits 5,000 an hour per token, 60 without one (FakeGitHub.authenticated_limit,
  anonymous_limit). GET answers carry a weak ETag;
  `If-None-Match` with it is 304, no body, and (for an authorized request, as the docs say)
  not counted. Exhausting the limit is 403 with X-RateLimit-Remaining: 0 and "API rate limit
  exceeded ...", until X-RateLimit-Reset. `Faults.github_rate_limits` queues such answers:
  "primary" (403: the budget is spent until a reset `FakeGitHub.retry_after` seconds away),
  "primary-429", "secondary" (403, Retry-After: `retry_after`, the secondary-limit message;
  that one request only), "secondary-429".

Model: `fake.github` (FakeGitHub) -> add_repo(owner, name, private=False) -> FakeRepo ->
add_workflow(file, name) / add_run(...) -> FakeWorkflowRun -> add_artifact(name, members | data=...).
Artifact zips are built with the stdlib zipfile (stored or deflated, directories, unicode
names, data descriptors as a streaming zipper writes them), or given as raw bytes, or made on
the fly (generated_zip.GeneratedZip, never held whole).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import math
import mimetypes
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ciartfs.fakeserver.azureblob import BlobContainer, BlobContent, MemoryBlob
from ciartfs.fakeserver.azureblob import handle as handle_blob
from ciartfs.fakeserver.routing import Reply, Request, Route

if TYPE_CHECKING:
    from ciartfs.fakeserver.server import FakeCI

DOCS = "https://docs.github.com/rest"
DOC_RUNS = "https://docs.github.com/rest/actions/workflow-runs"
DOC_ARTIFACTS = "https://docs.github.com/rest/actions/artifacts"
DEFAULT_PER_PAGE, MAX_PER_PAGE = 30, 100
FILTERED_RESULTS_CAP = 1000
AUTHENTICATED_LIMIT, ANONYMOUS_LIMIT = 5000, 60
RUN_STATUSES = frozenset({"requested", "in_progress", "completed", "queued", "waiting", "pending", "action_required"})
RUN_FILTERS = ("branch", "status", "event", "head_sha", "actor", "created", "check_suite_id")
ANONYMOUS_WHO = ("127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit. "
                 "Check out the documentation for more details.)")
EPOCH = datetime.datetime(2026, 11, 1, 10, 0, tzinfo=datetime.UTC)

_ids = itertools.count(1000)  # one id space for repos, workflows, runs and artifacts: never two alike


def _iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def zip_bytes(members: Mapping[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED,
              data_descriptors: bool = True) -> bytes:
    """A zip of these members (names ending in "/" are directories), in order. With
    `data_descriptors` it is written as a streaming zipper (upload-artifact's) writes it: each
    local header has zero CRC and sizes (flag bit 3), the real ones follow the data."""
    buffer = io.BytesIO()
    target: Any = _Unseekable(buffer) if data_descriptors else buffer
    with zipfile.ZipFile(target, "w", compression=compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 11, 1, 10, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if name.endswith("/") else compression
            info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o100644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


class _Unseekable(io.RawIOBase):
    """A write-only stream zipfile cannot seek back in: it writes data descriptors."""

    def __init__(self, sink: io.BytesIO) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.sink.write(data)

    def tell(self) -> int:
        raise OSError("unseekable")

    def seekable(self) -> bool:
        return False


@dataclasses.dataclass(eq=False)
class FakeGhArtifact:
    id: int
    name: str
    run: FakeWorkflowRun
    content: BlobContent
    content_type: str = "application/zip"
    download_name: str = ""  # the SAS URL's Content-Disposition filename ("<name>.zip" for zips)
    expired: bool = False  # listed (expired: true), its /zip 410
    digest_known: bool = True  # False: `digest` is null (uploaded before GitHub recorded digests)
    delay: float = 0.0  # the blob host waits this long before answering (a slow blob)
    # `size_in_bytes` when it is not the blob's: upload-artifact v3 and older reported the
    # uploaded files' total, not the size of the zip the download gives
    reported_size: int | None = None
    created: datetime.datetime = EPOCH
    blob_path: str = ""  # its path on the blob host (set when stored)
    _digest: str | None = dataclasses.field(default=None, init=False, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def size(self) -> int:
        return self.content.size

    @property
    def digest(self) -> str | None:
        if not self.digest_known:
            return None
        with self._lock:  # a generated blob is hashed once, on first need
            if self._digest is None:
                self._digest = "sha256:" + self.content.sha256()
            return self._digest

    def data(self) -> bytes:
        """The whole blob (tests; a generated blob is made whole here, so mind its size)."""
        return b"".join(self.content.read(0, self.content.size))

    def json(self, api_url: str) -> dict[str, Any]:
        repo, run = self.run.repo, self.run
        url = f"{api_url}/repos/{repo.owner}/{repo.name}/actions/artifacts/{self.id}"
        expires = self.created + datetime.timedelta(days=90)
        if self.expired:
            expires = min(expires, EPOCH - datetime.timedelta(days=1))
        return {
            "id": self.id,
            "node_id": base64.b64encode(f"08:Artifact{self.id}".encode()).decode(),
            "name": self.name,
            "size_in_bytes": self.size if self.reported_size is None else self.reported_size,
            "url": url,
            "archive_download_url": f"{url}/zip",
            "expired": self.expired,
            "digest": self.digest,
            "created_at": _iso(self.created),
            "updated_at": _iso(self.created + datetime.timedelta(seconds=2)),
            "expires_at": _iso(expires),
            "workflow_run": {"id": run.id, "repository_id": repo.id, "head_repository_id": repo.id,
                             "head_branch": run.head_branch, "head_sha": run.head_sha},
        }


@dataclasses.dataclass(eq=False)
class FakeWorkflow:
    id: int
    file: str  # "ci.yml"
    name: str

    @property
    def path(self) -> str:
        return f".github/workflows/{self.file}"

    def json(self, repo: FakeRepo, api_url: str) -> dict[str, Any]:
        return {"id": self.id, "node_id": "W_" + base64.b64encode(f"workflow{self.id}".encode()).decode().rstrip("="),
                "name": self.name, "path": self.path, "state": "active",
                "created_at": _iso(EPOCH), "updated_at": _iso(EPOCH),
                "url": f"{api_url}/repos/{repo.owner}/{repo.name}/actions/workflows/{self.id}",
                "html_url": f"https://github.com/{repo.owner}/{repo.name}/blob/main/{self.path}",
                "badge_url": f"https://github.com/{repo.owner}/{repo.name}/workflows/{self.name}/badge.svg"}


@dataclasses.dataclass(eq=False)
class FakeWorkflowRun:
    id: int
    repo: FakeRepo
    workflow: FakeWorkflow
    run_number: int
    head_branch: str | None
    head_sha: str
    event: str
    status: str  # queued | in_progress | completed | ...
    conclusion: str | None  # success | failure | cancelled | ... (None until completed)
    created_at: datetime.datetime
    updated_at: datetime.datetime
    run_attempt: int = 1
    display_title: str = ""
    artifacts: list[FakeGhArtifact] = dataclasses.field(default_factory=list)

    def add_artifact(self, name: str, members: Mapping[str, bytes] | None = None, *, data: bytes | None = None,
                     content: BlobContent | None = None, compression: int = zipfile.ZIP_DEFLATED,
                     data_descriptors: bool = True, archive: bool = True, content_type: str | None = None,
                     **kw: Any) -> FakeGhArtifact:
        """An artifact of this run. Its blob: a zip of `members` (path -> bytes, names ending
        in "/" directories), or `data` as it is (a ready zip; with archive=False a single
        non-zip file, served with its own type), or `content` made on the fly
        (generated_zip.GeneratedZip). `expired`, `digest_known`, `reported_size`, `delay`: the
        FakeGhArtifact fields."""
        if sum(x is not None for x in (members, data, content)) != 1:
            raise ValueError("give exactly one of members, data, content")
        if members is not None:
            content = MemoryBlob(zip_bytes(members, compression=compression, data_descriptors=data_descriptors))
        elif data is not None:
            content = MemoryBlob(data)
        assert content is not None
        if content_type is None:
            content_type = "application/zip" if archive else (mimetypes.guess_type(name)[0] or "application/octet-stream")
        artifact = FakeGhArtifact(next(_ids), name, self, content, content_type,
                                  download_name=f"{name}.zip" if archive else name,
                                  created=self.updated_at, **kw)
        self.artifacts.append(artifact)
        self.repo.github._store(artifact)
        return artifact

    def json(self, api_url: str) -> dict[str, Any]:
        repo = self.repo
        base = f"{api_url}/repos/{repo.owner}/{repo.name}"
        url = f"{base}/actions/runs/{self.id}"
        actor = repo.owner_json(api_url)
        return {
            "id": self.id,
            "name": self.workflow.name,
            "node_id": "WFR_" + base64.b64encode(f"run{self.id}".encode()).decode().rstrip("="),
            "head_branch": self.head_branch,
            "head_sha": self.head_sha,
            "path": self.workflow.path,
            "display_title": self.display_title or f"Commit {self.head_sha[:7]}",
            "run_number": self.run_number,
            "event": self.event,
            "status": self.status,
            "conclusion": self.conclusion,
            "workflow_id": self.workflow.id,
            "check_suite_id": self.id * 3,
            "check_suite_node_id": "CS_" + base64.b64encode(f"suite{self.id * 3}".encode()).decode().rstrip("="),
            "url": url,
            "html_url": f"https://github.com/{repo.owner}/{repo.name}/actions/runs/{self.id}",
            "pull_requests": [],
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "actor": actor,
            "run_attempt": self.run_attempt,
            "referenced_workflows": [],
            "run_started_at": _iso(self.created_at),
            "triggering_actor": actor,
            "jobs_url": f"{url}/jobs",
            "logs_url": f"{url}/logs",
            "check_suite_url": f"{base}/check-suites/{self.id * 3}",
            "artifacts_url": f"{url}/artifacts",
            "cancel_url": f"{url}/cancel",
            "rerun_url": f"{url}/rerun",
            "previous_attempt_url": f"{url}/attempts/{self.run_attempt - 1}" if self.run_attempt > 1 else None,
            "workflow_url": f"{base}/actions/workflows/{self.workflow.id}",
            "head_commit": {"id": self.head_sha, "tree_id": hashlib.sha1(self.head_sha.encode()).hexdigest(),
                            "message": self.display_title or f"Commit {self.head_sha[:7]}",
                            "timestamp": _iso(self.created_at),
                            "author": {"name": "Octo Cat", "email": "octocat@example.com"},
                            "committer": {"name": "GitHub", "email": "noreply@github.com"}},
            "repository": repo.json(api_url),
            "head_repository": repo.json(api_url),
        }


@dataclasses.dataclass(eq=False)
class FakeRepo:
    id: int
    owner: str
    name: str
    private: bool
    github: FakeGitHub = dataclasses.field(repr=False)
    workflows: dict[str, FakeWorkflow] = dataclasses.field(default_factory=dict)  # by file name
    runs: dict[int, FakeWorkflowRun] = dataclasses.field(default_factory=dict)

    def add_workflow(self, file: str = "ci.yml", name: str | None = None) -> FakeWorkflow:
        workflow = self.workflows.get(file)
        if workflow is None:
            workflow = self.workflows[file] = FakeWorkflow(next(_ids), file, name or file.rsplit(".", 1)[0].upper())
        return workflow

    def add_run(self, workflow: str | FakeWorkflow = "ci.yml", *, branch: str | None = "main",
                conclusion: str | None = "success", status: str | None = None, event: str = "push",
                head_sha: str | None = None, created_at: str | None = None, run_number: int | None = None,
                **kw: Any) -> FakeWorkflowRun:
        """A run. `status` defaults from the conclusion: completed when there is one, else
        in_progress (and a run that is not completed has no conclusion). `created_at`
        defaults to a minute after the repository's previous run."""
        flow = workflow if isinstance(workflow, FakeWorkflow) else self.add_workflow(workflow)
        if status is None:
            status = "completed" if conclusion is not None else "in_progress"
        if status != "completed":
            conclusion = None
        run_id = next(_ids)
        created = _parse(created_at) if created_at else EPOCH + datetime.timedelta(minutes=len(self.runs))
        if run_number is None:
            run_number = 1 + sum(1 for r in self.runs.values() if r.workflow is flow)
        run = FakeWorkflowRun(run_id, self, flow, run_number, branch, head_sha or hashlib.sha1(b"%d" % run_id).hexdigest(),
                      event, status, conclusion, created,
                      created + datetime.timedelta(minutes=5 if status == "completed" else 1), **kw)
        self.runs[run_id] = run
        self.github.runs[run_id] = run
        return run

    def owner_json(self, api_url: str) -> dict[str, Any]:
        login = self.owner
        return {"login": login, "id": int(hashlib.sha1(login.encode()).hexdigest()[:6], 16),
                "node_id": "U_" + base64.b64encode(login.encode()).decode().rstrip("="),
                "avatar_url": f"https://avatars.githubusercontent.com/{login}", "gravatar_id": "",
                "url": f"{api_url}/users/{login}", "html_url": f"https://github.com/{login}",
                "type": "Organization", "site_admin": False}

    def json(self, api_url: str) -> dict[str, Any]:
        url = f"{api_url}/repos/{self.owner}/{self.name}"
        return {"id": self.id, "node_id": "R_" + base64.b64encode(f"repo{self.id}".encode()).decode().rstrip("="),
                "name": self.name, "full_name": f"{self.owner}/{self.name}", "private": self.private,
                "owner": self.owner_json(api_url), "html_url": f"https://github.com/{self.owner}/{self.name}",
                "description": None, "fork": False, "url": url}


@dataclasses.dataclass
class _Budget:
    limit: int
    used: int = 0
    reset: int = 0


class FakeGitHub:
    """The Actions API's state (repositories, runs, artifacts by id), its signing of blob
    URLs (`url_ttl`, default GitHub's 60 s) and its rate-limit accounting."""

    def __init__(self, fake: FakeCI) -> None:
        self.fake = fake
        self.repos: dict[tuple[str, str], FakeRepo] = {}  # (owner, name) lower-cased: GitHub ignores case
        self.repos_by_id: dict[int, FakeRepo] = {}
        self.runs: dict[int, FakeWorkflowRun] = {}
        self.artifacts: dict[int, FakeGhArtifact] = {}
        self.container = BlobContainer()
        self.url_ttl = 60.0
        # seconds a secondary rate limit's Retry-After names, and until an injected primary one resets
        self.retry_after = 60
        self.authenticated_limit = AUTHENTICATED_LIMIT
        self.anonymous_limit = ANONYMOUS_LIMIT
        self._budgets: dict[str, _Budget] = {}
        self._lock = threading.Lock()

    def add_repo(self, owner: str, name: str, private: bool = False) -> FakeRepo:
        key = (owner.lower(), name.lower())
        replaced = self.repos.get(key)
        if replaced is not None:
            for run in replaced.runs.values():
                self.runs.pop(run.id, None)
                for artifact in run.artifacts:
                    self.artifacts.pop(artifact.id, None)
                    self.container.discard(artifact.blob_path)
            self.repos_by_id.pop(replaced.id, None)
        repo = FakeRepo(next(_ids), owner, name, private, self)
        self.repos[key] = repo
        self.repos_by_id[repo.id] = repo
        return repo

    def _store(self, artifact: FakeGhArtifact) -> None:
        self.artifacts[artifact.id] = artifact
        artifact.blob_path = self.container.add(artifact)

    def signed_url(self, artifact: FakeGhArtifact) -> str:
        """A SAS URL for the artifact's blob, valid `url_ttl` seconds."""
        return self.container.signed_url(self.fake.blob_url, artifact.blob_path, self.url_ttl, artifact.download_name)

    def rate_limit_used(self, token: str | None) -> int:
        with self._lock:
            budget = self._budgets.get(token or "")
            return budget.used if budget else 0

    def reset_rate_limits(self) -> None:
        with self._lock:
            self._budgets.clear()

    # -- answering -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [Route("api", "/repos/", self.handle), Route("api", "/repositories/", self.handle),
                Route("blob", "", lambda request: handle_blob(self.fake, self.container, request))]

    def handle(self, request: Request) -> None:
        token = self._token(request)
        budget = self._budget(token)
        try:
            self._answer(request, token, budget)
        except Reply as reply:
            raise self._finish(request, reply, token, budget) from None
        raise self._finish(request, _error(404, "Not Found", DOCS), token, budget)

    def _token(self, request: Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() not in ("bearer", "token") or not value or value not in self.fake.tokens:
            raise self._finish(request, _error(401, "Bad credentials", DOCS), None, self._budget(None), counted=False)
        return value

    def _budget(self, token: str | None) -> _Budget:
        with self._lock:
            budget = self._budgets.get(token or "")
            now = int(time.time())
            if budget is None or budget.reset <= now:
                limit = self.authenticated_limit if token else self.anonymous_limit
                budget = self._budgets[token or ""] = _Budget(limit, 0, now + 3600)
            return budget

    def _finish(self, request: Request, reply: Reply, token: str | None, budget: _Budget, *,
                counted: bool = True) -> Reply:
        """The answer with GitHub's headers: rate limit, ETag (a 304 when If-None-Match matches)."""
        headers = reply.headers
        if reply.status == 200 and request.method in ("GET", "HEAD"):
            etag = 'W/"' + hashlib.sha256(reply.body).hexdigest() + '"'
            headers["ETag"] = etag
            if _etag_matches(request.headers.get("If-None-Match"), etag):
                reply = Reply(304, b"", content_type=reply.content_type, headers=headers)
                counted = counted and token is None  # a conditional request answered 304 is free when authorized
        with self._lock:
            if counted and reply.status != 401:
                budget.used = min(budget.used + 1, budget.limit)
            used, limit, reset = budget.used, budget.limit, budget.reset
        headers.update({
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - used)),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Used": str(used),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Request-Id": hashlib.md5(f"{time.time_ns()}".encode()).hexdigest()[:20].upper(),
            "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP,Accept-Encoding, Accept, X-Requested-With",
        })
        if token is not None:
            headers["X-OAuth-Scopes"] = "repo"
        return reply

    def _rate_limited(self, token: str | None, budget: _Budget) -> None:
        kind = self.fake.faults.pop("github_rate_limits")
        with self._lock:
            exhausted = budget.used >= budget.limit
        if kind is None and not exhausted:
            return
        if kind is None or kind.startswith("primary"):
            who = "user ID 1" if token else ANONYMOUS_WHO
            if kind is not None:  # an injected exhaustion lasts until a near reset, `retry_after` away
                with self._lock:
                    budget.used = budget.limit
                    budget.reset = math.ceil(time.time()) + self.retry_after  # (a whole `retry_after` at least)
            status = 429 if kind == "primary-429" else 403
            raise _error(status, f"API rate limit exceeded for {who}",
                         "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api")
        status = 429 if kind == "secondary-429" else 403
        raise _error(status, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
                     "If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000.",
                     "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                     headers={"Retry-After": str(self.retry_after)})

    def _answer(self, request: Request, token: str | None, budget: _Budget) -> None:
        self._rate_limited(token, budget)
        if request.method not in ("GET", "HEAD"):
            raise _error(404, "Not Found", DOCS)
        parts = [urllib.parse.unquote(p) for p in request.raw_path.split("/")[1:]]
        if parts[0] == "repos" and len(parts) >= 3:
            repo = self.repos.get((parts[1].lower(), parts[2].lower()))
            rest = parts[3:]
        elif parts[0] == "repositories" and len(parts) >= 2 and parts[1].isdigit():
            repo = self.repos_by_id.get(int(parts[1]))
            rest = parts[2:]
        else:
            raise _error(404, "Not Found", DOCS)
        if repo is None or (repo.private and token is None):
            raise _error(404, "Not Found", DOCS)  # a private repository is hidden, not forbidden
        if rest[:1] != ["actions"]:
            raise _error(404, "Not Found", DOCS)
        rest = rest[1:]
        api_url = self.fake.api_url
        link_base = f"{api_url}/repositories/{repo.id}/{'/'.join(urllib.parse.quote(p) for p in ['actions', *rest])}"
        if rest == ["workflows"]:
            flows = list(repo.workflows.values())
            page, links = _page(request, flows, len(flows), link_base)
            raise _json({"total_count": len(flows), "workflows": [w.json(repo, api_url) for w in page]}, links)
        if rest == ["artifacts"]:  # the repository's, newest first
            listed = [a for r in repo.runs.values() for a in r.artifacts
                      if "name" not in request.query or a.name == request.query["name"]]
            listed.sort(key=lambda a: (a.created, a.id), reverse=True)
            page, links = _page(request, listed, len(listed), link_base)
            raise _json({"total_count": len(listed), "artifacts": [a.json(api_url) for a in page]}, links)
        if rest == ["runs"]:
            self._list_runs(request, repo, list(repo.runs.values()), link_base, f"{DOC_RUNS}#list-workflow-runs-for-a-repository")
        if len(rest) == 3 and rest[0] == "workflows" and rest[2] == "runs":
            flow = repo.workflows.get(rest[1]) or next((w for w in repo.workflows.values() if str(w.id) == rest[1]), None)
            if flow is None:
                raise _error(404, "Not Found", f"{DOC_RUNS}#list-workflow-runs-for-a-workflow")
            self._list_runs(request, repo, [r for r in repo.runs.values() if r.workflow is flow], link_base,
                            f"{DOC_RUNS}#list-workflow-runs-for-a-workflow")
        if len(rest) in (2, 3) and rest[0] == "runs":
            run = repo.runs.get(int(rest[1])) if rest[1].isdigit() else None
            if len(rest) == 2:
                if run is None:
                    raise _error(404, "Not Found", f"{DOC_RUNS}#get-a-workflow-run")
                raise _json(run.json(api_url))
            if rest[2] == "artifacts":
                if run is None:
                    raise _error(404, "Not Found", f"{DOC_ARTIFACTS}#list-workflow-run-artifacts")
                artifacts = [a for a in run.artifacts if "name" not in request.query or a.name == request.query["name"]]
                page, links = _page(request, artifacts, len(artifacts), link_base)
                raise _json({"total_count": len(artifacts), "artifacts": [a.json(api_url) for a in page]}, links)
        if len(rest) in (2, 3) and rest[0] == "artifacts":
            artifact = self.artifacts.get(int(rest[1])) if rest[1].isdigit() else None
            if artifact is not None and artifact.run.repo is not repo:
                artifact = None
            if len(rest) == 2:
                if artifact is None:
                    raise _error(404, "Not Found", f"{DOC_ARTIFACTS}#get-an-artifact")
                raise _json(artifact.json(api_url))
            doc = f"{DOC_ARTIFACTS}#download-an-artifact"
            if rest[2] != "zip":
                raise _error(404, "Not Found", doc)
            if token is None:
                raise _error(403, "You must have the actions scope to download artifacts.", doc)
            if artifact is None:
                raise _error(404, "Not Found", doc)
            if artifact.expired:
                raise _error(410, "Artifact has expired", doc)
            raise Reply(302, b"", content_type="text/html;charset=utf-8", headers={"Location": self.signed_url(artifact)})
        raise _error(404, "Not Found", DOCS)

    def _list_runs(self, request: Request, repo: FakeRepo, runs: list[FakeWorkflowRun], link_base: str, doc: str) -> None:
        query = request.query
        if "branch" in query:
            runs = [r for r in runs if r.head_branch == query["branch"]]
        if "event" in query:
            runs = [r for r in runs if r.event == query["event"]]
        if "head_sha" in query:
            runs = [r for r in runs if r.head_sha == query["head_sha"]]
        if "status" in query:
            wanted = query["status"]
            runs = [r for r in runs if (r.status if wanted in RUN_STATUSES else r.conclusion) == wanted]
        runs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        reachable = len(runs)
        if any(f in query for f in RUN_FILTERS):
            reachable = min(reachable, FILTERED_RESULTS_CAP)
        page, links = _page(request, runs[:reachable], reachable, link_base)
        raise _json({"total_count": len(runs), "workflow_runs": [r.json(self.fake.api_url) for r in page]}, links)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    return any(t.strip() == "*" or t.strip().removeprefix("W/") == wanted for t in header.split(","))


def _page(request: Request, items: list[Any], reachable: int, link_base: str) -> tuple[list[Any], str | None]:
    """This request's page of `items` and its Link header (None when one page holds all)."""
    try:
        per_page = int(request.query.get("per_page", DEFAULT_PER_PAGE))
    except ValueError:
        per_page = DEFAULT_PER_PAGE
    per_page = min(max(per_page, 1), MAX_PER_PAGE) if per_page > 0 else DEFAULT_PER_PAGE
    try:
        page = max(int(request.query.get("page", 1)), 1)
    except ValueError:
        page = 1
    last = max(1, -(-reachable // per_page))
    pairs = urllib.parse.parse_qsl(request.path.partition("?")[2], keep_blank_values=True)

    def url(number: int) -> str:
        out = [(k, str(number) if k == "page" else v) for k, v in pairs]
        if not any(k == "page" for k, _ in pairs):
            out.append(("page", str(number)))
        return f"{link_base}?{urllib.parse.urlencode(out)}"

    rels: list[tuple[str, int]] = []
    if page > 1:
        rels.append(("prev", min(page - 1, last)))
    if page < last:
        rels += [("next", page + 1), ("last", last)]
    if page > 1:
        rels.append(("first", 1))
    links = ", ".join(f'<{url(n)}>; rel="{rel}"' for rel, n in rels) or None
    start = (page - 1) * per_page
    return items[start:start + per_page] if start < reachable else [], links


def _json(body: Any, link: str | None = None) -> Reply:
    return Reply(200, json.dumps(body, separators=(",", ":")).encode(), content_type="application/json; charset=utf-8",
                 headers={"Link": link} if link else {})


def _error(status: int, message: str, documentation_url: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"message": message, "documentation_url": documentation_url, "status": str(status)}
    return Reply(status, json.dumps(body, separators=(",", ":")).encode(),
                 content_type="application/json; charset=utf-8", headers=dict(headers or {}))


def routes(fake: FakeCI) -> list[Route]:
    return fake.github.routes()
