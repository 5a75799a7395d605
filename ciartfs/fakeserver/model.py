"""The fake CI's state: projects, builds, artifacts, fault switches and the request log.

Artifacts are added through `add_artifact` (and builds through `add_build`, projects through
`FakeCI.add_project`): that is how the fake's storage learns their blob ids (an O(1) lookup
for every storage GET) and a build its (node, path) index. A build or project replaced by
another of the same number or name takes its blobs out of storage with it.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from ciartfs.fakeserver.storage import next_blob_id

if TYPE_CHECKING:
    from ciartfs.fakeserver.storage import BlobStore


@dataclasses.dataclass(eq=False)
class FakeArtifact:
    path: str
    data: bytes
    node_index: int = 0
    expired: bool = False  # listed, but its URL answers 404 (CircleCI deletes after 30 days)
    url: str | None = None  # override the URL the listing reports (hostile listings)
    # The storage host answers this artifact's presigned URL with a 302 here (a hostile or
    # misconfigured storage hop, e.g. one pointing back at the API host).
    storage_redirect: str | None = None
    # Per-artifact storage misbehaviour (one bad file among good ones):
    storage_status: int | None = None  # storage answers every GET of it with this status (410, 403)
    claimed_total: int | None = None  # its 206 answers name this total in Content-Range
    delay: float = 0.0  # storage waits this long before answering (a slow file)
    stall: bool = False  # storage never answers it (until the server stops)
    # Served straight from the circle-artifacts host, no 302 to storage. None: as CircleCI
    # does, for HTML (.html, .htm) paths.
    direct: bool | None = None
    blob_id: int = dataclasses.field(default_factory=next_blob_id)
    # the rest of storage.Blob: CircleCI stores bytes as they are, none generated
    generated: ClassVar[None] = None
    content_encoding: ClassVar[None] = None

    @property
    def stored(self) -> bytes:
        return self.data


@dataclasses.dataclass(eq=False)
class FakeBuild:
    build_num: int
    branch: str | None = "main"
    status: str = "success"
    lifecycle: str = "finished"
    start_time: str | None = None
    stop_time: str | None = None
    queued_at: str | None = None
    vcs_revision: str | None = None
    subject: str | None = None
    artifacts: list[FakeArtifact] = dataclasses.field(default_factory=list)
    # When set, the artifacts endpoint answers exactly this value (malformed-record tests).
    raw_artifacts: Any = None
    # where its artifacts' bytes are served from (set by FakeProject.add_build); None: nowhere
    blobs: BlobStore | None = dataclasses.field(default=None, repr=False)
    _by_place: dict[tuple[int, str], FakeArtifact] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for artifact in self.artifacts:  # given at construction
            self._place(artifact)

    def add_artifact(self, path: str, data: bytes, node_index: int = 0, **kw: Any) -> FakeArtifact:
        artifact = FakeArtifact(path, data, node_index, **kw)
        self.artifacts.append(artifact)
        self._place(artifact)
        return artifact

    def _place(self, artifact: FakeArtifact) -> None:
        self._by_place.setdefault((artifact.node_index, artifact.path), artifact)  # the first at a place wins
        if self.blobs is not None:
            self.blobs.add(artifact)

    def artifact_at(self, node_index: int, path: str) -> FakeArtifact | None:
        """The artifact at this node and path (the first added, if several), without a scan."""
        return self._by_place.get((node_index, path))

    @property
    def outcome(self) -> str | None:
        """v1.1's outcome: null until finished; "fixed" is a successful outcome."""
        if self.lifecycle != "finished":
            return None
        return "success" if self.status == "fixed" else self.status


@dataclasses.dataclass(eq=False)
class FakeProject:
    vcs_type: str
    username: str
    reponame: str
    private: bool = False
    builds: dict[int, FakeBuild] = dataclasses.field(default_factory=dict)
    # where its builds' artifacts are served from (set by FakeCI.add_project); None: nowhere
    blobs: BlobStore | None = dataclasses.field(default=None, repr=False)

    def add_build(self, build_num: int, branch: str | None = "main", status: str | None = None,
                  lifecycle: str = "finished", stop_time: str | None = "2026-11-01T10:00:00Z",
                  start_time: str | None = None, vcs_revision: str | None = None, **kw: Any) -> FakeBuild:
        """Add (or replace) a build. Defaults derive from the rest: a finished build succeeded,
        started 5 minutes before it stopped and was queued a minute before that; a build that
        is not finished has no stop_time, and a running one has status "running"."""
        if lifecycle != "finished":
            stop_time = None
        if lifecycle == "running":
            status = "running"
        elif status is None:
            status = "success" if lifecycle == "finished" else lifecycle
        if start_time is None and lifecycle not in ("queued", "not_running", "not_run"):
            start_time = _shift(stop_time, -300) if stop_time else "2026-11-01T09:55:00Z"
        queued_at = kw.pop("queued_at", None)
        if queued_at is None:
            queued_at = _shift(start_time, -60) if start_time else "2026-11-01T09:54:00Z"
        build = FakeBuild(
            build_num=build_num, branch=branch, status=status, lifecycle=lifecycle,
            start_time=start_time, stop_time=stop_time, queued_at=queued_at,
            vcs_revision=vcs_revision or f"{build_num:040x}", subject=kw.pop("subject", f"Commit for build {build_num}"),
            blobs=self.blobs, **kw,
        )
        replaced = self.builds.get(build_num)
        if replaced is not None and self.blobs is not None:
            self.blobs.discard(*replaced.artifacts)
        self.builds[build_num] = build
        return build


