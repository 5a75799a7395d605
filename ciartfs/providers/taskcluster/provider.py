"""Taskcluster (queue service v1): answers turned into records, and the directory layout

    taskcluster/<taskId>/{<runId>/<artifact name split on '/'>, latest -> <highest runId>}
    taskcluster/group/<taskGroupId>/{<taskId>/ (as above), <task name> -> <taskId>}

Tasks cannot be enumerated: `taskcluster/` lists only `group/`, but any well-formed taskId
looks up.

What can change and what cannot: a resolved run's artifact list never changes (kept on disk),
but a task's list of runs can, even once every run is resolved (`rerunTask` adds one), so
the task status is never kept as final: runs and `latest` are asked again after the TTL, also
after a remount. The queue lists artifacts past their `expires` (and uploads that never
finished); one known expired from its listing is shown with an error and opening it is
ENOENT without a request (`Artifact.gone`); the others fail alone when the queue says 404/410.
Artifacts under `public/` need no credentials; for the rest, the queue endpoints
built here (under the root URL) are Hawk-signed (mohawk, the library Taskcluster's own Python
client used); temporary credentials also send their certificate in the Hawk `ext`, as base64
of JSON {"certificate": <the certificate object>}, the format the official clients use.
Nothing the queue redirects to is: not storage, and not the URL a `reference`
artifact names, even when it points back at the root URL's own API.
`object` artifacts carry content hashes: the reader asks for them (artifact-content, then the
object service's startDownload with the temporary credentials it hands out, a PUT) once it
has read a whole artifact, and checks them (see reader.py).
A running run's `reference` artifacts (its live.log, pointing at the worker's livelog server)
are growing files, streamed rather than read by range (see livelog.py).
Nothing here knows about FUSE or caching.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import mohawk
import trio

from ciartfs.data.sources import LIVE, source_for_name
from ciartfs.errors import BadListing, NotFound
from ciartfs.namespace.model import Artifact, CompleteDir, Entry, Kind, many_made
from ciartfs.namespace.names import place_artifacts, split_artifact_path, tree_entries
from ciartfs.namespace.packed import KeptListings, Packed, pack, unpack
from ciartfs.net.credentials import Credential, origin_of
from ciartfs.providers import pages, parse_time
from ciartfs.providers.apidocs import ApiDocs, Keep

log = logging.getLogger(__name__)

# slugid: 22 characters of URL-safe base64 (taskIds and taskGroupIds)
_SLUGID_RE = re.compile(r"^[A-Za-z0-9_-]{8}[Q-T][A-Za-z0-9_-][CGKOSWaeimquy26-][A-Za-z0-9_-]{10}[AQgw]$")
RESOLVED_STATES = frozenset({"completed", "failed", "exception"})
PAGE_LIMIT = 1000
# The object service's hash algorithms we check, by the length of their hex digest.
HASH_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[0-9a-f]+")


def is_slugid(name: str) -> bool:
    return bool(_SLUGID_RE.match(name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HawkCredential(Credential):
    """Taskcluster client credentials: each request gets its own Hawk signature."""

    client_id: str
    access_token: str = dataclasses.field(repr=False)
    # temporary credentials: the Hawk `ext` that carries the certificate, made once
    ext: str | None = dataclasses.field(default=None, repr=False)

    def headers_for(self, method: str, url: str) -> Mapping[str, str]:
        sender = mohawk.Sender(
            {"id": self.client_id, "key": self.access_token, "algorithm": "sha256"},
            url, method, content="", content_type="", always_hash_content=False, ext=self.ext,
        )
        return {"Authorization": sender.request_header}


def certificate_ext(certificate: str) -> str:
    """The Hawk `ext` for temporary credentials: base64 of JSON {"certificate": <object>}.
    `certificate` is the JSON text of $TASKCLUSTER_CERTIFICATE (checked by config)."""
    doc = {"certificate": json.loads(certificate)}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode("ascii")


def credential(root_url: str, client_id: str | None, access_token: str | None,
               certificate: str | None = None) -> HawkCredential | None:
    """Credentials go to the root URL's host only, never to a storage host a redirect names."""
    if not client_id or not access_token:
        return None
    return HawkCredential(client_id=client_id, access_token=access_token, origins=frozenset({origin_of(root_url)}),
                          ext=certificate_ext(certificate) if certificate else None)


