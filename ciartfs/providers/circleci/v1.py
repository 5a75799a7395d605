"""CircleCI API v1.1: answers turned into plain records, and the directory layout

    <vcs>/<user>/<project>/{<build>, latest -> <build>, branch/<branch>/latest -> ../../<build>}
    <vcs>/<user>/<project>/<build>/<node_index>/<artifact path>

Every API answer is validated here: a wrong shape raises `BadListing` (EIO for that listing)
with a log line, never a stray KeyError. Nothing here knows about FUSE or caching.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import httpx
import trio

from ciartfs.data.sources import source_for_name
from ciartfs.errors import BadListing, CiartfsError, Forbidden, NotFound, redact_url
from ciartfs.namespace.model import Artifact, CompleteDir, Entry, Kind, StaticDir, many_made
from ciartfs.namespace.names import place_artifacts
from ciartfs.namespace.packed import KeptListings, Packed, pack, unpack
from ciartfs.net.credentials import HeaderCredential, origin_of
from ciartfs.net.wire import parse_url
from ciartfs.providers import parse_time
from ciartfs.providers.apidocs import ApiDocs, Keep

log = logging.getLogger(__name__)

VCS_TYPES = ("github", "bitbucket")
PAGE_LIMIT = 100  # the v1.1 API refuses limit > 100
# CircleCI serves artifact URLs from per-build subdomains of this host; they take the token.
ARTIFACT_HOST_SUFFIX = ".circle-artifacts.com"
_ARTIFACT_HOST_RE = re.compile(r"^[a-z0-9-]+(?:\.[a-z0-9-]+)*\.circle-artifacts\.com$")
_BUILD_NUM_RE = re.compile(r"^[1-9][0-9]{0,17}$")


def credential(host: str, token: str | None) -> HeaderCredential | None:
    """The token goes to the CircleCI host and its artifact hosts, nowhere else (and there only
    on requests built here or recognised by `artifact_url_takes_token`)."""
    if not token:
        return None
    return HeaderCredential(
        headers={"Circle-Token": token},
        origins=frozenset({origin_of(host)}),
        https_host_suffixes=(ARTIFACT_HOST_SUFFIX,),
    )


def not_visible(where: str, token_set: bool) -> str:
    """The log line for a 404 at a project, build or job: CircleCI answers 404 "Project not
    found" (text/plain), not 401, for a private project asked for without a token, or with one
    that cannot see it; a typo in the name looks the same."""
    who = "with this token" if token_set else "without a token (set CIRCLE_TOKEN or --circleci-token-file)"
    return f"{where}: not found, or not visible {who}: CircleCI answers 404 for private projects it does not show"


def refused(url: str, status: int | None, token_set: bool) -> str:
    """The log line for a 401/403 from CircleCI: without a token, say that one is needed
    (v2 artifact and workflow endpoints answer 401 without one even for public projects)."""
    code = f"HTTP {status}" if status else "refused"
    if not token_set:
        return (f"{redact_url(url)}: {code}: CircleCI needs an API token for this "
                "(none is set: set CIRCLE_TOKEN or --circleci-token-file)")
    return f"{redact_url(url)}: {code}: CircleCI refused the API token (expired, revoked, or without access)"


class TokenAwareDocs:
    """`ApiDocs.get_json` whose 401/403 errors say what to do about the token."""

    def __init__(self, docs: ApiDocs, token_set: bool) -> None:
        self.docs = docs
        self.token_set = token_set

    async def get_json(self, url: str, params: Any = None, *, keep: Keep = None) -> Any:
        try:
            return await self.docs.get_json(url, params, keep=keep)
        except Forbidden as e:
            raise Forbidden(refused(url, e.status, self.token_set), e.status) from None


def encode_branch(branch: str) -> str:
    """A branch name as a file name: '%' -> '%25', '/' -> '%2F' (reversible)."""
    return branch.replace("%", "%25").replace("/", "%2F")


def decode_branch(name: str) -> str | None:
    """Inverse of encode_branch; None if `name` is not the encoding of any branch."""
    branch = name.replace("%2F", "/").replace("%25", "%")
    return branch if encode_branch(branch) == name and branch else None


@dataclasses.dataclass(frozen=True)
class Build:
    num: int
    branch: str | None
    status: str
    lifecycle: str
    start_time: float | None
    stop_time: float | None
    revision: str | None
    outcome: str | None = None

    @property
    def completed(self) -> bool:
        return self.lifecycle == "finished"

    @property
    def mtime(self) -> float:
        return self.stop_time or self.start_time or 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class ArtifactRecord:
    path: str
    node_index: int
    url: str


def _opt_str(doc: dict[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise BadListing(f"{where}: field {key!r} is {type(value).__name__}, not a string")
    return value


def parse_build(doc: Any, where: str) -> Build:
    if not isinstance(doc, dict):
        raise BadListing(f"{where}: a build is {type(doc).__name__}, not an object")
    num = doc.get("build_num")
    if not isinstance(num, int) or isinstance(num, bool) or num <= 0:
        raise BadListing(f"{where}: build_num missing or not a positive integer")
    return Build(
        num=num,
        branch=_opt_str(doc, "branch", where),
        status=_opt_str(doc, "status", where) or "",
        lifecycle=_opt_str(doc, "lifecycle", where) or "",
        start_time=parse_time(doc.get("start_time")),
        stop_time=parse_time(doc.get("stop_time")),
        revision=_opt_str(doc, "vcs_revision", where),
        outcome=_opt_str(doc, "outcome", where),
    )


def parse_builds(doc: Any, where: str) -> list[Build]:
    if not isinstance(doc, list):
        raise BadListing(f"{where}: expected a list of builds, got {type(doc).__name__}")
    return [parse_build(item, where) for item in doc]


def parse_artifacts(doc: Any, where: str) -> list[ArtifactRecord]:
    """Validate the artifacts listing. A wrong shape fails the whole listing; a URL that is
    not http(s) only drops that artifact (it is data we will not fetch)."""
    if not isinstance(doc, list):
        raise BadListing(f"{where}: expected a list of artifacts, got {type(doc).__name__}")
    records = []
    for item in doc:
        if not isinstance(item, dict):
            raise BadListing(f"{where}: an artifact is {type(item).__name__}, not an object")
        path, node, url = item.get("path"), item.get("node_index"), item.get("url")
        if not isinstance(path, str):
            raise BadListing(f"{where}: artifact 'path' missing or not a string")
        if not isinstance(node, int) or isinstance(node, bool) or node < 0:
            raise BadListing(f"{where}: artifact 'node_index' missing or not a non-negative integer")
        if not isinstance(url, str):
            raise BadListing(f"{where}: artifact 'url' missing or not a string")
        if not url.startswith(("http://", "https://")) and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            log.warning("%s: skipped artifact %r: its URL is not http(s)", where, path[:120])
            continue
        records.append(ArtifactRecord(path, node, url))
    return records


def artifact_url_takes_token(url: str, host: str, where: str, node: int) -> bool:
    """Whether an artifact URL from a listing (of build `where`, "vcs/user/project/build", on
    CircleCI `host`) may carry the token. A listing's URL is taken as given, so only two shapes:

    - CircleCI's documented one, https on port 443 of a `*.circle-artifacts.com` host
      ("https://24-88881093-gh.circle-artifacts.com/0/path");
    - on the configured host itself, its artifact route for this very build and node,
      "/artifacts/<vcs>/<user>/<project>/<build>/<node>/<path>" (each part percent-encoded): the
      fake server's (and the demo's) stand-in for circle-artifacts.com.

    Anything else, above all the host's own API ("/api/v1.1/me") or another project's files,
    is fetched without it. The path checked is the one that would be sent (after httpx's
    normalising of dot segments), and no segment may decode to "." or "..".
    """
    try:
        target = parse_url(url)
        api = parse_url(host)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return False
    segments = target.path.split("?", 1)[0].split("/")
    if any(urllib.parse.unquote(part) in (".", "..") for part in segments):
        return False
    if target.origin[0] == "https" and target.port == 443 and _ARTIFACT_HOST_RE.match(target.host):
        return True
    expected = ["", "artifacts", *where.split("/"), str(node)]
    decoded = [urllib.parse.unquote(part) for part in segments[:len(expected)]]
    return target.origin == api.origin and decoded == expected and any(segments[len(expected):])


# An artifact URL whose path is made of unreserved characters only (nothing percent-encoded,
# no query, no userinfo): parsing it changes nothing, so its token verdict is that of any such
# URL with the same origin and first path segments (see TokenVerdicts).
_PLAIN_ARTIFACT_URL_RE = re.compile(r"(https?://[a-z0-9.-]+(?::[0-9]{1,5})?)((?:/[A-Za-z0-9._~-]*)+)")
_PLAIN_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+")


class TokenVerdicts:
    """`artifact_url_takes_token` for the many URLs of one listing, at a dict look-up each: a
    plain URL's verdict depends only on its origin and the path segments the rule compares (and
    on having no '.'/'..' segment and a non-empty one after them), so it is decided once per
    (origin, those segments), by the rule itself, on a stand-in URL with the same ones. Anything
    else asks the rule. (Re-listing 100k artifacts after the kernel forgot them: seconds less.)"""

    def __init__(self, host: str, where: str) -> None:
        self.host, self.where = host, where
        self._compared = 3 + len(where.split("/"))  # "", "artifacts", *where, node
        self._known: dict[tuple[str, tuple[str, ...], int], bool] = {}
        # (a plain URL's part before its last '/', node) -> verdict, when that part holds every
        # compared segment: a plain last segment then changes nothing (a listing's files share it)
        self._by_head: dict[tuple[str, int], bool] = {}

    def __call__(self, url: str, node: int) -> bool:
        head, _, name = url.rpartition("/")
        verdict = self._by_head.get((head, node))
        if verdict is not None and name not in (".", "..") and _PLAIN_SEGMENT_RE.fullmatch(name):
            return verdict
        m = _PLAIN_ARTIFACT_URL_RE.fullmatch(url)
        if m is None:
            return artifact_url_takes_token(url, self.host, self.where, node)
        origin, path = m.groups()
        segments = path.split("/")
        n = self._compared
        if "." in segments or ".." in segments or len(segments) <= n or not any(segments[n:]):
            return artifact_url_takes_token(url, self.host, self.where, node)
        key = (origin, tuple(segments[:n]), node)
        verdict = self._known.get(key)
        if verdict is None:
            stand_in = origin + "/".join(segments[:n]) + "/x"
            verdict = self._known[key] = artifact_url_takes_token(stand_in, self.host, self.where, node)
        if len(segments) > n + 1:
            self._by_head[(head, node)] = verdict
        return verdict


class CircleCIApi:
    """The v1.1 endpoints we use, returning records."""

    def __init__(self, docs: ApiDocs, host: str, *, token_set: bool = False) -> None:
        self.docs = TokenAwareDocs(docs, token_set)
        self.token_set = token_set
        self.host = host
        self.api = host + "/api/v1.1"
        self.host_id = urllib.parse.urlsplit(host).netloc  # for cache keys: host, never secrets
        self.kept: KeptNodes = KeptListings()  # completed builds' listings, placed, by "vcs/user/project/build"

    def _project_url(self, vcs: str, user: str, project: str) -> str:
        def q(s: str) -> str:
            return urllib.parse.quote(s, safe="")

        return f"{self.api}/project/{q(vcs)}/{q(user)}/{q(project)}"

    async def recent_builds(self, vcs: str, user: str, project: str, count: int, *,
                            branch: str | None = None, filter: str | None = None, keep: Keep = None) -> list[Build]:
        """The newest `count` builds, paging with limit <= 100 and offset."""
        url = self._project_url(vcs, user, project)
        if branch is not None:
            url += "/tree/" + urllib.parse.quote(branch, safe="")
        builds: list[Build] = []
        while len(builds) < count:
            limit = min(PAGE_LIMIT, count - len(builds))
            params: dict[str, str | int] = {"limit": limit, "offset": len(builds), "shallow": "true"}
            if filter:
                params["filter"] = filter
            page = parse_builds(await self.docs.get_json(url, params, keep=keep), url)
            builds.extend(page)
            if len(page) < limit:
                break
        return builds[:count]

    async def latest_completed(self, vcs: str, user: str, project: str, branch: str | None = None) -> Build | None:
        builds = await self.recent_builds(vcs, user, project, 1, branch=branch, filter="completed")
        return builds[0] if builds else None

    async def build(self, vcs: str, user: str, project: str, num: int) -> Build:
        url = f"{self._project_url(vcs, user, project)}/{num}"
        finished = lambda doc: isinstance(doc, dict) and doc.get("lifecycle") == "finished"  # noqa: E731
        return parse_build(await self.docs.get_json(url, keep=finished), url)

    async def build_and_artifacts(self, vcs: str, user: str, project: str,
                                  num: int) -> tuple[Build, list[ArtifactRecord] | None]:
        """The build and its artifact list, asked for at once (one round trip, not two, before
        the first file of a build can be opened). The list is kept if the build turns out to
        be completed. A failing list is left for the build directory to ask again (None), as is
        one kept placed (`kept`: the build directory lists it from there)."""
        url = f"{self._project_url(vcs, user, project)}/{num}/artifacts"
        got_build = trio.Event()
        build: list[Build] = []
        records: list[list[ArtifactRecord]] = []

        failed: list[CiartfsError] = []

        async def fetch_build() -> None:
            try:
                build.append(await self.build(vcs, user, project, num))
            except CiartfsError as e:
                failed.append(e)
            finally:
                got_build.set()

        async def completed(_doc: Any) -> bool:
            await got_build.wait()
            return bool(build) and build[0].completed

        async def fetch_artifacts() -> None:
            try:
                records.append(parse_artifacts(await self.docs.get_json(url, keep=completed), url))
            except CiartfsError as e:
                log.debug("%s: %s (asked again when the build is listed)", redact_url(url), e)

        async with trio.open_nursery() as nursery:
            if build_where(vcs, user, project, num) not in self.kept:
                nursery.start_soon(fetch_artifacts)
            await fetch_build()
            if failed:
                nursery.cancel_scope.cancel()
        if failed:
            raise failed[0]  # the build's own error (NotFound: no such build), as itself
        return build[0], (records[0] if records else None)

    async def artifacts(self, vcs: str, user: str, project: str, num: int, *, completed: bool) -> list[ArtifactRecord]:
        """A completed build's list never changes: it is kept (see docs.ApiDocs)."""
        url = f"{self._project_url(vcs, user, project)}/{num}/artifacts"
        return parse_artifacts(await self.docs.get_json(url, keep=completed), url)


