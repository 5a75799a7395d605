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

Time: TTLs and waits are measured on trio's clock (`trio.current_time()`), never
`time.monotonic()`, so that tests run the tree under trio's MockClock and step over a TTL
instead of sleeping through it. Modification times shown to the kernel are wall-clock (`now`).

The model (Entry, Artifact, DirSource) is in model.py; the name rules, which every name the
tree shows passes, are in names.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import trio

from ciartfs.data.cache import SingleFlight
from ciartfs.errors import CiartfsError, NotFound, UpstreamError, again
from ciartfs.namespace.model import Artifact, DirSource, Entry, Kind
from ciartfs.namespace.names import NAME_MAX, name_problem, short, target_problem

log = logging.getLogger(__name__)

ROOT_INODE = 1
# How many file sizes are learned at once when a directory is listed: enough to hide the
# per-request latency of S3-like storage, few enough not to look like a flood.
SIZE_PROBE_CONCURRENCY = 96
# How long a listing, lookup or stat waits for one artifact's size. A healthy probe takes a
# round trip or two (tens of ms; a second on a far-away link); an artifact slower than this is
# shown with its size unknown rather than holding up `ls` until the operation timeout (30 s).
SIZE_WAIT_SECONDS = 2.0



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
    expires: float | None = None  # trio time the listing goes stale; None = never
    checked: float = 0.0  # trio time the provider last confirmed this entry
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
        return not child.immutable and ttl is not None and trio.current_time() - child.checked >= ttl

    async def list(self, node: Node) -> list[Node]:
        """Every listed child, sizes learned concurrently (those that come within the wait)."""
        if node.kind is not Kind.DIR:
            raise NotFound(f"{node.path} is not a directory")
        await self._ensure_fresh(node, listing_needed=True)
        children = [node.children[n] for n in node.listing or () if n in node.children]
        await self._learn_sizes(children)
        return children

    async def _ensure_fresh(self, node: Node, *, listing_needed: bool) -> None:
        stale = node.expires is not None and trio.current_time() >= node.expires
        if node.listing is not None and not stale:
            return
        if node.listing is None and not listing_needed and not node.source.complete:  # type: ignore[union-attr]
            return  # a lookup in a not-yet-listed, non-complete dir needs no listing
        await self._refresh.run(node.inode, lambda: self._fill(node))

    async def _fill(self, node: Node) -> None:
        assert node.source is not None
        entries = await node.source.list()
        ttl = node.source.ttl
        node.expires = None if ttl is None else trio.current_time() + ttl
        if entries is None:
            node.listing = []
            return
        names = []
        seen = set()
        for entry in entries:
            if entry.name in seen:
                continue
            problem = name_problem(entry.name) or (entry.target is not None and target_problem(entry.target))
            if problem:  # one unusable name (a lone surrogate from JSON) never fails its directory
                log.warning("%s: skipping an entry whose name %s: %s", node.path, problem, short(entry.name))
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
            child.checked = trio.current_time()
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
        child.checked = trio.current_time()
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

    async def _learn_sizes(self, nodes: Sequence[Node]) -> None:  # (`list` here is Tree.list)
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