@dataclasses.dataclass(frozen=True)
class Run:
    run_id: int
    state: str
    started: float | None
    resolved: float | None

    @property
    def is_resolved(self) -> bool:
        return self.state in RESOLVED_STATES

    @property
    def mtime(self) -> float:
        return self.resolved or self.started or 0.0


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    task_id: str
    state: str
    runs: tuple[Run, ...]


@dataclasses.dataclass(frozen=True)
class ArtifactRecord:
    name: str
    storage_type: str
    expires: float | None = None  # Unix time; None when the listing gives no usable one


def parse_status(doc: Any, where: str) -> TaskStatus:
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise BadListing(f"{where}: no 'status' object")
    task_id, state, runs = status.get("taskId"), status.get("state"), status.get("runs")
    if not isinstance(task_id, str) or not isinstance(state, str) or not isinstance(runs, list):
        raise BadListing(f"{where}: 'taskId', 'state' or 'runs' missing or of the wrong type")
    parsed = []
    for run in runs:
        if not isinstance(run, dict) or not isinstance(run.get("runId"), int) or isinstance(run.get("runId"), bool) \
                or run["runId"] < 0 or not isinstance(run.get("state"), str):
            raise BadListing(f"{where}: a run without an integer 'runId' and a 'state'")
        parsed.append(Run(run["runId"], run["state"], parse_time(run.get("started")), parse_time(run.get("resolved"))))
    return TaskStatus(task_id, state, tuple(parsed))


def parse_artifacts(doc: Any, where: str) -> list[ArtifactRecord]:
    if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), list):
        raise BadListing(f"{where}: no 'artifacts' list")
    records = []
    for item in doc["artifacts"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("storageType"), str):
            raise BadListing(f"{where}: an artifact without a string 'name' and 'storageType'")
        records.append(ArtifactRecord(item["name"], item["storageType"], parse_time(item.get("expires"))))
    return records