# -- the directory layout --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Project:
    api: CircleCIApi
    vcs: str
    user: str
    name: str
    recent: int
    ttl: float
    # More entries for the project directory from other providers (v2's pipeline/).
    extras: Callable[[str, str, str], list[Entry]] | None = None

    def extra_entries(self) -> list[Entry]:
        return self.extras(self.vcs, self.user, self.name) if self.extras else []

    @property
    def where(self) -> str:
        return build_where(self.vcs, self.user, self.name)


def build_where(vcs: str, user: str, project: str, num: int | None = None) -> str:
    """A project's or build's place: in log lines, and the key of its kept listing (one spelling,
    so that a build whose listing is kept is never fetched again with it)."""
    project_where = f"{vcs}/{user}/{project}"
    return project_where if num is None else f"{project_where}/{num}"


def root_entries(api: CircleCIApi, *, recent_builds: int, ttl: float, mtime: float,
                 extras: Callable[[str, str, str], list[Entry]] | None = None) -> list[Entry]:
    """The top-level directories this provider adds to the mount: github/, bitbucket/."""
    return [Entry(vcs, Kind.DIR, mtime=mtime, immutable=True,
                  source=_VcsDir(api, vcs, recent_builds, ttl, mtime, extras)) for vcs in VCS_TYPES]


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\x00" not in name