def _shift(stamp: str, seconds: float) -> str:
    """An ISO-8601 UTC time moved by some seconds, as "YYYY-MM-DDTHH:MM:SSZ"."""
    t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    t = t.astimezone(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


FAILURE_SEED = 1234  # storage_failure_rate's draws: the same for every fresh (or reset) Faults


@dataclasses.dataclass
class Faults:
    """Switches the tests flip; all off by default. The fake's routes read them here (no
    fault state lives elsewhere) and take queued ones with `pop`."""

    storage_hang: bool = False
    api_hang: bool = False
    api_latency: float = 0.0  # seconds before each API answer (a far-away API host)
    storage_latency: float = 0.0  # seconds before each storage answer (a slow link)
    ignore_range: bool = False
    # The circle-artifacts host (HTML served directly) answers Range with 200 and the whole body:
    # CircleCI does not document Range support there.
    direct_ignore_range: bool = False
    storage_statuses: list[int] = dataclasses.field(default_factory=list)
    # Each storage GET fails with 503 with this probability (seeded: runs are repeatable).
    storage_failure_rate: float = 0.0
    # A queue: each storage GET that serves bytes pops one and misbehaves so:
    #   "cut"       - headers promise the whole body, the connection closes halfway through it
    #   "short"     - Content-Length says N, N-1 bytes arrive and the connection closes
    #   "bad-range" - a 206 whose Content-Range names other bytes than those asked for
    storage_body_faults: list[str] = dataclasses.field(default_factory=list)
    api_statuses: list[int] = dataclasses.field(default_factory=list)
    malformed_json: set[str] = dataclasses.field(default_factory=set)
    # API paths answered with a hostile JSON body, generated as it is sent:
    #   "endless"   - a chunked array of artifact records that never ends
    #   "gzip-bomb" - Content-Encoding: gzip; a few KiB on the wire per GiB of spaces decoded, endless
    #   "expansion" - valid JSON, HOSTILE_EXPANSION_BYTES of `[{},{},...]`: ~25x its size once parsed
    hostile_json: dict[str, str] = dataclasses.field(default_factory=dict)
    presign_ttl: float = 3600.0
    # GitHub Actions' blob host (azureblob.py): hang, latency, queued statuses (each used once),
    # queued body faults ("cut": the connection closes halfway through the body)
    blob_hang: bool = False
    blob_latency: float = 0.0
    blob_statuses: list[int] = dataclasses.field(default_factory=list)
    blob_body_faults: list[str] = dataclasses.field(default_factory=list)
    # GitHub's API: queued rate-limit answers, each used by one request (github.py):
    # "primary", "primary-429", "secondary", "secondary-429"
    github_rate_limits: list[str] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(FAILURE_SEED), init=False,
                                            repr=False, compare=False)

    def reset(self) -> None:
        for field in dataclasses.fields(self):
            if field.init:
                default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
                setattr(self, field.name, default)
        with self._lock:
            self._rng.seed(FAILURE_SEED)

    def pop(self, queue: str) -> Any:
        """The next injected fault of a queue ("storage_statuses", "api_statuses", "storage_body_faults",
        "blob_statuses", "blob_body_faults", "github_rate_limits"), or None: each is used once, by
        one request (thread-safe)."""
        with self._lock:
            pending = getattr(self, queue)
            return pending.pop(0) if pending else None

    def storage_fails(self) -> bool:
        """Whether this storage GET is one of the `storage_failure_rate` that fail."""
        if not self.storage_failure_rate:
            return False
        with self._lock:
            return self._rng.random() < self.storage_failure_rate


@dataclasses.dataclass
class Recorded:
    server: str  # "api" | "storage" | "livelog" | "html" (the circle-artifacts host) | "blob" (GitHub's storage)
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    time: float
    bytes_sent: int = 0  # body bytes sent (the blob host counts them; others leave 0)