class QueueApi:
    def __init__(self, docs: ApiDocs, root_url: str, *, now: Callable[[], float] = time.time) -> None:
        self.docs = docs
        self.now = now  # wall clock, for artifacts' `expires`
        self.root_url = root_url
        self.base = root_url + "/api/queue/v1"
        self.host_id = urllib.parse.urlsplit(root_url).netloc  # for cache keys: host, never secrets
        # resolved runs' listings, placed and packed, by "<taskId>/<runId>"
        self.kept: KeptListings[Packed[ArtifactRecord]] = KeptListings()

    async def status(self, task_id: str) -> TaskStatus:
        # never kept as final: a resolved task can be re-run (remembered only as last seen, for --offline)
        url = f"{self.base}/task/{task_id}/status"
        return parse_status(await self.docs.get_json(url), url)

    def _pages(self, url: str, keep: Keep = None) -> AsyncIterator[Any]:
        return pages(self.docs, url, token_param="continuationToken", token_field="continuationToken",
                     params={"limit": PAGE_LIMIT}, keep=keep)

    async def artifacts(self, task_id: str, run_id: int, *, resolved: bool) -> list[ArtifactRecord]:
        """A resolved run's list never changes: it is kept (see docs.ApiDocs)."""
        url = f"{self.base}/task/{task_id}/runs/{run_id}/artifacts"
        return [record async for doc in self._pages(url, keep=resolved) for record in parse_artifacts(doc, url)]

    def artifact_url(self, task_id: str, run_id: int, name: str) -> str:
        return f"{self.base}/task/{task_id}/runs/{run_id}/artifacts/{urllib.parse.quote(name, safe='/')}"

    async def object_hashes(self, task_id: str, run_id: int, name: str) -> dict[str, str]:
        """The content hashes of an `object` artifact, as the object service gives them: the
        queue's artifact-content names the object and hands out temporary credentials (with a
        certificate) for it; the object service's startDownload, asked for the `getUrl` method
        (the `simple` one carries no hashes), answers with them. Only recognised algorithms
        with well-formed values are returned; {} when there are none (nothing to check)."""
        url = f"{self.base}/task/{task_id}/runs/{run_id}/artifact-content/{urllib.parse.quote(name, safe='/')}"
        doc = await self.docs.http.get_json(url)  # built here: may be Hawk-signed, as getArtifact
        if not isinstance(doc, dict) or doc.get("storageType") != "object":
            raise BadListing(f"{url}: not an object artifact's answer")
        object_name, creds = doc.get("name"), doc.get("credentials")
        if not isinstance(object_name, str) or not object_name or not isinstance(creds, dict):
            raise BadListing(f"{url}: no object 'name' and 'credentials'")
        client_id, token, cert = creds.get("clientId"), creds.get("accessToken"), creds.get("certificate")
        if not isinstance(client_id, str) or not isinstance(token, str) or not (cert is None or isinstance(cert, str)):
            raise BadListing(f"{url}: malformed object credentials")
        try:
            temporary = credential(self.root_url, client_id, token, cert or None)
        except ValueError:  # a certificate that is not JSON
            raise BadListing(f"{url}: malformed object credentials") from None
        download = f"{self.root_url}/api/object/v1/start-download/{urllib.parse.quote(object_name, safe='')}"
        # PUT, but only asks for a download URL: the object service changes nothing, so
        # sending it twice (a retry after a dropped connection) is harmless.
        answer = await self.docs.http.send_json("PUT", download, {"acceptDownloadMethods": {"getUrl": True}},
                                                credential=temporary, idempotent=True)
        hashes = answer.get("hashes") if isinstance(answer, dict) and answer.get("method") == "getUrl" else None
        if not isinstance(hashes, dict):
            raise BadListing(f"{download}: no getUrl answer with 'hashes'")
        return {algo: value for algo, value in hashes.items()
                if algo in HASH_HEX_LENGTHS and isinstance(value, str) and len(value) == HASH_HEX_LENGTHS[algo]
                and _HEX_RE.fullmatch(value)}

    async def group_tasks(self, group_id: str) -> list[tuple[TaskStatus, str | None]]:
        """(status, metadata.name) of every task in the group."""
        url = f"{self.base}/task-group/{group_id}/list"
        out: list[tuple[TaskStatus, str | None]] = []
        async for doc in self._pages(url):
            if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
                raise BadListing(f"{url}: no 'tasks' list")
            for item in doc["tasks"]:
                if not isinstance(item, dict):
                    raise BadListing(f"{url}: a task entry is not an object")
                task = item.get("task")
                meta = task.get("metadata") if isinstance(task, dict) else None
                name = meta.get("name") if isinstance(meta, dict) else None
                out.append((parse_status(item, url), name if isinstance(name, str) else None))
        return out


# -- the directory layout ---------------------------------------------------------------------

def root_entry(api: QueueApi, *, ttl: float, mtime: float) -> Entry:
    return Entry("taskcluster", Kind.DIR, mtime=mtime, immutable=True, source=_Root(api, ttl, mtime))


async def _task_entry(api: QueueApi, ttl: float, task_id: str) -> Entry | None:
    try:
        status = await api.status(task_id)
    except NotFound:
        return None
    return _entry_for(api, ttl, status)


def _entry_for(api: QueueApi, ttl: float, status: TaskStatus) -> Entry:
    mtime = max((r.mtime for r in status.runs), default=0.0)
    info = {"source": json.dumps({"provider": "taskcluster", "root_url": api.root_url, "task": status.task_id,
                                  "state": status.state})}
    return Entry(status.task_id, Kind.DIR, mtime=mtime, immutable=False, source=_TaskDir(api, ttl, status), info=info)