class _VcsDir:
    """Users cannot be enumerated: list() is empty, any user name looks up."""

    ttl = None
    complete = False

    def __init__(self, api: CircleCIApi, vcs: str, recent: int, ttl: float, mtime: float,
                 extras: Callable[[str, str, str], list[Entry]] | None) -> None:
        self.api, self.vcs, self.recent, self.ttl_mutable, self.mtime = api, vcs, recent, ttl, mtime
        self.extras = extras

    async def list(self) -> list[Entry] | None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        if not _plain_name(name):
            return None
        return Entry(name, Kind.DIR, mtime=self.mtime, immutable=True,
                     source=_UserDir(self.api, self.vcs, name, self.recent, self.ttl_mutable, self.mtime, self.extras))


class _UserDir:
    """Projects cannot be enumerated in v1.1 without the user's token; any name looks up,
    and exists if the API knows the project."""

    ttl = None
    complete = False

    def __init__(self, api: CircleCIApi, vcs: str, user: str, recent: int, ttl: float, mtime: float,
                 extras: Callable[[str, str, str], list[Entry]] | None) -> None:
        self.api, self.vcs, self.user, self.recent, self.ttl_mutable, self.mtime = api, vcs, user, recent, ttl, mtime
        self.extras = extras

    async def list(self) -> list[Entry] | None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        if not _plain_name(name):
            return None
        project = _Project(self.api, self.vcs, self.user, name, self.recent, self.ttl_mutable, self.extras)
        try:  # a project that exists goes on existing: this answer is kept
            await self.api.recent_builds(self.vcs, self.user, name, 1, keep=True)
        except NotFound:
            # (a dot name is a tool probing, .git for a shell prompt: not worth a warning)
            log.log(logging.DEBUG if name.startswith(".") else logging.WARNING, "%s",
                    not_visible(f"{self.vcs}/{self.user}/{name}", self.api.token_set))
            return None
        info = {"source": json.dumps({"provider": "circleci", "host": self.api.host, "vcs": self.vcs,
                                      "user": self.user, "project": name})}
        return Entry(name, Kind.DIR, mtime=self.mtime, immutable=False, source=_ProjectDir(project), info=info)


