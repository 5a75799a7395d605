"""A fake Taskcluster queue (v1) on the fake CI's API host, as documented:

    GET /api/queue/v1/task/<taskId>/status
    GET /api/queue/v1/task/<taskId>/runs/<runId>/artifacts[?continuationToken=&limit=]
    GET /api/queue/v1/task/<taskId>/runs/<runId>/artifacts/<name>   303 to storage (or to a
        `reference` artifact's own URL), 424 for errors
    GET /api/queue/v1/task-group/<taskGroupId>/list[?continuationToken=&limit=]
    GET /api/queue/v1/task/<taskId>/runs/<runId>/artifact-content/<name>   (and the latest
        run's: /task/<taskId>/artifact-content/<name>) 200 {storageType, url} for s3 and
        reference (the reference's own URL), {storageType: error, reason, message}, or for an
        `object` artifact its object name and temporary credentials (with a certificate) for:
    PUT /api/object/v1/start-download/<name>   the object service: {"acceptDownloadMethods":
        {"getUrl": true}} -> {method: getUrl, url, expires, hashes}; `simple` -> {method, url}.
        The hashes are those of the artifact's data unless `FakeTcArtifact.hashes` lies.

Answers follow the queue's schemas (../shared/specs/taskcluster-queue/, checked by
tests/t1_taskcluster_schemas.py), including the inconvenient parts: listArtifacts names
artifacts past their `expires` (getArtifact: 410) and uploads that never finished (404); a
resolved task can be re-run (`FakeTask.rerun`), adding a run to a completed task.
getArtifact and artifact-content follow `link` artifacts as the queue does: every name on the
way is checked (Hawk for a non-public one, 404 unknown or never uploaded, 410 expired) and a
link cycle is 400 InputError; neither ever answers for the link itself.
Artifacts outside `public/` need a valid Hawk header (checked with mohawk); temporary
credentials (a client with a certificate) also need the certificate in the Hawk `ext`.
Listings page with a small page size so clients must follow continuationToken.
A group can also be generated (`FakeQueue.add_generated_group`, `GeneratedGroup`): thousands
of tasks made when asked for, never stored: task ids, statuses, artifact listings and bytes
are functions of the task's index; its listings page as the queue does (1000 a page).

`routes(fake)` mounts the queue at /api/queue/v1/ and the object service at /api/object/v1/
on the API host; storage.BlobStore finds a run's artifacts by blob id (add them with
`FakeRun.add_artifact`), a run finds them by name through its own index.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import gzip
import hashlib
import json
import random
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any

import mohawk
import mohawk.exc

from ciartfs.fakeserver.generated import GeneratedGzip
from ciartfs.fakeserver.livelog import FakeLiveLog, now_iso
from ciartfs.fakeserver.routing import Reply, Request, Route
from ciartfs.fakeserver.storage import next_blob_id, reserve_blob_ids

if TYPE_CHECKING:
    from ciartfs.fakeserver.server import FakeCI
    from ciartfs.fakeserver.storage import BlobStore

FAR_FUTURE = "2099-11-01T00:00:00.000Z"
PAST = "2026-01-01T00:00:00.000Z"


def _parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclasses.dataclass(eq=False)
class FakeTcArtifact:
    name: str
    data: bytes = b""
    storage_type: str = "s3"  # s3 | object | reference | link | error
    content_type: str = "application/octet-stream"
    gzip: bool = False  # stored with Content-Encoding: gzip (Range counts compressed bytes)
    # Made on the fly and served gzip-encoded instead of `data` (large logs, bombs): never held whole.
    generated: GeneratedGzip | None = None
    # Serve `data` as it is, declared with this Content-Encoding (hand-made streams: several
    # gzip members, corrupt or truncated ones).
    stored_as: str | None = None
    reason: str = "file-missing-on-worker"  # error artifacts
    message: str = "The file was not found on the worker"
    # `reference` artifacts: the URL the queue's 303 names, chosen by whoever wrote the task
    # (None: the fake's own storage, as for s3).
    url: str | None = None
    storage_redirect: str | None = None  # as FakeArtifact.storage_redirect
    # A running task's live log: a `reference` to the fake livelog server, streaming this log.
    live: FakeLiveLog | None = None
    link: str | None = None  # `link` artifacts: the name of the artifact they stand for
    blob_id: int = dataclasses.field(default_factory=next_blob_id)
    # the listing's `expires`; once past, getArtifact answers 410 and storage 404 (as the queue)
    expires: str = FAR_FUTURE
    present: bool = True  # False: an upload that never finished (listed; getArtifact 404)
    # `object` artifacts: the hashes the object service's startDownload gives, when they are
    # not those of `data` (a lying service, or data that went bad in storage)
    hashes: dict[str, str] | None = None

    def object_hashes(self) -> dict[str, str]:
        """What the object service says the object's content hashes are."""
        if self.hashes is not None:
            return dict(self.hashes)
        return {"sha256": hashlib.sha256(self.data).hexdigest(), "sha512": hashlib.sha512(self.data).hexdigest()}

    @property
    def expired(self) -> bool:
        return _parse_iso(self.expires) <= datetime.datetime.now(datetime.UTC)

    @property
    def stored(self) -> bytes:
        if self.generated is not None:
            raise ValueError("a generated artifact is read with generated.read(), not held whole")
        return gzip.compress(self.data, mtime=0) if self.gzip and not self.stored_as else self.data

    @property
    def content_encoding(self) -> str | None:
        if self.stored_as:
            return self.stored_as
        return "gzip" if self.gzip or self.generated is not None else None


