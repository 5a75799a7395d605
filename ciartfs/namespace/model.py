"""The namespace's model: what providers describe and the tree turns into inodes.

A provider describes each directory through a `DirSource` that returns `Entry` records; a
file's `Entry` carries an `Artifact`, which tells the reader how to get its bytes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from ciartfs.data.sources import LIVE, RANGED, ByteSource


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    LINK = "link"


@dataclasses.dataclass(frozen=True, slots=True)
class Artifact:
    """What the reader needs to serve a file: a cache identity, where the bytes are and how
    they are obtained.

    `key` names the artifact (provider, host, project, build, node, path) and never holds a
    URL or a secret; it is the cache key. `url` may redirect to a storage host. `source` says
    how the bytes are obtained (data/sources.py): by Range from `url` (RANGED, or TAIL_FIRST for
    an archive indexed at its end: `source_for_name(path)`), or streamed as a growing file (LIVE).
    The URL sources are shared singletons, and the fields are slots (no per-instance dict):
    with a typical CircleCI key and URL, 263 bytes per artifact instead of 311 (tracemalloc).
    """

    key: str
    url: str
    immutable: bool
    size: int | None = None  # when the listing already says it
    # An artifact the CI system marks as failed (Taskcluster's `error` storage type): it is
    # listed, and opening it fails with EIO; the reason is fetched on demand.
    error: bool = False
    # Why the CI system no longer has it, known from its listing alone (Taskcluster's
    # `expires` passed): listed, and opening it fails with ENOENT without a request.
    gone: str | None = None
    # The provider built `url`, or recognised it by its documented pattern: its first request
    # may carry the provider's credentials. A URL taken as given (from a listing) gets none.
    credentialed: bool = False
    # The content hashes the storage promises ({"sha256": hex, ...}, Taskcluster's object
    # service), asked for only when the reader has read the whole artifact and checks it. A
    # callable with an `algorithms` attribute (names) promises only those: only they are computed.
    expected_hashes: Callable[[], Awaitable[Mapping[str, str]]] | None = dataclasses.field(default=None, compare=False)
    # How the bytes are obtained (see above); set by the provider where it builds the artifact.
    source: ByteSource = RANGED

    @property
    def live(self) -> bool:
        """A growing file served from one shared stream (a running task's live log, see
        livelog.py): never probed for a size; its size is the bytes seen so far."""
        return self.source is LIVE


class DirSource(Protocol):
    """A provider's view of one directory. `list()` returns None for directories that
    cannot be enumerated (any name may still be looked up)."""

    # Read-only members (properties here), so that an implementation may narrow them: a plain
    # `ttl = None` or `ttl: float` class attribute, or `complete = True`, satisfies the protocol.

    @property
    def ttl(self) -> float | None:
        """Seconds a listing stays valid; None means it never changes (completed build)."""

    @property
    def complete(self) -> bool:
        """True when list() names every child, so a name not in it is ENOENT without asking."""

    async def list(self) -> list[Entry] | None: ...

    async def lookup(self, name: str) -> Entry | None: ...

    # Optional (read with getattr, default False): `walk_ahead = True` lets the tree walk this
    # directory's children ahead of a walker that enters them in turn (see tree.py).


@dataclasses.dataclass(slots=True)  # slots: one per listed artifact, held by its directory
class Entry:
    name: str
    kind: Kind
    mtime: float = 0.0
    immutable: bool = False
    source: DirSource | None = None  # DIR
    artifact: Artifact | None = None  # FILE
    target: str | None = None  # LINK
    # Shown as extended attributes `user.ciartfs.<key>` (provider metadata, never secrets).
    info: Mapping[str, str] = dataclasses.field(default_factory=dict)


class CompleteDir:
    """Base for a directory whose list() names every child: lookup is a search of it (the
    tree only calls lookup on such a directory when it has no fresh listing)."""

    complete = True
    ttl: float | None = None

    async def list(self) -> list[Entry]:
        raise NotImplementedError

    async def lookup(self, name: str) -> Entry | None:
        return next((e for e in await self.list() if e.name == name), None)


class StaticDir:
    """A directory whose children are known up front (artifact subtrees, fixed roots)."""

    complete = True

    def __init__(self, entries: Iterable[Entry], ttl: float | None = None) -> None:
        self._entries = {e.name: e for e in entries}
        self.ttl = ttl

    async def list(self) -> list[Entry]:
        return list(self._entries.values())

    async def lookup(self, name: str) -> Entry | None:
        return self._entries.get(name)
