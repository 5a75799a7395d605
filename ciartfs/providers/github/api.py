"""The GitHub Actions REST endpoints we use, answers validated into records.

Every answer is checked here: a wrong shape raises `BadListing` (EIO for that listing) with a
log line, never a stray KeyError. Listings are paged by `Link: <...>; rel="next"`; a next URL
is followed only when it is the same endpoint (origin and path) as the first page, so a
server cannot steer the token elsewhere, and a page that repeats ends the listing as an error.

Requests: `Accept: application/vnd.github+json` and `X-GitHub-Api-Version` go on every request
built for the API origin, with `Authorization: Bearer <token>` when a token is set (one
`HeaderCredential` scoped to the API origin: never on the blob host a download redirects to).
Listings that can change are asked again with `If-None-Match` (apidocs.get_page): GitHub does
not count a 304 against the rate limit. The budget the API states in `X-RateLimit-*` is what
`ciartfs status` shows (`live_status`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import urllib.parse
from typing import Any

import httpx

from ciartfs.errors import BadListing, Forbidden, redact_url
from ciartfs.net.credentials import HeaderCredential, origin_of
from ciartfs.net.wire import parse_url
from ciartfs.providers import parse_time
from ciartfs.providers.apidocs import ApiDocs, Keep

log = logging.getLogger(__name__)

API_VERSION = "2022-11-28"
PER_PAGE = 100  # GitHub's maximum
MAX_PAGES = 2000  # a listing longer than this (200k runs or artifacts) is refused, not followed for ever
RUN_ID_RE = re.compile(r"^[1-9][0-9]{0,18}$")


def credential(api_url: str, token: str | None) -> HeaderCredential:
    """What every request to the API origin carries: the media type and API version GitHub
    asks for, and the token when one is set. Scoped to that one origin, under the API's
    repository paths (another CI system's API on the same origin gets none of it)."""
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = parse_url(api_url).path.rstrip("/")
    return HeaderCredential(headers=headers, origins=frozenset({origin_of(api_url)}),
                            path_prefixes=(f"{base}/repos/", f"{base}/repositories/"))


def needs_token(where: str) -> str:
    return (f"{where}: downloading GitHub Actions artifacts needs a token, even from public repositories "
            "(set GH_TOKEN or GITHUB_TOKEN, or --github-token-file)")


@dataclasses.dataclass(frozen=True)
class Run:
    id: int
    name: str | None
    branch: str | None
    sha: str | None
    workflow: str | None  # the workflow file's path, ".github/workflows/ci.yml"
    event: str | None
    status: str | None
    conclusion: str | None
    created: float | None
    updated: float | None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def mtime(self) -> float:
        return self.updated or self.created or 0.0

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "branch": self.branch, "sha": self.sha,
                "workflow": self.workflow, "event": self.event, "status": self.status,
                "conclusion": self.conclusion, "created_at": self.created, "updated_at": self.updated}


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    id: int
    name: str
    size: int | None
    expired: bool
    digest: str | None  # "sha256:<hex>" over the stored blob (v4 artifacts)
    created: float | None
    updated: float | None

    @property
    def sha256(self) -> str | None:
        if self.digest and self.digest.startswith("sha256:") and re.fullmatch(r"[0-9a-f]{64}", self.digest[7:]):
            return self.digest[7:]
        return None