def _build_entry(project: _Project, build: Build, records: list[ArtifactRecord] | None = None) -> Entry:
    info = {"build": json.dumps({
        "build_num": build.num, "branch": build.branch, "revision": build.revision, "status": build.status,
        "outcome": build.outcome, "lifecycle": build.lifecycle, "start_time": build.start_time,
        "stop_time": build.stop_time}), "source": _source(project, build.num)}
    return Entry(str(build.num), Kind.DIR, mtime=build.mtime, immutable=build.completed,
                 source=_BuildDir(project, build, records), info=info)


def _source(project: _Project, build: int, node: int | None = None) -> str:
    doc: dict[str, object] = {"provider": "circleci", "host": project.api.host, "vcs": project.vcs,
                              "user": project.user, "project": project.name, "build": build}
    if node is not None:
        doc["node"] = node
    return json.dumps(doc)


class _ProjectDir:
    """Recent builds, `latest` and `branch/`; any other build number resolves on lookup."""

    complete = False

    def __init__(self, project: _Project) -> None:
        self.p = project
        self.ttl = project.ttl

    async def list(self) -> list[Entry]:
        p = self.p
        builds = await p.api.recent_builds(p.vcs, p.user, p.name, p.recent)
        entries = [_build_entry(p, b) for b in builds]
        latest = next((b for b in builds if b.completed), None)
        if latest is None and len(builds) == p.recent:
            latest = await p.api.latest_completed(p.vcs, p.user, p.name)
        if latest is not None:
            entries.append(Entry("latest", Kind.LINK, mtime=latest.mtime, target=str(latest.num)))
        entries.append(Entry("branch", Kind.DIR, mtime=max((b.mtime for b in builds), default=0.0),
                             source=_BranchesDir(p)))
        return entries + p.extra_entries()

    async def lookup(self, name: str) -> Entry | None:
        p = self.p
        if name == "latest":
            latest = await p.api.latest_completed(p.vcs, p.user, p.name)
            return None if latest is None else Entry("latest", Kind.LINK, mtime=latest.mtime, target=str(latest.num))
        if name == "branch":
            return Entry("branch", Kind.DIR, source=_BranchesDir(p))
        extra = next((e for e in p.extra_entries() if e.name == name), None)
        if extra is not None:
            return extra
        if not _BUILD_NUM_RE.match(name):
            return None
        try:
            build, records = await p.api.build_and_artifacts(p.vcs, p.user, p.name, int(name))
        except NotFound:
            return None
        return _build_entry(p, build, records)


