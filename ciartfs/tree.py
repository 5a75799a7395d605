"""Inodes and lazily-filled directories built from provider listings; path safety rules.

A provider describes directories through `DirSource` objects that return `Entry` records;
this module turns them into `Node`s with stable inode numbers, refreshes mutable listings
after their TTL, tracks the kernel's lookup counts, and learns file sizes (through an
injected `sizer`) before an entry is shown, because readdirplus and lookup need exact sizes.

One bad artifact never takes its directory down: sizes are learned concurrently; a lookup
or stat waits for one artifact's size at most `size_wait` seconds from when its request went
out, a listing until every size is in or `size_wait` passes with none of its requests starting
or ending. An artifact whose size is not known by then (slow), or cannot be had (expired,
refused, a bad answer: `Node.error`), is still shown, with its size unknown; a slow one's
request goes on in the background, so a later stat gets its true size. Only `size_of` (open,
which needs the size) waits for the answer, and raises the artifact's own error.

Memory follows the kernel's: once the kernel has forgotten every inode in a directory's
subtree (its own included), the directory drops its children and listing, to be listed again
(from the API documents the disk cache keeps) if it is visited again. So a long-lived mount
holds what the kernel holds, not every build it ever showed.

Artifact paths come from the network: `place_artifacts` is the one place that decides how
they become file names (rules in its docstring, also in the README).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import trio

from ciartfs.cache import SingleFlight
from ciartfs.errors import CiartfsError, NotFound, UpstreamError, again

log = logging.getLogger(__name__)

ROOT_INODE = 1
NAME_MAX = 255
# How many file sizes are learned at once when a directory is listed: enough to hide the
# per-request latency of S3-like storage, few enough not to look like a flood.
SIZE_PROBE_CONCURRENCY = 96
# How long a listing, lookup or stat waits for one artifact's size. A healthy probe takes a
# round trip or two (tens of ms; a second on a far-away link); an artifact slower than this is
# shown with its size unknown rather than holding up `ls` until the operation timeout (30 s).
SIZE_WAIT_SECONDS = 2.0

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
    # Why the CI system no longer has it, known from its listing alone (Taskcluster's
    # `expires` passed): listed, and opening it fails with ENOENT without a request.
    gone: str | None = None
    # The provider built `url`, or recognised it by its documented pattern: its first request
    # may carry the provider's credentials. A URL taken as given (from a listing) gets none.
    credentialed: bool = False
    # A growing file served from one shared stream (a running task's live log, see livelog.py):
    # never probed for a size; its size is the bytes seen so far.
    live: bool = False
    # The content hashes the storage promises ({"sha256": hex, ...}, Taskcluster's object
    # service), asked for only when the reader has read the whole artifact and checks it.
    expected_hashes: Callable[[], Awaitable[Mapping[str, str]]] | None = dataclasses.field(default=None, compare=False)


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
    # FILE: why its size could not be learned, when last asked (shown on open and as an xattr)
    error: CiartfsError | None = None

    @property
    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))


Sizer = Callable[[Artifact], Awaitable[int]]


class _Waiting:
    """One listing waiting for its files' sizes: how many are still unknown, and a wake-up
    whenever one of its probes starts or ends."""

    __slots__ = ("changed", "last_change", "pending")

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.changed = trio.Event()
        self.last_change = trio.current_time()

    def note(self, *, finished: bool) -> None:
        if finished:
            self.pending -= 1
        self.last_change = trio.current_time()
        self.changed.set()


@dataclasses.dataclass(eq=False)
class _SizeProbe:
    """One file's size being learned; concurrent askers share it."""

    started: float | None = None  # trio time its request went out; None while waiting for a slot
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    watchers: list[_Waiting] = dataclasses.field(default_factory=list)
    # Someone asks for this one file (stat, open): it stops queueing for a listing's slot, which
    # slow probes of other files might hold for the whole operation timeout.
    hurried: bool = False
    queued: trio.CancelScope | None = None

    def hurry(self) -> None:
        self.hurried = True
        if self.queued is not None:
            self.queued.cancel()

    def note(self, *, finished: bool) -> None:
        for watcher in self.watchers:
            watcher.note(finished=finished)