@dataclasses.dataclass(eq=False)
class FakeRun:
    run_id: int
    state: str = "completed"  # pending | running | completed | failed | exception
    started: str | None = "2026-11-01T10:00:00.000Z"
    resolved: str | None = "2026-11-01T10:05:00.000Z"
    artifacts: list[FakeTcArtifact] = dataclasses.field(default_factory=list)
    reason_created: str = "scheduled"  # scheduled | retry | task-retry | rerun | exception
    # where its artifacts' bytes are served from (set by FakeTask.add_run); None: nowhere
    blobs: BlobStore | None = dataclasses.field(default=None, repr=False)
    _by_name: dict[str, FakeTcArtifact] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for artifact in self.artifacts:  # given at construction
            self._place(artifact)

    def status(self) -> dict[str, Any]:
        """The run as the queue shows it: times only once they happened (never null)."""
        out: dict[str, Any] = {"runId": self.run_id, "state": self.state, "reasonCreated": self.reason_created,
                               "scheduled": self.started or "2026-11-01T09:59:00.000Z"}
        if self.state != "pending":
            out.update(workerGroup="fake-group", workerId="fake-worker")
            if self.started:
                out["started"] = self.started
        if self.state == "running":
            out["takenUntil"] = FAR_FUTURE
        if self.resolved:
            out["resolved"] = self.resolved
            out["reasonResolved"] = {"completed": "completed", "failed": "failed"}.get(self.state, "worker-shutdown")
        return out

    def add_artifact(self, name: str, data: bytes = b"", **kw: Any) -> FakeTcArtifact:
        artifact = FakeTcArtifact(name, data, **kw)
        self.artifacts.append(artifact)
        self._place(artifact)
        return artifact

    def _place(self, artifact: FakeTcArtifact) -> None:
        self._by_name.setdefault(artifact.name, artifact)  # the first of a name wins
        if self.blobs is not None:
            self.blobs.add(artifact)

    def artifact(self, name: str) -> FakeTcArtifact | None:
        """The artifact of this name (the first added, if several), without a scan."""
        return self._by_name.get(name)

    def add_live_log(self, initial: bytes = b"", name: str = "public/logs/live.log", **kw: Any) -> FakeLiveLog:
        """A running run's live log, as a worker makes it: a `reference` to its livelog server."""
        live = FakeLiveLog(**kw)
        live.data += initial
        self.add_artifact(name, storage_type="reference", content_type="text/plain; charset=utf-8", live=live)
        return live

    def resolve(self, state: str = "completed") -> None:
        """The run ends as the worker ends it: each live log is finished, uploaded as
        `live_backing.log` (gzip-encoded, as Taskcluster stores logs), and `live.log` becomes a
        `link` to it."""
        for artifact in list(self.artifacts):
            if artifact.live is None:
                continue
            artifact.live.finish()
            backing = artifact.name.rsplit("/", 1)[0] + "/live_backing.log"
            self.add_artifact(backing, artifact.live.snapshot(), content_type="text/plain; charset=utf-8", gzip=True)
            artifact.storage_type, artifact.link = "link", backing
        self.state, self.resolved = state, now_iso()