class _BranchesDir:
    """Branches seen among the recent builds; any other branch looks up by encoded name."""

    complete = False

    def __init__(self, project: _Project) -> None:
        self.p = project
        self.ttl = project.ttl

    async def list(self) -> list[Entry]:
        p = self.p
        names: dict[str, float] = {}
        for b in await p.api.recent_builds(p.vcs, p.user, p.name, p.recent):
            if b.branch:
                name = encode_branch(b.branch)
                names[name] = max(names.get(name, 0.0), b.mtime)
        return [Entry(n, Kind.DIR, mtime=t, source=_BranchDir(self.p, decode_branch(n) or "")) for n, t in names.items()]

    async def lookup(self, name: str) -> Entry | None:
        branch = decode_branch(name)
        if branch is None:
            return None
        p = self.p
        builds = await p.api.recent_builds(p.vcs, p.user, p.name, 1, branch=branch)
        if not builds:
            return None
        return Entry(name, Kind.DIR, mtime=builds[0].mtime, source=_BranchDir(p, branch))


class _BranchDir(CompleteDir):
    def __init__(self, project: _Project, branch: str) -> None:
        self.p, self.branch = project, branch
        self.ttl = project.ttl

    async def list(self) -> list[Entry]:
        p = self.p
        latest = await p.api.latest_completed(p.vcs, p.user, p.name, branch=self.branch)
        if latest is None:
            return []
        return [Entry("latest", Kind.LINK, mtime=latest.mtime, target=f"../../{latest.num}")]


