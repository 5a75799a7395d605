"""Inodes and lazily-filled directories built from provider listings; path safety rules.

A provider describes directories through `DirSource` objects that return `Entry` records;
this module turns them into `Node`s with stable inode numbers, refreshes mutable listings
after their TTL, tracks the kernel's lookup counts, and learns file sizes (through an
injected `sizer`) before an entry is shown, because readdirplus and lookup need exact sizes.

Memory follows the kernel's: once the kernel has forgotten every inode in a directory's
subtree (its own included), the directory drops its children and listing, to be listed again
(from the API documents the disk cache keeps) if it is visited again. So a long-lived mount
holds what the kernel holds, not every build it ever showed.

Artifact paths come from the network: `place_artifacts` is the one place that decides how
they become file names (rules in its docstring, also in the README).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import trio

from ciartfs.cache import SingleFlight
from ciartfs.errors import CiartfsError, NotFound

log = logging.getLogger(__name__)

ROOT_INODE = 1
NAME_MAX = 255
# How many file sizes are learned at once when a directory is listed: enough to hide the
# per-request latency of S3-like storage, few enough not to look like a flood.
SIZE_PROBE_CONCURRENCY = 96

T = TypeVar("T")


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    LINK = "link"


@dataclasses.dataclass(frozen=True)
class Artifact:
    """What the reader needs to serve a file: a cache identity and where the bytes are.

    `key` names the artifact (provider, host, project, build, node, path) and never holds a
    URL or a secret; it is the cache key. `url` may redirect to a storage host.
    """

    key: str
    url: str
    immutable: bool
    size: int | None = None  # when the listing already says it
    # An artifact the CI system marks as failed (Taskcluster's `error` storage type): it is
    # listed, and opening it fails with EIO; the reason is fetched on demand.
    error: bool = False
    # The provider built `url`, or recognised it by its documented pattern: its first request
    # may carry the provider's credentials. A URL taken as given (from a listing) gets none.
    credentialed: bool = False


class DirSource(Protocol):
    """A provider's view of one directory. `list()` returns None for directories that
    cannot be enumerated (any name may still be looked up)."""

    # Seconds a listing stays valid; None means it never changes (completed build).
    ttl: float | None
    # True when list() names every child, so a name not in it is ENOENT without asking.
    complete: bool

    async def list(self) -> list[Entry] | None: ...

    async def lookup(self, name: str) -> Entry | None: ...


@dataclasses.dataclass
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


@dataclasses.dataclass(eq=False)
class Node:
    inode: int
    name: str
    kind: Kind
    parent: Node | None
    mtime: float
    immutable: bool
    source: DirSource | None = None
    artifact: Artifact | None = None
    target: str | None = None
    size: int | None = None
    info: Mapping[str, str] = dataclasses.field(default_factory=dict)
    lookups: int = 0
    # nodes in this subtree (this one included) the kernel holds a reference to
    pinned: int = 0
    attached: bool = True
    children: dict[str, Node] = dataclasses.field(default_factory=dict)
    listing: list[str] | None = None  # names from the last list(), in order
    expires: float | None = None  # monotonic time the listing goes stale; None = never
    checked: float = 0.0  # monotonic time the provider last confirmed this entry

    @property
    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))


Sizer = Callable[[Artifact], Awaitable[int]]


class Tree:
    """The inode table and directory cache. All methods run on the trio thread."""

    def __init__(self, root: DirSource, sizer: Sizer, *, now: Callable[[], float] = time.time) -> None:
        self._sizer = sizer
        self._next_inode = ROOT_INODE + 1
        self.root = Node(ROOT_INODE, "", Kind.DIR, None, now(), False, source=root, lookups=1, pinned=1)
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._refresh: SingleFlight[None] = SingleFlight()

    # -- inode table ----------------------------------------------------------------------------

    def get(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise NotFound(f"stale inode {inode}") from None

    def remember(self, node: Node) -> None:
        """The kernel now holds one more reference (a lookup or readdirplus entry)."""
        if node.lookups == 0:
            self._pin(node, 1)
        node.lookups += 1

    def forget(self, inode: int, count: int) -> None:
        node = self.nodes.get(inode)
        if node is None or node is self.root or node.lookups == 0:
            return
        node.lookups = max(0, node.lookups - count)
        if node.lookups == 0:
            if not node.attached:
                del self.nodes[inode]
            released = self._pin(node, -1)
            if released is not None:
                self._release(released)

    def _pin(self, node: Node, delta: int) -> Node | None:
        """Count a kernel reference gained or lost up the chain of parents. Returns the highest
        directory whose subtree the kernel no longer references at all (when losing one)."""
        released = None
        at: Node | None = node
        while at is not None:
            at.pinned += delta
            if at.pinned == 0 and at.kind is Kind.DIR:
                released = at
            at = at.parent
        return released

    def _release(self, node: Node) -> None:
        """Drop what a directory the kernel has forgotten holds: its listing and the nodes below
        it (none of which the kernel references). Visited again, it is listed again."""
        if not node.attached:
            return  # detached: its nodes went when the kernel forgot them
        for child in node.children.values():
            self._detach(child)  # no lookups anywhere below: every node goes at once
        node.children.clear()
        node.listing, node.expires = None, None

    # -- directories ----------------------------------------------------------------------------

    async def lookup(self, parent: Node, name: str) -> Node:
        """The child `name` of `parent`, with its size known. Raises NotFound."""
        if parent.kind is not Kind.DIR or parent.source is None:
            raise NotFound(f"{parent.path} is not a directory")
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise NotFound("name too long")
        if name in (".", ".."):
            raise NotFound(name)
        await self._ensure_fresh(parent, listing_needed=False)
        child = parent.children.get(name)
        if child is None or self._stale(parent, child):
            if parent.listing is not None and parent.source.complete:
                if child is None:  # a fresh, complete listing: no need to ask
                    raise NotFound(f"{parent.path}/{name}")
            else:
                entry = await parent.source.lookup(name)
                if entry is None:
                    if child is not None:
                        self._detach(parent.children.pop(name))
                    raise NotFound(f"{parent.path}/{name}")
                child = self._upsert(parent, entry)
        await self._learn_sizes([child])
        return child

    @staticmethod
    def _stale(parent: Node, child: Node) -> bool:
        """A mutable child (e.g. `latest`) is re-validated once its parent's TTL has passed,
        also when it was reached by lookup alone, without a listing."""
        ttl = parent.source.ttl if parent.source is not None else None
        return not child.immutable and ttl is not None and time.monotonic() - child.checked >= ttl

    async def list(self, node: Node) -> list[Node]:
        """Every listed child, sizes known (learned concurrently)."""
        if node.kind is not Kind.DIR:
            raise NotFound(f"{node.path} is not a directory")
        await self._ensure_fresh(node, listing_needed=True)
        children = [node.children[n] for n in node.listing or () if n in node.children]
        await self._learn_sizes(children)
        return children

    async def _ensure_fresh(self, node: Node, *, listing_needed: bool) -> None:
        stale = node.expires is not None and time.monotonic() >= node.expires
        if node.listing is not None and not stale:
            return
        if node.listing is None and not listing_needed and not node.source.complete:  # type: ignore[union-attr]
            return  # a lookup in a not-yet-listed, non-complete dir needs no listing
        await self._refresh.run(node.inode, lambda: self._fill(node))

    async def _fill(self, node: Node) -> None:
        assert node.source is not None
        entries = await node.source.list()
        ttl = node.source.ttl
        node.expires = None if ttl is None else time.monotonic() + ttl
        if entries is None:
            node.listing = []
            return
        names = []
        seen = set()
        for entry in entries:
            if entry.name in seen:
                continue
            seen.add(entry.name)
            self._upsert(node, entry)
            names.append(entry.name)
        if ttl is not None and node.source.complete:
            # A complete, mutable listing: children that vanished are gone.
            for gone in set(node.children) - seen:
                self._detach(node.children.pop(gone))
        node.listing = sorted(names)

    def _upsert(self, parent: Node, entry: Entry) -> Node:
        """Create the child, or update it in place so the kernel's inode stays valid."""
        child = parent.children.get(entry.name)
        if child is not None and child.kind is entry.kind:
            child.checked = time.monotonic()
            if child.kind is Kind.LINK:
                child.target = entry.target
            elif child.kind is Kind.FILE and (entry.artifact != child.artifact or not entry.immutable):
                # a mutable file (a growing live log) has its size learned again
                child.artifact, child.size = entry.artifact, None
            elif child.kind is Kind.DIR and not child.immutable:
                child.source = entry.source
                if entry.immutable:
                    child.listing, child.expires = None, None
            child.mtime, child.immutable, child.info = entry.mtime, entry.immutable, entry.info
            return child
        if child is not None:
            self._detach(child)
        child = Node(
            self._next_inode, entry.name, entry.kind, parent, entry.mtime, entry.immutable,
            source=entry.source, artifact=entry.artifact, target=entry.target,
            size=entry.artifact.size if entry.artifact else None, info=entry.info,
        )
        child.checked = time.monotonic()
        self._next_inode += 1
        self.nodes[child.inode] = child
        parent.children[entry.name] = child
        return child

    def _detach(self, node: Node) -> None:
        node.attached = False
        if node.lookups == 0:
            self.nodes.pop(node.inode, None)
        for child in list(node.children.values()):
            self._detach(child)
        node.children.clear()

    async def _learn_sizes(self, nodes: list[Node]) -> None:
        """Learn unknown file sizes concurrently; the first failure is raised."""
        todo = [n for n in nodes if n.kind is Kind.FILE and n.size is None]
        if not todo:
            return
        failures: list[CiartfsError] = []
        limiter = trio.CapacityLimiter(SIZE_PROBE_CONCURRENCY)

        async def one(node: Node) -> None:
            async with limiter:
                try:
                    assert node.artifact is not None
                    node.size = await self._sizer(node.artifact)
                except CiartfsError as e:
                    failures.append(e)

        async with trio.open_nursery() as nursery:
            for node in todo:
                nursery.start_soon(one, node)
        if failures:
            raise failures[0]