@dataclasses.dataclass(eq=False)
class FakeTask:
    task_id: str
    task_group_id: str
    name: str = "a task"
    runs: list[FakeRun] = dataclasses.field(default_factory=list)
    # where its runs' artifacts are served from (set by FakeQueue.add_task); None: nowhere
    blobs: BlobStore | None = dataclasses.field(default=None, repr=False)
    page_size: int | None = None  # its artifact listings' (None: the queue's)

    def add_run(self, state: str = "completed", **kw: Any) -> FakeRun:
        if state in ("pending", "running"):
            kw.setdefault("resolved", None)
        run = FakeRun(len(self.runs), state, blobs=self.blobs, **kw)
        self.runs.append(run)
        return run

    def rerun(self, state: str = "running", **kw: Any) -> FakeRun:
        """The queue's rerunTask: a new run on a task that may already be resolved."""
        return self.add_run(state, reason_created="rerun", **kw)

    @property
    def state(self) -> str:
        return self.runs[-1].state if self.runs else "unscheduled"

    def status(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id, "taskGroupId": self.task_group_id, "state": self.state,
            "provisionerId": "fake-prov", "workerType": "fake-worker", "taskQueueId": "fake-prov/fake-worker",
            "schedulerId": "-", "projectId": "none", "priority": "lowest",
            "deadline": "2026-11-02T10:00:00.000Z", "expires": FAR_FUTURE, "retriesLeft": 5,
            "runs": [r.status() for r in self.runs],
        }

    def definition(self) -> dict[str, Any]:
        """The task definition listTaskGroup returns next to the status."""
        return {
            "provisionerId": "fake-prov", "workerType": "fake-worker", "taskQueueId": "fake-prov/fake-worker",
            "schedulerId": "-", "projectId": "none", "taskGroupId": self.task_group_id, "dependencies": [],
            "requires": "all-completed", "routes": [], "priority": "lowest", "retries": 5,
            "created": "2026-11-01T09:58:00.000Z", "deadline": "2026-11-02T10:00:00.000Z", "expires": FAR_FUTURE,
            "scopes": [], "payload": {},
            "metadata": {"name": self.name, "description": "a fake task", "owner": "nobody@example.com",
                         "source": "https://example.com/ci"},
            "tags": {}, "extra": {},
        }


def _page(items: list[Any], query: dict[str, str], page_size: int) -> tuple[list[Any], str | None]:
    span, more = _page_span(len(items), query, page_size)
    return items[span.start:span.stop], more


def _page_span(total: int, query: dict[str, str], page_size: int) -> tuple[range, str | None]:
    """The indexes of one page of `total` items, and the token of the next page (None: last)."""
    token = query.get("continuationToken")
    try:
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        limit = min(int(query.get("limit", page_size)), page_size)
    except ValueError:
        raise Reply(400, {"code": "InvalidRequestArguments", "message": "bad continuationToken or limit"}) from None
    if start < 0 or limit < 1:
        raise Reply(400, {"code": "InvalidRequestArguments", "message": "bad continuationToken or limit"})
    end = start + limit
    more = base64.urlsafe_b64encode(str(end).encode()).decode() if end < total else None
    return range(min(start, total), min(end, total)), more


