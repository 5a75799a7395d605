"""The `actions/` tree:

    actions/<owner>/<repo>/
      <run_id>/<artifact name>/<member path>   a zip artifact: its members (data/zipmember.py)
      <run_id>/<artifact name>                 an artifact uploaded without zipping: the file itself
      latest -> <run_id>                       newest successful completed run with an unexpired artifact
      branch/<branch>/latest -> ../../<run_id> the same on one branch ('/' written %2F, '%' as %25)
      workflow/<file>/latest -> ../../<run_id> the same for one workflow file (ci.yml)

Owners and repositories cannot be enumerated: `ls actions/` is empty and any name looks up.
Recent runs are listed (--recent-builds); any run id looks up. Expired artifacts are not shown,
and looking one up logs that it expired. A completed run's artifacts never change: its
listing, and the members of its zips, are kept like a completed CircleCI build's.

Whether an artifact is a zip is learned from its blob (data/zipmember.py reads the end of
it): so listing a run costs, per artifact, the download URL's resolution and a ranged read
of the zip's tail and central directory (concurrently, bounded), and nothing more. Without a
token nothing can be downloaded, so a run's artifacts are shown as directories that say so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import trio

from ciartfs.data.sources import TAIL_FIRST
from ciartfs.errors import CiartfsError, Forbidden, NotFound
from ciartfs.namespace.model import Artifact, CompleteDir, Entry, Kind
from ciartfs.namespace.names import name_problem, short
from ciartfs.providers.base import MountContext
from ciartfs.providers.circleci.v1 import decode_branch, encode_branch
from ciartfs.providers.github.api import RUN_ID_RE, ActionsApi, ArtifactInfo, Run, needs_token

log = logging.getLogger(__name__)

ROOT = "actions"
# Artifacts whose zip index is read at once when a run is listed.
ARCHIVE_PROBES = 16
# Runs looked at for `latest`: the newest successful ones, until one has an unexpired artifact.
LATEST_CANDIDATES = 10


def root_entry(api: ActionsApi, context: MountContext) -> Entry:
    return Entry(ROOT, Kind.DIR, mtime=context.mtime, immutable=True, source=_OwnersDir(api, context))


def _plain_name(name: str) -> bool:
    return name_problem(name) is None


class _OwnersDir:
    """Owners cannot be enumerated: list() is empty, any owner looks up."""

    ttl = None
    complete = False

    def __init__(self, api: ActionsApi, context: MountContext) -> None:
        self.api, self.context = api, context

    async def list(self) -> list[Entry] | None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        if not _plain_name(name):
            return None
        return Entry(name, Kind.DIR, mtime=self.context.mtime, immutable=True,
                     source=_OwnerDir(self.api, self.context, name))


class _OwnerDir:
    """Repositories cannot be enumerated either; one exists if its runs can be listed."""

    ttl = None
    complete = False

    def __init__(self, api: ActionsApi, context: MountContext, owner: str) -> None:
        self.api, self.context, self.owner = api, context, owner

    async def list(self) -> list[Entry] | None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        if not _plain_name(name):
            return None
        try:  # a repository that exists goes on existing: this answer is kept
            await self.api.runs(self.owner, name, 1, keep=True)
        except NotFound:
            who = "with this token" if self.api.token_set else "without a token (set GH_TOKEN or GITHUB_TOKEN)"
            log.log(logging.DEBUG if name.startswith(".") else logging.WARNING,
                    "%s/%s/%s: not found, or not visible %s: GitHub answers 404 for private repositories",
                    ROOT, self.owner, name, who)
            return None
        info = {"source": json.dumps({"provider": "github", "api": self.api.api_url, "owner": self.owner,
                                      "repo": name})}
        return Entry(name, Kind.DIR, mtime=self.context.mtime, source=_RepoDir(_Repo(self.api, self.context,
                                                                                      self.owner, name)), info=info)


class _Repo:
    def __init__(self, api: ActionsApi, context: MountContext, owner: str, name: str) -> None:
        self.api, self.context, self.owner, self.name = api, context, owner, name
        self.where = f"{ROOT}/{owner}/{name}"

    async def latest(self, *, branch: str | None = None, workflow: str | None = None) -> Run | None:
        """The newest run that completed with conclusion success and has an unexpired artifact."""
        runs = await self.api.runs(self.owner, self.name, LATEST_CANDIDATES, branch=branch, workflow=workflow,
                                   status="success")
        for run in runs:
            if run.completed and run.conclusion == "success":
                artifacts = await self.api.artifacts(self.owner, self.name, run.id, completed=True)
                if any(not a.expired for a in artifacts):
                    return run
        return None

    def run_entry(self, run: Run) -> Entry:
        info = {"run": json.dumps(run.describe()), "source": json.dumps(
            {"provider": "github", "api": self.api.api_url, "owner": self.owner, "repo": self.name, "run": run.id})}
        return Entry(str(run.id), Kind.DIR, mtime=run.mtime, immutable=run.completed,
                     source=_RunDir(self, run), info=info)


def _latest_link(run: Run | None, prefix: str = "") -> list[Entry]:
    return [] if run is None else [Entry("latest", Kind.LINK, mtime=run.mtime, target=f"{prefix}{run.id}")]


class _RepoDir:
    """Recent runs, `latest`, `branch/` and `workflow/`; any other run id resolves on lookup."""

    complete = False

    def __init__(self, repo: _Repo) -> None:
        self.r = repo
        self.ttl = repo.context.ttl

    async def list(self) -> list[Entry]:
        r = self.r
        runs = await r.api.runs(r.owner, r.name, r.context.recent_builds)
        mtime = max((run.mtime for run in runs), default=r.context.mtime)
        return [*(r.run_entry(run) for run in runs), *_latest_link(await r.latest()),
                Entry("branch", Kind.DIR, mtime=mtime, source=_ChoicesDir(r, "branch", runs)),
                Entry("workflow", Kind.DIR, mtime=mtime, source=_ChoicesDir(r, "workflow", runs))]

    async def lookup(self, name: str) -> Entry | None:
        r = self.r
        if name == "latest":
            return next(iter(_latest_link(await r.latest())), None)
        if name in ("branch", "workflow"):
            return Entry(name, Kind.DIR, mtime=r.context.mtime, source=_ChoicesDir(r, name, None))
        if not RUN_ID_RE.match(name):
            return None
        try:
            run = await r.api.run(r.owner, r.name, int(name))
        except NotFound:
            return None
        return r.run_entry(run)


def _workflow_file(run: Run) -> str | None:
    """The workflow's file name (`ci.yml`) from its path (`.github/workflows/ci.yml`)."""
    if not run.workflow:
        return None
    name = run.workflow.rsplit("/", 1)[-1]
    return name if _plain_name(name) else None