# -- artifact path safety ----------------------------------------------------------------------

@dataclasses.dataclass
class FileTree(Generic[T]):
    """A nested mapping of safe names: `dirs` and `files` never share a name."""

    dirs: dict[str, FileTree[T]] = dataclasses.field(default_factory=dict)
    files: dict[str, T] = dataclasses.field(default_factory=dict)

    def count(self) -> int:
        return len(self.files) + sum(d.count() for d in self.dirs.values())


def tree_entries(tree: FileTree[T], make_file: Callable[[str, str, T], Entry], *, mtime: float,
                 immutable: bool, ttl: float | None, prefix: str = "") -> list[Entry]:
    """The entries of a FileTree's top level: subdirectories as StaticDirs (recursively),
    files made by `make_file(name, path_below_the_top, value)`."""
    entries = []
    for name, sub in tree.dirs.items():
        children = tree_entries(sub, make_file, mtime=mtime, immutable=immutable, ttl=ttl, prefix=f"{prefix}{name}/")
        entries.append(Entry(name, Kind.DIR, mtime=mtime, immutable=immutable, source=StaticDir(children, ttl=ttl)))
    entries.extend(make_file(name, prefix + name, value) for name, value in tree.files.items())
    return entries


def split_artifact_path(path: Any) -> tuple[str, ...] | str:
    """The safe components of an artifact path, or a reason (str) why it is refused."""
    if not isinstance(path, str):
        return "not a string"
    if "\x00" in path:
        return "contains a NUL byte"
    parts = tuple(p for p in path.split("/") if p != "")  # drops the leading '/' and '//'
    if not parts:
        return "empty path"
    for part in parts:
        if part in (".", ".."):
            return f"contains a '{part}' component"
        try:
            encoded = part.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid UTF-8"
        if len(encoded) > NAME_MAX:
            return f"a component is longer than {NAME_MAX} bytes"
    return parts