# The text of generated logs: printable letters, digits, spaces and newlines from random bytes.
_LOG_ALPHABET = bytes((b"abcdefghijklmnopqrstuvwxyz0123456789      \n" * 6)[:256])


@dataclasses.dataclass(eq=False)
class GeneratedGroup:
    """A task group of `tasks` completed tasks made when asked for (never stored): task `i`
    is `task_id(i)`, named `name_of(i)`, with one run holding `files` (text of 1-8 KiB,
    seeded by the task and file); the tasks where `has_needle(i)` hold `needle` once, in
    their first file. Listings page by `page_size`, the real queue's maximum."""

    group_id: str
    tasks: int
    files: tuple[str, ...] = ("public/logs/live_backing.log",)
    needle: bytes = b"GENERATED_GROUP_NEEDLE"
    needle_every: int = 97  # one task in this many holds the needle
    page_size: int = 1000
    blob_ids: range = dataclasses.field(default=range(0))

    def __post_init__(self) -> None:
        if not self.blob_ids:
            self.blob_ids = reserve_blob_ids(self.tasks * len(self.files))
        self.tag = self.group_id[:8]  # its tasks' ids start with it

    def task_id(self, index: int) -> str:
        return f"{self.tag}QaC{index:010d}A"  # a well-formed slugid

    def index_of(self, task_id: str) -> int | None:
        digits = task_id[11:21]
        if len(task_id) != 22 or task_id[:11] != self.tag + "QaC" or task_id[21] != "A" or not digits.isdigit():
            return None
        index = int(digits)
        return index if index < self.tasks else None

    @staticmethod
    def name_of(index: int) -> str:
        return f"test-{index:05d}"

    def has_needle(self, index: int) -> bool:
        return index % self.needle_every == self.needle_every // 2

    def data(self, index: int, file: int) -> bytes:
        rng = random.Random(f"{self.group_id}/{index}/{file}")
        body = bytearray(rng.randbytes(rng.randint(1024, 8192)).translate(_LOG_ALPHABET))
        if file == 0 and self.has_needle(index):
            at = rng.randrange(len(body) - len(self.needle))
            body[at:at + len(self.needle)] = self.needle
        return bytes(body)

    def task(self, index: int, *, bodies: bool = True) -> FakeTask:
        """Task `index`, made now (not added to any store: its blobs are made as asked too).
        `bodies=False`: its artifacts' bytes are left empty, for the queue's answers, which never
        read them (these artifacts are `s3`: no hashes). Making them is most of the cost of making
        a task (~60 of ~100 us), twice per task in `grep -r`: a cost the real queue does not have."""
        task = FakeTask(self.task_id(index), self.group_id, self.name_of(index), page_size=self.page_size)
        run = task.add_run("completed")
        for file, name in enumerate(self.files):
            run.add_artifact(name, self.data(index, file) if bodies else b"", content_type="text/plain",
                             blob_id=self.blob_ids[index * len(self.files) + file])
        return task

    def blob(self, blob_id: int) -> FakeTcArtifact | None:
        index, file = divmod(blob_id - self.blob_ids.start, len(self.files))
        return self.task(index).runs[0].artifacts[file]


QUEUE_PREFIX = "/api/queue/v1/"
OBJECT_PREFIX = "/api/object/v1/"


def routes(fake: FakeCI) -> list[Route]:
    return fake.queue.routes()