class _Root:
    """`group/`, and any taskId on lookup."""

    ttl = None
    complete = False

    def __init__(self, api: QueueApi, ttl: float, mtime: float) -> None:
        self.api, self.ttl_mutable, self.mtime = api, ttl, mtime

    async def list(self) -> list[Entry]:
        return [Entry("group", Kind.DIR, mtime=self.mtime, immutable=True, source=_Groups(self.api, self.ttl_mutable))]

    async def lookup(self, name: str) -> Entry | None:
        if name == "group":
            return (await self.list())[0]
        if not is_slugid(name):
            return None
        return await _task_entry(self.api, self.ttl_mutable, name)


class _Groups:
    ttl = None
    complete = False

    def __init__(self, api: QueueApi, ttl: float) -> None:
        self.api, self.ttl_mutable = api, ttl

    async def list(self) -> None:
        return None

    async def lookup(self, name: str) -> Entry | None:
        if not is_slugid(name):
            return None
        source = _Group(self.api, self.ttl_mutable, name)
        try:
            entries = await source.list()
        except NotFound:
            return None
        source.prefetched = entries
        return Entry(name, Kind.DIR, mtime=max((e.mtime for e in entries), default=0.0), source=source)


class _Group(CompleteDir):
    """A task group: a directory per task (by taskId) and a link per unique, valid task name.
    Its tasks are walked ahead (tree.py): `grep -r` over a group of 5k tasks would otherwise
    wait for each task's artifact listing and file probes in turn."""

    ttl: float  # a group can always gain tasks (CompleteDir allows None)
    walk_ahead = True

    def __init__(self, api: QueueApi, ttl: float, group_id: str) -> None:
        self.api, self.ttl, self.group_id = api, ttl, group_id
        self.prefetched: list[Entry] | None = None

    async def list(self) -> list[Entry]:
        if self.prefetched is not None:
            entries, self.prefetched = self.prefetched, None
            return entries
        tasks = await self.api.group_tasks(self.group_id)
        entries = [_entry_for(self.api, self.ttl, status) for status, _ in tasks]
        task_ids = {status.task_id for status, _ in tasks}
        names = Counter(name for _, name in tasks if name)
        for status, name in tasks:
            if not name:
                continue
            if names[name] > 1 or name in task_ids or isinstance(split_artifact_path(name), str) or "/" in name:
                log.debug("group %s: no link for task name %r (not a unique, valid file name)", self.group_id, name[:120])
                continue
            entries.append(Entry(name, Kind.LINK, mtime=0.0, target=status.task_id))
        return entries


class _TaskDir(CompleteDir):
    """One directory per run, and `latest` -> the highest runId: asked again after the TTL
    even when every run is resolved (a rerun adds one). The status it has (from the group's
    listing or its own request) is current for the TTL: listed again within it (the kernel
    forgot the directory, so the tree let its listing go), the task is not asked again
    (`grep -r` over a group, under memory pressure: one status request per task forgotten)."""

    def __init__(self, api: QueueApi, ttl: float, status: TaskStatus) -> None:
        self.api, self.ttl_mutable, self.status = api, ttl, status
        self.ttl = ttl
        self._current_at = trio.current_time()  # when `status` was current (trio's clock, as the tree's TTLs)

    async def list(self) -> list[Entry]:
        status = self.status
        if trio.current_time() - self._current_at >= self.ttl_mutable:
            status = self.status = await self.api.status(status.task_id)
            self._current_at = trio.current_time()
        entries = [Entry(str(r.run_id), Kind.DIR, mtime=r.mtime, immutable=r.is_resolved,
                         source=_RunDir(self.api, self.ttl_mutable, status.task_id, r),
                         info={"source": json.dumps({"provider": "taskcluster", "root_url": self.api.root_url,
                                                     "task": status.task_id, "run": r.run_id, "state": r.state})})
                   for r in status.runs]
        if status.runs:
            latest = max(status.runs, key=lambda r: r.run_id)
            entries.append(Entry("latest", Kind.LINK, mtime=latest.mtime, target=str(latest.run_id)))
        return entries