class Tree:
    """The inode table and directory cache. All methods run on the trio thread."""

    def __init__(self, root: DirSource, sizer: Sizer, *, now: Callable[[], float] = time.time,
                 size_wait: float = SIZE_WAIT_SECONDS) -> None:
        self._sizer = sizer
        self._size_wait = size_wait
        self._probes: dict[int, _SizeProbe] = {}  # inode -> its size being learned
        self._background: trio.Nursery | None = None
        self._next_inode = ROOT_INODE + 1
        self.root = Node(ROOT_INODE, "", Kind.DIR, None, now(), False, source=root, lookups=1, pinned=1)
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._refresh: SingleFlight[None] = SingleFlight()

    def start(self, nursery: trio.Nursery) -> None:
        """Size probes that outlast the wait for them run on in `nursery`. Until this is called,
        every wait lasts until the answer (sizes are still learned concurrently)."""
        self._background = nursery

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
        """The child `name` of `parent`, its size learned if it comes within the wait. Raises NotFound."""
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
        await self.learn_size(child)
        return child

    @staticmethod
    def _stale(parent: Node, child: Node) -> bool:
        """A mutable child (e.g. `latest`) is re-validated once its parent's TTL has passed,
        also when it was reached by lookup alone, without a listing."""
        ttl = parent.source.ttl if parent.source is not None else None
        return not child.immutable and ttl is not None and time.monotonic() - child.checked >= ttl

    async def list(self, node: Node) -> list[Node]:
        """Every listed child, sizes learned concurrently (those that come within the wait)."""
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
            problem = name_problem(entry.name) or (entry.target is not None and _target_problem(entry.target))
            if problem:  # one unusable name (a lone surrogate from JSON) never fails its directory
                log.warning("%s: skipping an entry whose name %s: %s", node.path, problem, _short(entry.name))
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

    # -- sizes --------------------------------------------------------------------------------

    async def learn_size(self, node: Node) -> None:
        """Learn a file's unknown size, waiting at most `size_wait` from when its request went
        out. Afterwards `node.size` is known, or `node.error` says why not, or the size is
        still coming (slow). Never raises a CiartfsError."""
        if node.kind is not Kind.FILE or node.size is not None:
            return
        async with self._probe_nursery() as nursery:
            probe = self._probe(node, None, nursery)
            probe.hurry()
            start = probe.started if probe.started is not None else trio.current_time()
            with trio.move_on_at(start + self._size_wait):
                await probe.done.wait()

    async def size_of(self, node: Node) -> int:
        """A file's size, waiting for the answer however long it takes (the operation timeout
        bounds it); raises why it cannot be had."""
        if node.size is None and node.kind is Kind.FILE:
            async with self._probe_nursery() as nursery:
                probe = self._probe(node, None, nursery)
                probe.hurry()
                await probe.done.wait()
        if node.size is None:
            if node.error is not None:
                raise again(node.error)
            raise UpstreamError(f"{node.path}: size unknown")
        return node.size

    async def _learn_sizes(self, nodes: list[Node]) -> None:
        """Learn unknown file sizes concurrently. Returns when each is known or failed, or once
        `size_wait` has passed with none of them starting or finishing (the rest are slow and
        go on in the background). Never raises a CiartfsError: a failure stays on its node."""
        todo = [n for n in nodes if n.kind is Kind.FILE and n.size is None]
        if not todo:
            return
        waiting = _Waiting(len(todo))
        limiter = trio.CapacityLimiter(SIZE_PROBE_CONCURRENCY)
        async with self._probe_nursery() as nursery:
            for node in todo:
                self._probe(node, limiter, nursery).watchers.append(waiting)
            while waiting.pending > 0:
                with trio.move_on_at(waiting.last_change + self._size_wait):
                    await waiting.changed.wait()
                if not waiting.changed.is_set():
                    slow = sum(1 for n in todo if n.size is None and n.error is None)
                    log.info("%s: %d of %d sizes not known within %gs; shown as unknown for now",
                             todo[0].parent.path if todo[0].parent else "?", slow, len(todo), self._size_wait)
                    break
                waiting.changed = trio.Event()

    @contextlib.asynccontextmanager
    async def _probe_nursery(self) -> AsyncIterator[trio.Nursery]:
        """Where probes run: the background nursery (they outlive a wait that gives up), or,
        before `start`, one that the caller waits out."""
        if self._background is not None:
            yield self._background
        else:
            async with trio.open_nursery() as nursery:
                yield nursery

    def _probe(self, node: Node, limiter: trio.CapacityLimiter | None, nursery: trio.Nursery) -> _SizeProbe:
        """The node's size probe in flight, or a new one started in `nursery` (under `limiter`)."""
        probe = self._probes.get(node.inode)
        if probe is None:
            probe = _SizeProbe()
            self._probes[node.inode] = probe
            nursery.start_soon(self._run_probe, node, probe, limiter)
        return probe

    async def _run_probe(self, node: Node, probe: _SizeProbe, limiter: trio.CapacityLimiter | None) -> None:
        assert node.artifact is not None
        holding = False
        try:
            if limiter is not None and not probe.hurried:
                with trio.CancelScope() as probe.queued:
                    await limiter.acquire()
                    holding = True
                probe.queued = None
            probe.started = trio.current_time()
            probe.note(finished=False)
            try:
                node.size, node.error = await self._sizer(node.artifact), None
            except CiartfsError as e:
                node.error = again(e)
                log.debug("%s: size unknown: %s", node.path, e)
            except Exception as e:  # a bug must not kill the background nursery (the mount)
                log.exception("%s: learning the size failed", node.path)
                node.error = UpstreamError(f"{node.path}: internal error learning the size ({type(e).__name__})")
        finally:
            if holding:
                assert limiter is not None
                limiter.release()
            if self._probes.get(node.inode) is probe:
                del self._probes[node.inode]
            probe.done.set()
            probe.note(finished=True)


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


def _target_problem(target: str) -> str | None:
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        return "links to a target that is not valid UTF-8"
    return None


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
        problem = name_problem(part)
        if problem:
            return f"a component {problem}"
    return parts


def name_problem(name: str) -> str | None:
    """Why `name` (from the network) cannot be a file name, or None: the one rule for every
    name the tree shows. JSON strings can hold lone surrogates, which no file name can carry."""
    if name in ("", ".", ".."):
        return f"is {name!r}" if name else "is empty"
    if "/" in name or "\x00" in name:
        return "contains '/' or a NUL byte"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"is longer than {NAME_MAX} bytes"
    return None


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