class _BuildDir(CompleteDir):
    """One directory per node_index with artifacts; below, the artifact paths."""

    def __init__(self, project: _Project, build: Build, records: list[ArtifactRecord] | None = None) -> None:
        self.p, self.build = project, build
        self.ttl = None if build.completed else project.ttl
        self._fetched = records  # already fetched with the build: used for the first listing

    async def list(self) -> list[Entry]:
        p, b = self.p, self.build
        where = build_where(p.vcs, p.user, p.name, b.num)
        records: list[ArtifactRecord] | list[PackedNode] | None = self._fetched
        self._fetched = None
        if records is None and b.completed:
            records = p.api.kept.get(where)
        if records is None:
            records = await p.api.artifacts(p.vcs, p.user, p.name, b.num, completed=b.completed)
        with many_made():
            return node_entries(records, host=p.api.host, host_id=p.api.host_id, where=where, mtime=b.mtime,
                                immutable=b.completed, ttl=self.ttl, source=lambda node: _source(p, b.num, node),
                                kept=p.api.kept)


@dataclasses.dataclass(frozen=True, slots=True)
class PackedNode:
    """One node directory's files as placed (safe paths, duplicates resolved, token verdicts
    given), packed (namespace/packed.py): one text column, the URLs; flags, 1 where a URL may
    carry the token."""

    node: int
    files: Packed[ArtifactRecord]


# A completed build's (or job's) nodes, kept by "vcs/user/project/build" (one store per host,
# shared by v1.1 and v2: a job is a build).
KeptNodes = KeptListings[list[PackedNode]]


def place_nodes(records: list[ArtifactRecord], *, host: str, where: str) -> list[PackedNode]:
    """The safe artifacts of each node_index, placed (see place_artifacts), packed. A URL
    holding a NUL (it could not be joined) leaves its file out, as one that is not http(s)."""
    by_node: dict[int, list[ArtifactRecord]] = defaultdict(list)
    for r in records:
        if "\0" in r.url:
            log.warning("%s: skipped artifact %r: its URL holds a NUL byte", where, r.path[:120])
            continue
        by_node[r.node_index].append(r)
    packed = []
    takes_token = TokenVerdicts(host, where)
    for node, recs in sorted(by_node.items()):
        tree = place_artifacts(((r.path, r) for r in recs), where=f"{where}/{node}", tiebreak=lambda r: r.url)
        files = pack(tree, columns=lambda _, r: (r.url,), width=1,
                     flags=lambda _, r: takes_token(r.url, node))  # noqa: B023 (called at once)
        if files is not None and len(files):  # nothing safe to show: no empty node directory
            packed.append(PackedNode(node, files))
    return packed


def node_entries(records: list[ArtifactRecord] | list[PackedNode], *, host: str, host_id: str, where: str,
                 mtime: float, immutable: bool, ttl: float | None, source: Callable[[int], str],
                 kept: KeptNodes | None = None, kept_as: str | None = None) -> list[Entry]:
    """One directory per node_index with safe artifacts; below, the artifact paths. Shared by
    v1.1 builds and v2 jobs (same cache keys: a job's blocks are cached once). `records` may be
    what `place_nodes` made of them (kept); `kept`: where a completed build's is kept, as
    `kept_as` (default `where`)."""
    if records and isinstance(records[0], PackedNode):
        packed = records
    else:
        packed = place_nodes(cast(list[ArtifactRecord], records), host=host, where=where)
        if kept is not None and immutable:
            kept.put(kept_as or where, packed, sum(p.files.size for p in packed))
    entries = []
    for placed in packed:
        node_where = f"{where}/{placed.node}"
        info = {"source": source(placed.node)}
        key_prefix = f"circleci|{host_id}|{node_where}/"

        def make(path: str, i: int, files: Packed[ArtifactRecord] = placed.files, key_prefix: str = key_prefix) -> Artifact:
            return Artifact(key=key_prefix + path, url=files.text(0, i), immutable=immutable,
                            credentialed=files.flags[i] == 1, source=source_for_name(path))

        children, files = unpack(placed.files, make, mtime=mtime, immutable=immutable, ttl=ttl, info=info)
        entries.append(Entry(str(placed.node), Kind.DIR, mtime=mtime, immutable=immutable,
                             source=StaticDir(children, ttl=ttl, files=files), info=info))
    return entries