class _ChoicesDir:
    """`branch/` or `workflow/`: those seen among the recent runs are listed; any other looks up."""

    complete = False

    def __init__(self, repo: _Repo, by: str, runs: list[Run] | None) -> None:
        self.r, self.by = repo, by
        self.ttl = repo.context.ttl
        self._runs = runs  # the runs its parent listed with it: its first listing

    def _name(self, run: Run) -> str | None:
        if self.by == "branch":
            return encode_branch(run.branch) if run.branch else None
        return _workflow_file(run)

    async def list(self) -> list[Entry]:
        r = self.r
        runs, self._runs = self._runs, None
        if runs is None:
            runs = await r.api.runs(r.owner, r.name, r.context.recent_builds)
        names: dict[str, float] = {}
        for run in runs:
            name = self._name(run)
            if name:
                names[name] = max(names.get(name, 0.0), run.mtime)
        return [Entry(n, Kind.DIR, mtime=t, source=self._latest_dir(n)) for n, t in names.items() if self._latest_dir(n)]

    def _latest_dir(self, name: str) -> _LatestDir | None:
        if self.by == "branch":
            branch = decode_branch(name)
            return None if branch is None else _LatestDir(self.r, branch=branch)
        return _LatestDir(self.r, workflow=name) if _plain_name(name) else None

    async def lookup(self, name: str) -> Entry | None:
        source = self._latest_dir(name)
        if source is None:
            return None
        r = self.r
        try:
            runs = await r.api.runs(r.owner, r.name, 1, branch=source.branch, workflow=source.workflow)
        except NotFound:  # (an unknown workflow file is 404)
            return None
        if not runs:
            return None
        return Entry(name, Kind.DIR, mtime=runs[0].mtime, source=source)


class _LatestDir(CompleteDir):
    def __init__(self, repo: _Repo, *, branch: str | None = None, workflow: str | None = None) -> None:
        self.r, self.branch, self.workflow = repo, branch, workflow
        self.ttl = repo.context.ttl

    async def list(self) -> list[Entry]:
        try:
            return _latest_link(await self.r.latest(branch=self.branch, workflow=self.workflow), "../../")
        except NotFound:
            return []