def place_artifacts(items: Iterable[tuple[Any, T]], *, where: str, tiebreak: Callable[[T], str] = str) -> FileTree[T]:
    """Arrange (path, value) pairs into a FileTree. The rules, deterministic whatever the
    order of `items`:

    - a leading '/' is dropped and empty components ('a//b', trailing '/') are collapsed;
    - a path with a '.' or '..' component, a NUL byte, invalid UTF-8, or a component over
      255 bytes is skipped (warning logged);
    - the same path twice: the one whose `tiebreak` sorts first is kept, the rest skipped;
    - a path that is a file and also a directory of other paths ('a' and 'a/b'): the
      directory wins and the file is skipped.
    """
    accepted: list[tuple[tuple[str, ...], str, T]] = []
    for path, value in items:
        parts = split_artifact_path(path)
        if isinstance(parts, str):
            log.warning("%s: skipped artifact path %r: %s", where, _short(path), parts)
            continue
        accepted.append((parts, tiebreak(value), value))
    accepted.sort(key=lambda t: (t[0], t[1]))
    dir_paths = {parts[:i] for parts, _, _ in accepted for i in range(1, len(parts))}
    tree: FileTree[T] = FileTree()
    previous: tuple[str, ...] | None = None
    for parts, _, value in accepted:
        shown = "/".join(parts)
        if parts in dir_paths:
            log.warning("%s: skipped artifact %r: it is also a directory of other artifacts", where, _short(shown))
            continue
        if parts == previous:
            log.warning("%s: skipped duplicate artifact path %r", where, _short(shown))
            continue
        previous = parts
        node = tree
        for part in parts[:-1]:
            node = node.dirs.setdefault(part, FileTree())
        node.files[parts[-1]] = value
    return tree


def _short(text: Any, limit: int = 120) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