def _int(doc: dict[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadListing(f"{where}: field {key!r} missing or not a positive integer")
    return value


def _str(doc: dict[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise BadListing(f"{where}: field {key!r} is {type(value).__name__}, not a string")
    return value


def _object(doc: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadListing(f"{where}: {what} is {type(doc).__name__}, not an object")
    return doc


def parse_run(doc: Any, where: str) -> Run:
    doc = _object(doc, "a workflow run", where)
    return Run(
        id=_int(doc, "id", where), name=_str(doc, "name", where), branch=_str(doc, "head_branch", where),
        sha=_str(doc, "head_sha", where), workflow=_str(doc, "path", where), event=_str(doc, "event", where),
        status=_str(doc, "status", where), conclusion=_str(doc, "conclusion", where),
        created=parse_time(doc.get("created_at")), updated=parse_time(doc.get("updated_at")),
    )


def parse_artifact(doc: Any, where: str) -> ArtifactInfo:
    doc = _object(doc, "an artifact", where)
    name = doc.get("name")
    if not isinstance(name, str):
        raise BadListing(f"{where}: artifact 'name' missing or not a string")
    size = doc.get("size_in_bytes")
    expired = doc.get("expired", False)
    if not isinstance(expired, bool):
        raise BadListing(f"{where}: artifact 'expired' is not a boolean")
    return ArtifactInfo(
        id=_int(doc, "id", where), name=name,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        expired=expired, digest=_str(doc, "digest", where),
        created=parse_time(doc.get("created_at")), updated=parse_time(doc.get("updated_at")),
    )


def _items(doc: Any, field: str, where: str) -> list[Any]:
    items = _object(doc, "a listing", where).get(field)
    if not isinstance(items, list):
        raise BadListing(f"{where}: {field!r} missing or not a list")
    return items


class ActionsApi:
    """The endpoints we use, returning records (see the module docstring)."""

    def __init__(self, docs: ApiDocs, api_url: str, *, token_set: bool) -> None:
        self.docs = docs
        self.api_url = api_url
        self.token_set = token_set
        self.host_id = urllib.parse.urlsplit(api_url).netloc  # for cache keys: never secrets
        self._base_path = parse_url(api_url).path.split("?", 1)[0].rstrip("/")  # "" or "/api/v3"

    def repo_url(self, owner: str, repo: str) -> str:
        return f"{self.api_url}/repos/{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(repo, safe='')}"

    async def _pages(self, url: str, params: dict[str, str | int], field: str, *, limit: int,
                     keep: Keep = None) -> list[Any]:
        """Items of a listing paged by Link headers, up to `limit` of them."""
        first = url + "?" + urllib.parse.urlencode(params)
        endpoint = parse_url(first)
        items: list[Any] = []
        seen = {first}
        page_url: str | None = first
        while page_url is not None and len(items) < limit:
            try:
                reply = await self.docs.get_page(page_url, keep=keep)
            except Forbidden as e:
                raise Forbidden(self._refused(page_url, e.status), e.status) from None
            items.extend(_items(reply.doc, field, page_url))
            page_url = reply.next_url
            if page_url is None:
                break
            try:
                target = parse_url(urllib.parse.urljoin(first, page_url))
            except (ValueError, httpx.InvalidURL, httpx.UnsupportedProtocol):
                raise BadListing(f"{redact_url(first)}: a next page's URL is invalid") from None
            if (target.origin, self._endpoint(target.path)) != (endpoint.origin, self._endpoint(endpoint.path)):
                raise BadListing(f"{redact_url(first)}: the next page is another endpoint ({redact_url(page_url)}); "
                                 "not followed")
            if page_url in seen or len(seen) >= MAX_PAGES:
                raise BadListing(f"{redact_url(first)}: the pages repeat or do not end; refusing to loop")
            seen.add(page_url)
        return items[:limit]

    def _endpoint(self, path: str) -> str | None:
        """What a page's path names, whichever of GitHub's two spellings of a repository it
        uses: its Link headers say `/repositories/<id>/...` where we asked `/repos/<o>/<r>/...`.
        None for a path outside the API's base path."""
        path = path.split("?", 1)[0]
        if not path.startswith(self._base_path + "/"):
            return None
        parts = path[len(self._base_path) + 1:].split("/")
        if parts[:1] == ["repos"] and len(parts) >= 3:
            return "/".join(parts[3:])
        if parts[:1] == ["repositories"] and len(parts) >= 2 and parts[1].isdigit():
            return "/".join(parts[2:])
        return None

    def _refused(self, url: str, status: int | None) -> str:
        code = f"HTTP {status}" if status else "refused"
        if not self.token_set:
            return (f"{redact_url(url)}: {code}: GitHub needs a token for this "
                    "(none is set: set GH_TOKEN or GITHUB_TOKEN, or --github-token-file)")
        return f"{redact_url(url)}: {code}: GitHub refused the token (expired, revoked, or without access)"

    async def runs(self, owner: str, repo: str, count: int, *, branch: str | None = None,
                   workflow: str | None = None, status: str | None = None, keep: Keep = None) -> list[Run]:
        """The newest `count` runs (of one workflow file, on one branch, with one status)."""
        url = self.repo_url(owner, repo) + "/actions"
        url += f"/workflows/{urllib.parse.quote(workflow, safe='')}/runs" if workflow else "/runs"
        params: dict[str, str | int] = {"per_page": min(PER_PAGE, max(1, count))}
        if branch is not None:
            params["branch"] = branch
        if status is not None:
            params["status"] = status
        return [parse_run(doc, url) for doc in await self._pages(url, params, "workflow_runs", limit=count, keep=keep)]

    async def run(self, owner: str, repo: str, run_id: int) -> Run:
        url = f"{self.repo_url(owner, repo)}/actions/runs/{run_id}"
        completed = lambda doc: isinstance(doc, dict) and doc.get("status") == "completed"  # noqa: E731
        try:
            return parse_run(await self.docs.get_json(url, keep=completed), url)
        except Forbidden as e:
            raise Forbidden(self._refused(url, e.status), e.status) from None

    async def artifacts(self, owner: str, repo: str, run_id: int, *, completed: bool) -> list[ArtifactInfo]:
        """A completed run's artifacts never change: its listing is kept (apidocs)."""
        url = f"{self.repo_url(owner, repo)}/actions/runs/{run_id}/artifacts"
        docs = await self._pages(url, {"per_page": PER_PAGE}, "artifacts", limit=PER_PAGE * MAX_PAGES, keep=completed)
        return [parse_artifact(doc, url) for doc in docs]

    def download_url(self, owner: str, repo: str, artifact_id: int) -> str:
        """Answers 302 to a signed blob URL valid for about a minute (the client reuses it
        while it works and asks here again when it fails)."""
        return f"{self.repo_url(owner, repo)}/actions/artifacts/{artifact_id}/zip"

    def live_status(self) -> dict[str, Any]:
        budget = self.docs.http.rate_limit(self.api_url)
        if budget is None:
            return {}
        return {"github_rate_remaining": budget.remaining, "github_rate_limit": budget.limit,
                "github_rate_reset": budget.reset}