class _RunDir:
    """A run's unexpired artifacts: a zip as a directory of its members, another blob as a file."""

    complete = False  # a lookup of a name not listed is asked, to say when it is an expired artifact

    def __init__(self, repo: _Repo, run: Run) -> None:
        self.r, self.run = repo, run
        self.ttl = None if run.completed else repo.context.ttl
        self._expired: set[str] = set()
        self._entries: dict[str, Entry] | None = None  # a completed run's, once listed

    async def list(self) -> list[Entry]:
        r, run = self.r, self.run
        if self._entries is not None:
            return list(self._entries.values())
        artifacts = await r.api.artifacts(r.owner, r.name, run.id, completed=run.completed)
        self._expired = {a.name for a in artifacts if a.expired}
        usable = []
        for a in artifacts:
            problem = name_problem(a.name)
            if problem:  # never probed: it could not be shown
                log.warning("%s/%d: skipping an artifact whose name %s: %s", r.where, run.id, problem, short(a.name))
            elif not a.expired:
                usable.append(a)
        # one name each (GitHub keeps names unique per run): the newest upload wins
        live = {a.name: a for a in sorted(usable, key=lambda a: a.id)}
        entries: list[Entry] = []
        limiter = trio.CapacityLimiter(ARCHIVE_PROBES)

        async def add(info: ArtifactInfo) -> None:
            async with limiter:
                entries.append(await self._artifact_entry(info))

        async with trio.open_nursery() as nursery:
            for info in live.values():
                nursery.start_soon(add, info)
        if run.completed:
            self._entries = {e.name: e for e in entries}
        return entries

    async def lookup(self, name: str) -> Entry | None:
        entries = await self.list()
        found = next((e for e in entries if e.name == name), None)
        if found is None and name in self._expired:
            log.warning("%s/%d/%s: the artifact has expired (GitHub deletes artifacts after their retention "
                        "period)", self.r.where, self.run.id, name)
        return found

    async def _artifact_entry(self, info: ArtifactInfo) -> Entry:
        r, run = self.r, self.run
        where = f"{r.where}/{run.id}/{info.name}"
        archive = _archive(r, info)
        meta = _artifact_info(r, run, info, archive)
        mtime = info.updated or run.mtime
        if not r.api.token_set:
            return Entry(info.name, Kind.DIR, mtime=mtime, immutable=True, info=meta,
                         source=_FailingDir(Forbidden(needs_token(where))))
        try:
            members = await r.context.archives.members(archive, where=where, mtime=mtime, info=meta)
        except CiartfsError as e:
            log.warning("%s: its contents cannot be listed: %s", where, e)
            return Entry(info.name, Kind.DIR, mtime=mtime, info=meta, source=_ArchiveDir(r.context, archive, where, mtime, meta))
        if members is None:  # not a zip: uploaded as one file (`archive: false`)
            return Entry(info.name, Kind.FILE, mtime=mtime, immutable=True, artifact=archive, info=meta)
        return Entry(info.name, Kind.DIR, mtime=mtime, immutable=True, info=meta,
                     source=_StaticMembers(members))


class _Digest:
    """An artifact's `digest` as the content hash its blob promises (sha256 only: the reader
    computes no other)."""

    algorithms = ("sha256",)

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256

    async def __call__(self) -> Mapping[str, str]:
        return {"sha256": self.sha256}


def _archive(r: _Repo, info: ArtifactInfo) -> Artifact:
    return Artifact(key=f"github|{r.api.host_id}|{r.owner}/{r.name}/{info.id}",
                    url=r.api.download_url(r.owner, r.name, info.id), immutable=True, credentialed=True,
                    source=TAIL_FIRST, expected_hashes=_Digest(info.sha256) if info.sha256 else None)


def _artifact_info(r: _Repo, run: Run, info: ArtifactInfo, archive: Artifact) -> dict[str, str]:
    return {"source": json.dumps({"provider": "github", "api": r.api.api_url, "owner": r.owner, "repo": r.name,
                                  "run": run.id, "artifact_id": info.id, "name": info.name,
                                  "size": info.size, "digest": info.digest}),
            "run": json.dumps(run.describe()), "url": archive.url}


class _StaticMembers(CompleteDir):
    def __init__(self, entries: list[Entry]) -> None:
        self._entries = entries

    async def list(self) -> list[Entry]:
        return self._entries


class _FailingDir(CompleteDir):
    """An artifact that cannot be listed for a reason known up front (no token)."""

    def __init__(self, error: CiartfsError) -> None:
        self.error = error

    async def list(self) -> list[Entry]:
        log.warning("%s", self.error)
        raise self.error


class _ArchiveDir(CompleteDir):
    """An artifact whose zip index could not be read when its run was listed: asked again when
    it is listed (a blob that turns out not to be a zip is then shown empty, with a log line)."""

    ttl = 0.0

    def __init__(self, context: MountContext, archive: Artifact, where: str, mtime: float,
                 info: Mapping[str, str]) -> None:
        self.context, self.archive, self.where, self.mtime, self.info = context, archive, where, mtime, info

    async def list(self) -> list[Entry]:
        members = await self.context.archives.members(self.archive, where=self.where, mtime=self.mtime,
                                                      info=self.info)
        if members is None:
            log.warning("%s: not a zip archive; listed again from its run to show it as a file", self.where)
            return []
        return members
