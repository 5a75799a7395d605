"""The namespace's model: what providers describe and the tree turns into inodes.

A provider describes each directory through a `DirSource` that returns `Entry` records; a
file's `Entry` carries an `Artifact`, which tells the reader how to get its bytes.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import enum
import gc
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Protocol

from ciartfs.data.sources import LIVE, RANGED, ByteSource


@contextlib.contextmanager
def many_made() -> Iterator[None]:
    """Pause the cyclic garbage collector while a listing's objects are made (synchronously,
    no await inside): they all live on, and each collection their allocations trigger walks the
    whole heap for nothing (about a third of re-listing 100k artifacts)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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


@dataclasses.dataclass(frozen=True, slots=True)
class PackedFiles:
    """A directory's files described at once instead of by an Entry each: their names, and how
    to make the artifact of the i-th when it is first needed (a size, an open). The tree makes
    their nodes without entries, and no artifact until one is asked for: re-listing a directory
    of 100k artifacts the kernel forgot makes 100k objects, not 300k.

    `names` are sorted, distinct, pass `names.name_problem`, and name none of the directory's
    other entries; `make(i)` is never a LIVE artifact and says no size (a packed file's
    attributes are given without it; its size is learned as any unknown one). `info_of(i)`,
    when files' info differ, is the i-th's, made with its artifact (`info` until then)."""

    names: list[str]
    mtime: float
    immutable: bool
    info: Mapping[str, str]
    make: Callable[[int], Artifact]
    info_of: Callable[[int], Mapping[str, str]] | None = None

    def index(self, name: str) -> int | None:
        at = bisect.bisect_left(self.names, name)
        return at if at < len(self.names) and self.names[at] == name else None

    def entry(self, i: int) -> Entry:
        return Entry(self.names[i], Kind.FILE, mtime=self.mtime, immutable=self.immutable, artifact=self.make(i),
                     info=self.info if self.info_of is None else self.info_of(i))


class StaticDir:
    """A directory whose children are known up front (artifact subtrees, fixed roots); `files`,
    more of them, packed (the tree reads them from there: `files`)."""

    complete = True

    def __init__(self, entries: Iterable[Entry], ttl: float | None = None, files: PackedFiles | None = None) -> None:
        self._entries = {e.name: e for e in entries}
        self.ttl = ttl
        self.files = files

    async def list_unpacked(self) -> list[Entry]:
        """The entries not in `files`."""
        return list(self._entries.values())

    async def list(self) -> list[Entry]:
        entries, packed = self._entries, self.files
        listed = list(entries.values())
        if packed is not None:  # (a packed name that is also an entry's is the entry's, as in the tree)
            listed += [packed.entry(i) for i, name in enumerate(packed.names) if name not in entries]
        return listed

    async def lookup(self, name: str) -> Entry | None:
        entry = self._entries.get(name)
        if entry is None and self.files is not None and (i := self.files.index(name)) is not None:
            return self.files.entry(i)
        return entry