class _RunDir(CompleteDir):
    """A run's artifacts, their names split on '/'. A resolved run's listing never changes: it
    is kept placed and packed (namespace/packed.py; its `reference` artifacts, which may change,
    apart), so listing it again after the kernel forgot it starts from there."""

    def __init__(self, api: QueueApi, ttl: float, task_id: str, run: Run) -> None:
        self.api, self.task_id, self.run = api, task_id, run
        self.ttl = None if run.is_resolved else ttl
        self.where = f"{task_id}/{run.run_id}"

    async def list(self) -> list[Entry]:
        run = self.run
        packed = self.api.kept.get(self.where) if run.is_resolved else None
        if packed is None:
            records = await self.api.artifacts(self.task_id, run.run_id, resolved=run.is_resolved)
            tree = place_artifacts(((r.name, r) for r in records), where=f"taskcluster/{self.where}",
                                   tiebreak=lambda r: r.storage_type)
            if run.is_resolved:
                packed = pack(tree, columns=_columns, width=3, apart=lambda _, r: r.storage_type == "reference")
            if packed is None:  # running (or a value that cannot be packed)
                return tree_entries(tree, self._file, mtime=run.mtime, immutable=run.is_resolved, ttl=self.ttl)
            self.api.kept.put(self.where, packed, packed.size)
        files: Packed[ArtifactRecord] = packed

        def record(path: str, i: int) -> ArtifactRecord:
            expires = files.text(2, i)
            return ArtifactRecord(files.text(0, i) or path, files.text(1, i), float(expires) if expires else None)

        with many_made():
            entries, top = unpack(files, lambda path, i: self._artifact(path, record(path, i)), mtime=run.mtime,
                                  immutable=True, ttl=None, info={}, info_of=lambda path, i: self._info(record(path, i)),
                                  make_apart=self._file)
            # (the run directory is not a StaticDir: its own files are listed as entries)
            return entries + ([top.entry(i) for i in range(len(top.names))] if top is not None else [])

    def _file(self, fname: str, path: str, rec: ArtifactRecord) -> Entry:
        art = self._artifact(path, rec)
        return Entry(fname, Kind.FILE, mtime=self.run.mtime, immutable=art.immutable, artifact=art, info=self._info(rec))

    def _info(self, rec: ArtifactRecord) -> dict[str, str]:
        return {"source": json.dumps({"provider": "taskcluster", "root_url": self.api.root_url,
                                      "task": self.task_id, "run": self.run.run_id, "name": rec.name,
                                      "storage_type": rec.storage_type})}

    def _artifact(self, path: str, rec: ArtifactRecord) -> Artifact:
        run = self.run
        # A reference artifact points anywhere and may change: never cached as permanent.
        immutable = run.is_resolved and rec.storage_type != "reference"
        gone = None
        if rec.expires is not None and rec.expires <= self.api.now():
            gone = (f"expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(rec.expires))} "
                    "(the queue's `expires`): no longer stored")
        # A running run's reference (its live.log) points at the worker's livelog server,
        # which streams until the task ends: served as a growing file (see livelog.py), under
        # its own key, so nothing of it mixes with what the name holds once the run resolved.
        live = rec.storage_type == "reference" and not run.is_resolved and gone is None
        return Artifact(key=f"taskcluster|{self.api.host_id}|{self.task_id}/{run.run_id}/{path}"
                            + ("|live" if live else ""),
                        url=self.api.artifact_url(self.task_id, run.run_id, rec.name),
                        immutable=immutable, error=rec.storage_type == "error" and gone is None, gone=gone,
                        # built here: the queue's endpoint may be Hawk-signed. Where a `reference`
                        # artifact points is a redirect from it, and redirects never are.
                        credentialed=True, source=LIVE if live else source_for_name(path),
                        expected_hashes=(functools.partial(self.api.object_hashes, self.task_id, run.run_id, rec.name)
                                         if rec.storage_type == "object" and gone is None else None))


def _columns(path: str, rec: ArtifactRecord) -> tuple[str, str, str]:
    """What a packed artifact keeps: its name as the queue spells it (when it is not the path it
    was placed at), its storage type, and its `expires` (exact: repr of a float)."""
    return ("" if rec.name == path else rec.name, rec.storage_type, "" if rec.expires is None else repr(rec.expires))