class FakeQueue:
    """The queue's state and routes; FakeCI dispatches /api/queue/v1/ here."""

    def __init__(self, fake: FakeCI) -> None:
        self.fake = fake
        self.tasks: dict[str, FakeTask] = {}
        self.clients: dict[str, str] = {}  # clientId -> accessToken
        # clientId -> certificate (JSON object) of temporary credentials: their requests must carry
        # it in the Hawk `ext` (base64 of JSON {"certificate": ...}), else 401
        self.certificates: dict[str, dict[str, Any]] = {}
        self.page_size = 2
        # the object service: objects by name (as artifact-content named them), and which
        # object each temporary clientId may download
        self.objects: dict[str, FakeTcArtifact] = {}
        self.object_scopes: dict[str, str] = {}
        self.start_downloads = 0
        self.generated: dict[str, GeneratedGroup] = {}  # by group id

    def add_generated_group(self, group_id: str, tasks: int, **kw: Any) -> GeneratedGroup:
        """A group of `tasks` tasks made when asked for (see GeneratedGroup)."""
        group = GeneratedGroup(group_id, tasks, **kw)
        self.generated[group_id] = group
        self.fake.blobs.add_generated(group.blob_ids, group.blob)
        return group

    def task(self, task_id: str) -> FakeTask | None:
        """The task, stored or generated (a generated one without its artifacts' bytes)."""
        task = self.tasks.get(task_id)
        if task is not None:
            return task
        for group in self.generated.values():
            index = group.index_of(task_id)
            if index is not None:
                return group.task(index, bodies=False)  # (the storage host asks `blob` for the bytes)
        return None

    def add_task(self, task_id: str, task_group_id: str | None = None, name: str = "a task") -> FakeTask:
        task = FakeTask(task_id, task_group_id or task_id, name, blobs=self.fake.blobs)
        replaced = self.tasks.get(task_id)
        if replaced is not None:
            self.fake.blobs.discard(*(a for r in replaced.runs for a in r.artifacts))
        self.tasks[task_id] = task
        return task

    def live_log(self, token: str) -> FakeLiveLog | None:
        return self.fake.blobs.live_log(token)

    def routes(self) -> list[Route]:
        return [Route("api", QUEUE_PREFIX, self.handle), Route("api", OBJECT_PREFIX, self.handle_object)]

    def handle(self, request: Request) -> None:
        if request.method != "GET":
            raise Reply(405, {"message": "method not allowed"})
        query = request.query
        parts = request.raw_path[len(QUEUE_PREFIX):].split("/")
        if len(parts) >= 3 and parts[0] == "task":
            task = self.task(parts[1])
            if task is None:
                raise Reply(404, {"code": "ResourceNotFound", "message": f"Task {parts[1]} not found"})
            if parts[2:] == ["status"]:
                raise Reply(200, {"status": task.status()})
            if len(parts) >= 5 and parts[2] == "runs" and parts[3].isdigit() and parts[4] == "artifacts":
                run_id = int(parts[3])
                if run_id >= len(task.runs):
                    raise Reply(404, {"code": "ResourceNotFound", "message": f"Run {run_id} not found"})
                run = task.runs[run_id]
                if len(parts) == 5:
                    page, token = _page(run.artifacts, query, task.page_size or self.page_size)
                    body: dict[str, Any] = {"artifacts": [
                        {"storageType": a.storage_type, "name": a.name, "expires": a.expires,
                         "contentType": a.content_type} for a in page]}
                    if token:
                        body["continuationToken"] = token
                    raise Reply(200, body)
                name = urllib.parse.unquote("/".join(parts[5:]))
                self._get_artifact(request, run, name)
            if len(parts) >= 6 and parts[2] == "runs" and parts[3].isdigit() and parts[4] == "artifact-content":
                run_id = int(parts[3])
                if run_id >= len(task.runs):
                    raise Reply(404, {"code": "ResourceNotFound", "message": f"Run {run_id} not found"})
                self._artifact_content(request, task, run_id, urllib.parse.unquote("/".join(parts[5:])))
            if len(parts) >= 4 and parts[2] == "artifact-content":  # latestArtifact: the last run's
                if not task.runs:
                    raise Reply(404, {"code": "ResourceNotFound", "message": f"Task {task.task_id} has no runs"})
                self._artifact_content(request, task, len(task.runs) - 1, urllib.parse.unquote("/".join(parts[3:])))
        if len(parts) == 3 and parts[0] == "task-group" and parts[2] == "list":
            generated = self.generated.get(parts[1])
            if generated is not None:
                span, token = _page_span(generated.tasks, query, generated.page_size)
                page = [generated.task(i, bodies=False) for i in span]
            else:
                tasks = [t for t in self.tasks.values() if t.task_group_id == parts[1]]
                if not tasks:
                    raise Reply(404, {"code": "ResourceNotFound", "message": f"Task group {parts[1]} not found"})
                page, token = _page(tasks, query, self.page_size)
            body = {"taskGroupId": parts[1], "schedulerId": "-", "expires": FAR_FUTURE,
                    "tasks": [{"status": t.status(), "task": t.definition()} for t in page]}
            if token:
                body["continuationToken"] = token
            raise Reply(200, body)
        raise Reply(404, {"code": "ResourceNotFound", "message": "no such endpoint"})

    def _artifact_of(self, request: Request, run: FakeRun, name: str) -> FakeTcArtifact:
        """The artifact `name` of `run` as both artifact endpoints find it, following links as
        the queue does: each name on the way is checked (404 if unknown or never uploaded, Hawk
        for a non-public name, 410 once past its `expires`); a link back to a name already seen
        is 400. The answer is never a `link`."""
        seen: list[str] = []
        while True:
            seen.append(name)
            artifact = run.artifact(name)
            if artifact is None:
                raise Reply(404, {"code": "ResourceNotFound", "message": f"Artifact {name} not found"})
            if not name.startswith("public/"):
                self._check_hawk(request)
            if not artifact.present:
                raise Reply(404, {"code": "ResourceNotFound", "message": f"Artifact {name} was never uploaded"})
            if artifact.expired:
                raise Reply(410, {"code": "ResourceExpired", "message": f"Artifact {name} has expired"})
            if artifact.storage_type != "link":
                return artifact
            if artifact.link is None:  # the queue's links always name a target; a fake's may not
                raise Reply(404, {"code": "ResourceNotFound", "message": f"Artifact {name}: link names no target"})
            if artifact.link in seen:
                raise Reply(400, {"code": "InputError", "message": f"Artifact {seen[0]} leads to a link cycle"})
            name = artifact.link

    def _location(self, artifact: FakeTcArtifact) -> str:
        """Where an artifact's bytes are: a `reference`'s own URL (a live log's livelog server),
        else the fake's storage."""
        if artifact.storage_type == "reference" and artifact.live is not None:
            return f"{self.fake.livelog_url}/log/{artifact.live.token}"
        if artifact.storage_type == "reference" and artifact.url:
            return artifact.url
        return self.fake.presigned_url(artifact.blob_id)

    def _get_artifact(self, request: Request, run: FakeRun, name: str) -> None:
        artifact = self._artifact_of(request, run, name)
        if artifact.storage_type == "error":
            raise Reply(424, {"reason": artifact.reason, "message": artifact.message})
        location = self._location(artifact)
        # the body is the getArtifact response ({storageType, url}), as the queue sends it with its 303
        raise Reply(303, {"storageType": artifact.storage_type, "url": location}, headers={
            "Location": location, "x-taskcluster-artifact-storage-type": artifact.storage_type})

    def _artifact_content(self, request: Request, task: FakeTask, run_id: int, name: str) -> None:
        """The queue's `artifact` method (artifact-content), for the artifact a link leads to:
        an `object` artifact's object name and temporary credentials (with a certificate) to
        download it from the object service; s3 and reference: {storageType, url} (a
        reference's own URL, not the fake's storage); error: its reason and message (200)."""
        artifact = self._artifact_of(request, task.runs[run_id], name)
        if artifact.storage_type == "error":
            raise Reply(200, {"storageType": "error", "reason": artifact.reason, "message": artifact.message})
        if artifact.storage_type != "object":
            raise Reply(200, {"storageType": artifact.storage_type, "url": self._location(artifact)})
        object_name = f"t/{task.task_id}/{run_id}/{artifact.name}"  # the link's target, as the queue
        self.objects[object_name] = artifact
        client_id = f"object-download/{artifact.blob_id}/{secrets.token_hex(4)}"
        certificate = {"version": 1, "scopes": [f"object:download:{object_name}"], "start": 0, "expiry": 0,
                       "seed": secrets.token_hex(22), "signature": "fake", "issuer": "queue"}
        access_token = secrets.token_urlsafe(33)
        self.clients[client_id] = access_token
        self.certificates[client_id] = certificate
        self.object_scopes[client_id] = object_name
        raise Reply(200, {"storageType": "object", "name": object_name, "credentials": {
            "clientId": client_id, "accessToken": access_token, "certificate": json.dumps(certificate)}})

    def handle_object(self, request: Request) -> None:
        """The object service's startDownload (PUT /api/object/v1/start-download/<name>): only
        with the temporary credentials artifact-content handed out for that object. Other
        methods are not the object service's: passed on (to the API host's fallback)."""
        if request.method != "PUT":
            return
        raw_path = request.raw_path
        prefix = OBJECT_PREFIX + "start-download/"
        if not raw_path.startswith(prefix):
            raise Reply(404, {"code": "ResourceNotFound", "message": "no such endpoint"})
        self.start_downloads += 1
        name = urllib.parse.unquote(raw_path[len(prefix):])
        client_id = self._check_hawk(request, "PUT")
        if self.object_scopes.get(client_id) != name:
            raise Reply(403, {"code": "InsufficientScopes", "message": f"object:download:{name} is required"})
        artifact = self.objects.get(name)
        if artifact is None:
            raise Reply(404, {"code": "ResourceNotFound", "message": f"Object {name} not found"})
        try:
            asked = json.loads(request.body)
            methods = asked["acceptDownloadMethods"]
            assert isinstance(methods, dict) and set(asked) == {"acceptDownloadMethods"}
        except (ValueError, KeyError, TypeError, AssertionError):
            raise Reply(400, {"code": "InputValidationError", "message": "expected {acceptDownloadMethods: {...}}"}) from None
        url = self.fake.presigned_url(artifact.blob_id)
        if methods.get("getUrl") is True:
            raise Reply(200, {"method": "getUrl", "url": url, "expires": FAR_FUTURE, "hashes": artifact.object_hashes()})
        if methods.get("simple") is True:
            raise Reply(200, {"method": "simple", "url": url})
        raise Reply(406, {"code": "NoMatchingMethod", "message": "no acceptable download method"})

    def _check_hawk(self, request: Request, method: str = "GET") -> str:
        header = request.headers.get("Authorization")
        if not header:
            raise Reply(403, {"code": "InsufficientScopes", "message": "This request requires Taskcluster credentials"})

        def lookup(client_id: str) -> dict[str, str]:
            if client_id not in self.clients:
                raise LookupError(client_id)
            return {"id": client_id, "key": self.clients[client_id], "algorithm": "sha256"}

        url = f"http://{request.headers.get('Host')}{request.path}"
        try:
            receiver = mohawk.Receiver(lookup, header, url, method, content="", content_type="",
                                       accept_untrusted_content=True)
        except (mohawk.exc.HawkFail, LookupError) as e:
            raise Reply(401, {"code": "AuthenticationFailed", "message": f"Hawk: {type(e).__name__}"}) from None
        client_id = receiver.parsed_header.get("id")
        expected = self.certificates.get(client_id)
        if expected is not None and _ext_certificate(receiver.parsed_header.get("ext")) != expected:
            raise Reply(401, {"code": "AuthenticationFailed",
                              "message": "ext.certificate is missing or does not match: temporary credentials need it"})
        return str(client_id)


def _ext_certificate(ext: str | None) -> Any:
    """The certificate in a Hawk `ext` (base64 of JSON {"certificate": {...}}), else None."""
    if not ext:
        return None
    try:
        doc = json.loads(base64.b64decode(ext, validate=True))
    except ValueError:
        return None
    return doc.get("certificate") if isinstance(doc, dict) else None
