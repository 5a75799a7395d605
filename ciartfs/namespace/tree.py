"""Inodes and lazily-filled directories built from provider listings; path safety rules.

A provider describes directories through `DirSource` objects that return `Entry` records;
this module turns them into `Node`s with stable inode numbers, refreshes mutable listings
after their TTL, tracks the kernel's lookup counts, and learns file sizes (through an
injected `sizer`) when they are asked for.

Names cost only the API listing: a listing learns no size, so `ls` and `find -name` of a
directory of 100k artifacts make no storage request. A file whose size is not known yet is
shown with its size unknown (fs.py: 0 bytes, attributes that expire at once, so the kernel
asks again). Asked for one file's size (lookup, stat, open), the tree learns that one; asked
for a second file of the same listed directory, it also learns the unknown sizes of all that
directory's files, in listing order, by a pool of SIZE_PROBE_CONCURRENCY workers over one
queue (never one task per file): `ls -l`, `du` or `grep -r` find the next size learned, or on
its way, while `cat` of one file in a directory of 100k pays for one. A probe is as small as
can be (16 KiB, for `ls -l`) unless the file is likely to be read: a lookup (a path resolved
is most often opened next), an open, or any file of a directory a file was opened in (`grep
-r`: the kernel's permission check asks getattr before each open); then it brings block 0.

One bad artifact never takes its directory down: a lookup or stat waits for one artifact's
size at most `size_wait` seconds from when its request went out. An artifact whose size is not
known by then (slow), or cannot be had (expired, refused, a bad answer: `Node.error`), is still
shown, with its size unknown; a slow one's request goes on in the background, so a later stat
gets its true size. Only `size_of` (open, which needs the size) waits for the answer, and
raises the artifact's own error.

A directory source may give its files packed (model.PackedFiles: their names, and how to make
one's artifact): their nodes are made without an Entry each, and a node's artifact only when it
is first asked for (`Node.artifact`: a size, an open). Listing a directory of 100k artifacts
(again, after the kernel forgot it) then makes 100k objects rather than 300k, with the garbage
collector paused meanwhile (`many_made`: every one of them lives on).

Walking ahead (`grep -r`, `find`, `du` over a Taskcluster group of 5k tasks, where each task
costs an API listing and its files' probes, one task after another): a directory whose source
says `walk_ahead` has its children walked ahead of the walker, once a second of them is entered
(listed by opendir). The siblings after the furthest one entered, up to AHEAD_SIBLINGS, are
given what the walker asked of the ones before: their subtrees listed as deep as it went below
that directory, their files' sizes learned if it stat'ed files there, as for reading (block 0)
if it opened them. AHEAD_CONCURRENCY siblings at once in all (one worker each, never one task
per entry), at most AHEAD_DIRS listings and AHEAD_FILES sizes each, and no new sibling once
the nodes made ahead of the walker reach AHEAD_NODES. Entering one directory costs nothing more
(`ls` of the group lists it alone); only a second child entered starts it, and only as deep as
the walker itself went.

Memory follows the kernel's: once the kernel has forgotten every inode in a directory's
subtree (its own included), the directory drops its children and listing, to be listed again
(from the API documents the disk cache keeps) if it is visited again. So a long-lived mount
holds what the kernel holds, not every build it ever showed. The kernel holds what it was
shown until memory is short, so the tree also bounds what it keeps: once its listings hold more
than MAX_HELD_ENTRIES entries, it asks the kernel (`ask_kernel_to_forget`, pyfuse3's
invalidate_entry_async: never from a handler synchronously) to forget the least recently used
listed directories, which it then releases as above (browsing 500 builds: a plateau). A
directory in use (a shell's cwd, an open handle) stays until the kernel lets it go. After a large release
(`trim_due`), the inode table is copied into a table of its new size (a dict never shrinks)
and `return_freed_memory` hands the freed heap back to the kernel (glibc keeps it otherwise).

Time: TTLs and waits are measured on trio's clock (`trio.current_time()`), never
`time.monotonic()`, so that tests run the tree under trio's MockClock and step over a TTL
instead of sleeping through it. Modification times shown to the kernel are wall-clock (`now`).

The model (Entry, Artifact, DirSource) is in model.py; the name rules, which every name the
tree shows passes, are in names.py.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableSequence

import trio

from ciartfs import libc
from ciartfs.data.cache import SingleFlight
from ciartfs.errors import CiartfsError, NotFound, UpstreamError, again
from ciartfs.namespace.model import Artifact, DirSource, Entry, Kind, PackedFiles, StaticDir, many_made
from ciartfs.namespace.names import NAME_MAX, name_problem, short, target_problem

log = logging.getLogger(__name__)

ROOT_INODE = 1
# How many of a directory's file sizes are learned at once (its workers): enough to hide the
# per-request latency of S3-like storage, few enough not to look like a flood.
SIZE_PROBE_CONCURRENCY = 96
# How long a lookup or stat waits for one artifact's size. A healthy probe takes a
# round trip or two (tens of ms; a second on a far-away link); an artifact slower than this is
# shown with its size unknown rather than holding up `ls` until the operation timeout (30 s).
SIZE_WAIT_SECONDS = 2.0
BATCHED = -1  # (see Tree._first_asked)
# Nodes released (forgotten by the kernel) after which the inode table is compacted and freed
# memory handed back: a directory of this many files costs megabytes; a trim, milliseconds.
TRIM_AFTER_NODES = 10_000
# Listed entries the tree keeps before it asks the kernel to forget the least recently used
# directories (~1.5 KiB each: ~300 MiB). The directory just listed, and its ancestors, stay.
MAX_HELD_ENTRIES = 200_000
# Walking ahead (see the module docstring): how far beyond the furthest sibling entered, how
# many siblings at once (all walk-aheads together), and per sibling how many listings and
# sizes; no new sibling once this many nodes were made ahead of the walker (~1 KiB each).
AHEAD_SIBLINGS = 256
AHEAD_CONCURRENCY = 64
AHEAD_DIRS = 64
AHEAD_FILES = 32
AHEAD_NODES = 20_000
# What the walker asked of the entries below a directory: what walking ahead gives its siblings.
NAMES, SIZES, READING = 0, 1, 2
# The children of every file and link: one empty dict, never added to (only a directory's
# children are), instead of one per node (64 bytes each at 100k artifacts).
NO_CHILDREN: dict[str, Node] = {}


@dataclasses.dataclass(eq=False, slots=True)  # slots: 100k artifacts' nodes, ~60% less memory
class Node:
    inode: int
    name: str
    kind: Kind
    parent: Node | None
    mtime: float
    immutable: bool
    source: DirSource | None = None
    # FILE: its artifact; None for a packed file until it is first asked for (see `artifact`)
    made_artifact: Artifact | None = None
    target: str | None = None
    size: int | None = None
    info: Mapping[str, str] = dataclasses.field(default_factory=dict)
    lookups: int = 0
    # 1 if the kernel holds a reference to this node, plus its children whose subtree it holds
    # one in: 0 when it references nothing in this subtree
    pinned: int = 0
    attached: bool = True
    children: dict[str, Node] = dataclasses.field(default_factory=dict)
    listing: list[str] | None = None  # names from the last list(), in order
    expires: float | None = None  # trio time the listing goes stale; None = never
    checked: float = 0.0  # trio time the provider last confirmed this entry
    # FILE: why its size could not be learned, when last asked (shown on open and as an xattr)
    error: CiartfsError | None = None

    @property
    def artifact(self) -> Artifact | None:
        """A file's artifact, made when first asked for if it was listed packed (PackedFiles of
        its directory's source), with its own info if files' differ (`info` until then)."""
        art = self.made_artifact
        if art is None and self.kind is Kind.FILE and self.parent is not None:
            source = self.parent.source
            files = source.files if isinstance(source, StaticDir) else None
            i = files.index(self.name) if files is not None else None
            if files is not None and i is not None:
                art = self.made_artifact = files.make(i)
                if files.info_of is not None:
                    self.info = files.info_of(i)
        return art

    @artifact.setter
    def artifact(self, value: Artifact | None) -> None:
        self.made_artifact = value

    @property
    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))


# A file's size; the flag says the file is being opened, so its first bytes will be read: a probe
# may then bring what that read wants rather than the least that names the size.
Sizer = Callable[[Artifact, bool], Awaitable[int]]


def _listed(parent: Node, name: str) -> bool:
    """`name` is in `parent`'s listing (sorted)."""
    listing = parent.listing or []
    at = bisect.bisect_left(listing, name)
    return at < len(listing) and listing[at] == name


_malloc_trim = libc.function("malloc_trim", ctypes.c_int, ctypes.c_size_t)  # glibc only


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim; elsewhere nothing).
    It walks the free lists (milliseconds for a large heap), so it runs in a worker thread."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class _SizeProbe:
    """One file's size being learned; concurrent askers share it."""

    __slots__ = ("done", "started")

    def __init__(self, started: float) -> None:
        self.started = started  # trio time its request went out
        self.done = trio.Event()


class _Ahead:
    """The walk-ahead of one directory's children (see the module docstring)."""

    __slots__ = ("first", "entered", "started", "depth", "mode", "next", "workers", "made")

    def __init__(self, first: int) -> None:
        self.first = first  # index (in the listing) of the first child entered
        self.entered = first  # the furthest child entered
        self.started = False  # a second child was entered
        self.depth = 1  # how deep below this directory the walker listed directories
        self.mode = NAMES  # what it asked of files below: NAMES, SIZES or READING
        self.next = first + 1  # the next child to walk
        self.workers = 0
        self.made: dict[int, int] = {}  # child index -> nodes its walk made, for those not entered yet


class Tree:
    """The inode table and directory cache. All methods run on the trio thread."""

    def __init__(self, root: DirSource, sizer: Sizer, *, now: Callable[[], float] = time.time,
                 size_wait: float = SIZE_WAIT_SECONDS) -> None:
        self._sizer = sizer
        self._size_wait = size_wait
        self._probes: dict[int, _SizeProbe] = {}  # inode -> its size being learned
        # directory inode -> the one file of its listing asked for so far (a second one starts
        # the batch), or BATCHED once the batch of this listing started
        self._first_asked: dict[int, int] = {}
        # directories a file was opened in: their sizes are probed as for reading (`grep -r`
        # opens each file, after a getattr the kernel's permission check makes)
        self._opened_in: set[int] = set()
        self._ahead: dict[int, _Ahead] = {}  # directory inode -> the walk-ahead of its children
        self._ahead_workers = 0  # of every walk-ahead
        self._background: trio.Nursery | None = None
        self._next_inode = ROOT_INODE + 1
        self.root = Node(ROOT_INODE, "", Kind.DIR, None, now(), False, source=root, lookups=1, pinned=1)
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._refresh: SingleFlight[None] = SingleFlight()
        self._released = 0  # nodes dropped since the last trim_due() that said so
        # listed directories, least recently used first: inode -> entries its listing holds
        self._held: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._held_entries = 0
        self.max_held_entries = MAX_HELD_ENTRIES
        # (parent inode, name): have the kernel drop that entry and what it holds below it (set
        # where a FUSE session exists; without one, nothing is asked and nothing is evicted)
        self.ask_kernel_to_forget: Callable[[int, str], None] | None = None

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

    def trim_due(self) -> bool:
        """True once TRIM_AFTER_NODES nodes were released since it last was (the caller then
        runs `return_freed_memory` in a worker thread); the inode table is compacted here."""
        if self._released < TRIM_AFTER_NODES:
            return False
        self._released = 0
        self.nodes = dict(self.nodes)
        return True

    def _pin(self, node: Node, delta: int) -> Node | None:
        """Count a kernel reference gained or lost (`node`'s first or last) up the chain of
        parents, as far as it changes whether a subtree is referenced at all (readdirplus of 100k
        entries: one step each, not one per ancestor). Returns the highest directory whose
        subtree the kernel no longer references at all (when losing one)."""
        released = None
        at: Node | None = node
        while at is not None:
            at.pinned += delta
            if at.pinned != (1 if delta > 0 else 0):
                break  # referenced before and still: the counts above stay
            if delta < 0 and at.kind is Kind.DIR:
                released = at
            at = at.parent
        return released

    def _release(self, node: Node) -> None:
        """Drop what a directory the kernel has forgotten holds: its listing and the nodes below
        it (none of which the kernel references). Visited again, it is listed again."""
        if not node.attached:
            return  # detached: its nodes went when the kernel forgot them
        parent = node.parent
        if parent is not None and parent is not self.root and not _listed(parent, node.name):
            # reached by lookup alone (a build by number): it goes too, found again if asked
            # for, so that browsing builds leaves no node per build behind
            self._detach(parent.children.pop(node.name))
            return
        for child in node.children.values():
            self._detach(child)  # no lookups anywhere below: every node goes at once
        node.children.clear()
        node.listing, node.expires = None, None
        self._unhold(node.inode)
        self._first_asked.pop(node.inode, None)
        self._opened_in.discard(node.inode)
        self._ahead.pop(node.inode, None)

    def _hold(self, node: Node, entries: int) -> None:
        """`node`'s new listing holds `entries`; beyond MAX_HELD_ENTRIES in all, the least
        recently used directories (not `node` nor its ancestors) are asked to be forgotten."""
        self._unhold(node.inode)
        self._held[node.inode] = entries
        self._held_entries += entries
        if self._held_entries <= self.max_held_entries or self.ask_kernel_to_forget is None:
            return
        keep = set()
        at: Node | None = node
        while at is not None:
            keep.add(at.inode)
            at = at.parent
        for inode in list(self._held):
            if self._held_entries <= self.max_held_entries:
                break
            victim = self.nodes.get(inode)
            if inode in keep or victim is None or victim.parent is None:
                continue
            self._unhold(inode)  # held again when it is listed again
            if victim.attached:
                self.ask_kernel_to_forget(victim.parent.inode, victim.name)

    def _unhold(self, inode: int) -> None:
        self._held_entries -= self._held.pop(inode, 0)

    def _used(self, node: Node) -> None:
        if node.inode in self._held:
            self._held.move_to_end(node.inode)

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
        self._used(parent)
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
                child = self._upsert(parent, entry, trio.current_time())
        # A path resolved is most often opened next (`cat path`, `grep -r` over entries the
        # kernel holds no dentry for): its probe brings what the first read wants. `ls -l`,
        # `du` and `find -size` stat the dentries readdirplus gave (getattr: 16 KiB probes).
        await self.learn_size(child, reading=True)
        return child

    @staticmethod
    def fresh_for(node: Node) -> float | None:
        """Seconds the listing that names `node` stays fresh (its directory's complete listing,
        with a TTL), or None when no such listing vouches for it. Until then the tree answers
        from that listing alone: nothing about `node` (its name, kind, target, mtime) changes."""
        parent = node.parent
        if parent is None or parent.expires is None or parent.listing is None or not node.attached \
                or parent.source is None or not parent.source.complete:
            return None
        return parent.expires - trio.current_time()

    @staticmethod
    def _stale(parent: Node, child: Node) -> bool:
        """A mutable child (e.g. `latest`) is re-validated once its parent's TTL has passed,
        also when it was reached by lookup alone, without a listing."""
        ttl = parent.source.ttl if parent.source is not None else None
        return not child.immutable and ttl is not None and trio.current_time() - child.checked >= ttl

    async def list(self, node: Node) -> list[Node]:
        """Every listed child. No size is learned: names cost only the API listing."""
        if node.kind is not Kind.DIR:
            raise NotFound(f"{node.path} is not a directory")
        await self._ensure_fresh(node, listing_needed=True)
        self._used(node)
        self._entered(node)
        return [node.children[n] for n in node.listing or () if n in node.children]

    async def _ensure_fresh(self, node: Node, *, listing_needed: bool) -> None:
        stale = node.expires is not None and trio.current_time() >= node.expires
        if node.listing is not None and not stale:
            return
        if node.listing is None and not listing_needed and not node.source.complete:  # type: ignore[union-attr]
            return  # a lookup in a not-yet-listed, non-complete dir needs no listing
        await self._refresh.run(node.inode, lambda: self._fill(node))

    async def _fill(self, node: Node) -> None:
        assert node.source is not None
        source = node.source
        files = source.files if isinstance(source, StaticDir) else None
        if isinstance(source, StaticDir) and files is not None:
            entries: list[Entry] | None = await source.list_unpacked()  # its files: nodes from `files` below
        else:
            entries = await source.list()
        ttl = source.ttl
        node.expires = None if ttl is None else trio.current_time() + ttl
        if entries is None:
            node.listing = []
            return
        names = []
        seen = set()
        now = trio.current_time()
        with many_made():
            for entry in entries:
                if entry.name in seen:
                    continue
                problem = name_problem(entry.name) or (entry.target is not None and target_problem(entry.target))
                if problem:  # one unusable name (a lone surrogate from JSON) never fails its directory
                    log.warning("%s: skipping an entry whose name %s: %s", node.path, problem, short(entry.name))
                    continue
                seen.add(entry.name)
                self._upsert(node, entry, now)
                names.append(entry.name)
            if files is not None:
                self._add_packed(node, files, seen, names, now)
        if ttl is not None and node.source.complete:
            # A complete, mutable listing: children that vanished are gone.
            for gone in set(node.children) - seen:
                self._detach(node.children.pop(gone))
        node.listing = sorted(names)
        self._first_asked.pop(node.inode, None)  # a new listing: its unknown sizes may be batched
        self._hold(node, len(names))

    def _upsert(self, parent: Node, entry: Entry, now: float) -> Node:
        """Create the child, or update it in place so the kernel's inode stays valid."""
        child = parent.children.get(entry.name)
        if child is not None and child.kind is entry.kind:
            child.checked = now
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
        child = Node(  # (by position: a listing of 100k artifacts makes 100k)
            self._next_inode, entry.name, entry.kind, parent, entry.mtime, entry.immutable, entry.source,
            entry.artifact, entry.target, entry.artifact.size if entry.artifact else None, entry.info,
            0, 0, True, {} if entry.kind is Kind.DIR else NO_CHILDREN,
        )
        child.checked = now  # (one float shared by a listing's nodes: 24 bytes each saved at 100k)
        self._next_inode += 1
        self.nodes[child.inode] = child
        parent.children[entry.name] = child
        return child

    def _add_packed(self, parent: Node, files: PackedFiles, seen: set[str], names: MutableSequence[str], now: float) -> None:
        """`_upsert` of each packed file, without an Entry or an Artifact (see PackedFiles): the
        node of a name new or that was not a file is made; a file's is kept (a mutable listing's
        has its artifact made again and its size learned again)."""
        children, nodes, inode = parent.children, self.nodes, self._next_inode
        mtime, immutable, info, file = files.mtime, files.immutable, files.info, Kind.FILE
        if not children and seen.isdisjoint(files.names):
            # (a first listing, or one again after the kernel forgot it: nothing to compare)
            for name in files.names:
                nodes[inode] = children[name] = Node(inode, name, file, parent, mtime, immutable, None, None, None,
                                                     None, info, 0, 0, True, NO_CHILDREN, None, None, now)
                inode += 1
            self._next_inode = inode
            seen.update(files.names)
            names.extend(files.names)
            return
        for name in files.names:
            if name in seen:
                continue
            seen.add(name)
            names.append(name)
            child = children.get(name)
            if child is not None:
                if child.kind is file:
                    child.checked, child.mtime, child.immutable, child.info = now, mtime, immutable, info
                    if not immutable:
                        child.made_artifact, child.size = None, None
                    continue
                self._detach(child)
            child = Node(inode, name, file, parent, mtime, immutable, None, None, None, None, info, 0, 0, True, NO_CHILDREN)
            child.checked = now
            nodes[inode] = children[name] = child
            inode += 1
        self._next_inode = inode

    def _detach(self, node: Node) -> None:
        node.attached = False
        self._released += 1
        if node.lookups == 0:
            self.nodes.pop(node.inode, None)
        if node.kind is Kind.DIR:
            self._unhold(node.inode)
            self._first_asked.pop(node.inode, None)
            self._opened_in.discard(node.inode)
            self._ahead.pop(node.inode, None)
        for child in list(node.children.values()):
            self._detach(child)
        node.children.clear()

    # -- sizes --------------------------------------------------------------------------------

    async def learn_size(self, node: Node, *, reading: bool = False) -> None:
        """Learn a file's unknown size, waiting at most `size_wait` from when its request went
        out. Afterwards `node.size` is known, or `node.error` says why not, or the size is
        still coming (slow). Never raises a CiartfsError. `reading`: it is likely to be opened."""
        if node.kind is not Kind.FILE:
            return
        self._asked_below(node, READING if reading else SIZES)
        if node.size is not None:
            return
        async with self._probe_nursery() as nursery:
            probe = self._asked(node, nursery, reading=reading)
            start = probe.started
            with trio.move_on_at(start + self._size_wait):
                await probe.done.wait()

    async def size_of(self, node: Node) -> int:
        """A file's size, waiting for the answer however long it takes (the operation timeout
        bounds it); raises why it cannot be had."""
        if node.parent is not None and node.kind is Kind.FILE:
            self._opened_in.add(node.parent.inode)
            self._asked_below(node, READING)
        if node.size is None and node.kind is Kind.FILE:
            async with self._probe_nursery() as nursery:
                await self._asked(node, nursery, reading=True).done.wait()
        if node.size is None:
            if node.error is not None:
                raise again(node.error)
            raise UpstreamError(f"{node.path}: size unknown")
        return node.size

    def _asked(self, node: Node, nursery: trio.Nursery, *, reading: bool) -> _SizeProbe:
        """Someone wants this file's size now (to read it: `reading`): its probe (started now if
        it was not), and, from the second file of a listed directory asked for, its siblings'
        unknown sizes too (probed as for reading when files are being opened: `grep -r`)."""
        parent = node.parent
        reading = reading or (parent is not None and parent.inode in self._opened_in)
        probe = self._probes.get(node.inode)
        if probe is None:
            probe = self._start_probe(node, nursery, reading)
        if parent is not None and parent.listing is not None and self._background is not None:
            first = self._first_asked.setdefault(parent.inode, node.inode)
            if first not in (node.inode, BATCHED):
                self._first_asked[parent.inode] = BATCHED  # once per listing (a stat is O(1))
                self._start_batch(parent, reading)
        return probe

    def _start_batch(self, parent: Node, reading: bool) -> None:
        """Learn the unknown sizes of `parent`'s listed files, in listing order, by a pool of
        SIZE_PROBE_CONCURRENCY workers over one queue: what `ls -l`, `du` or `grep -r` will
        ask for next is (being) learned when they ask. Files with a failed size are left out
        (a stat of one asks again, alone); one asked for meanwhile starts at once."""
        assert self._background is not None
        todo = [child for name in parent.listing or () if (child := parent.children.get(name)) is not None
                and child.kind is Kind.FILE and child.size is None and child.error is None
                and child.inode not in self._probes]
        if not todo:
            return
        queue = iter(todo)  # shared by the workers: each file is taken once
        for _ in range(min(SIZE_PROBE_CONCURRENCY, len(todo))):
            self._background.start_soon(self._batch_worker, queue, reading)

    async def _batch_worker(self, queue: Iterator[Node], reading: bool) -> None:
        for node in queue:
            if node.size is not None or node.error is not None or not node.attached:
                continue
            if node.inode not in self._probes:  # (else it was asked for: its own probe runs)
                probe = _SizeProbe(trio.current_time())
                self._probes[node.inode] = probe
                await self._run_probe(node, probe, reading)

    @contextlib.asynccontextmanager
    async def _probe_nursery(self) -> AsyncIterator[trio.Nursery]:
        """Where probes run: the background nursery (they outlive a wait that gives up), or,
        before `start`, one that the caller waits out."""
        if self._background is not None:
            yield self._background
        else:
            async with trio.open_nursery() as nursery:
                yield nursery

    def _start_probe(self, node: Node, nursery: trio.Nursery, reading: bool) -> _SizeProbe:
        probe = _SizeProbe(trio.current_time())
        self._probes[node.inode] = probe
        nursery.start_soon(self._run_probe, node, probe, reading)
        return probe

    async def _run_probe(self, node: Node, probe: _SizeProbe, reading: bool) -> None:
        assert node.artifact is not None
        try:
            node.size, node.error = await self._sizer(node.artifact, reading), None
        except CiartfsError as e:
            node.error = again(e)
            log.debug("%s: size unknown: %s", node.path, e)
        except Exception as e:  # a bug must not kill the background nursery (the mount)
            log.exception("%s: learning the size failed", node.path)
            node.error = UpstreamError(f"{node.path}: internal error learning the size ({type(e).__name__})")
        finally:
            if self._probes.get(node.inode) is probe:
                del self._probes[node.inode]
            probe.done.set()

    # -- walking ahead ------------------------------------------------------------------------

    def _entered(self, node: Node) -> None:
        """The walker listed `node` (opendir): the directories above it that walk ahead learn
        how deep it went; its parent, which child it reached (a second one starts the walk)."""
        if self._background is None:
            return
        depth, above = 1, node.parent
        while above is not None:  # O(depth): a dict lookup per directory above
            state = self._ahead.get(above.inode)
            if state is not None and depth > state.depth:
                state.depth = depth
                self._restart(above, state)
            depth, above = depth + 1, above.parent
        parent = node.parent
        if parent is None or parent.listing is None or not getattr(parent.source, "walk_ahead", False):
            return
        index = bisect.bisect_left(parent.listing, node.name)
        if index >= len(parent.listing) or parent.listing[index] != node.name:
            return
        state = self._ahead.get(parent.inode)
        if state is None:
            self._ahead[parent.inode] = _Ahead(index)
            return
        if index > state.entered:
            state.entered = index
            for done in [i for i in state.made if i <= index]:
                del state.made[done]
        if index != state.first and not state.started:
            state.started = True
            state.next = max(state.next, state.entered + 1)
        self._spawn_ahead(parent, state)

    def _asked_below(self, node: Node, mode: int) -> None:
        """A file's size (SIZES) or bytes (READING) were asked for: walking ahead above it
        gives the siblings' files the same, from the next sibling not entered yet."""
        above = node.parent
        while above is not None:
            state = self._ahead.get(above.inode)
            if state is not None and mode > state.mode:
                state.mode = mode
                self._restart(above, state)
            above = above.parent

    def _restart(self, parent: Node, state: _Ahead) -> None:
        """The walker asks more than before: the siblings not entered are walked again (what
        they hold already costs nothing: listings are kept, sizes known)."""
        if state.started:
            state.next = state.entered + 1
            state.made.clear()
            self._spawn_ahead(parent, state)

    def _spawn_ahead(self, parent: Node, state: _Ahead) -> None:
        if not state.started or self._background is None or parent.listing is None:
            return
        stop = min(len(parent.listing), state.entered + 1 + AHEAD_SIBLINGS)
        wanted = min(AHEAD_CONCURRENCY - self._ahead_workers, stop - state.next - state.workers)
        for _ in range(max(0, wanted)):
            state.workers += 1
            self._ahead_workers += 1
            self._background.start_soon(self._ahead_worker, parent, state)

    async def _ahead_worker(self, parent: Node, state: _Ahead) -> None:
        """Walk the next sibling not taken, until the window or the node budget is reached."""
        try:
            while self._ahead.get(parent.inode) is state and parent.listing is not None:
                listing = parent.listing
                if state.next >= min(len(listing), state.entered + 1 + AHEAD_SIBLINGS) \
                        or sum(state.made.values()) >= AHEAD_NODES:
                    return
                index = state.next
                state.next += 1
                child = parent.children.get(listing[index])
                if child is not None and child.kind is Kind.DIR:
                    made = await self._walk_ahead(child, state)
                    if index > state.entered:
                        state.made[index] = made
        except Exception:  # a bug must not kill the background nursery (the mount)
            log.exception("%s: walking ahead failed", parent.path)
        finally:
            state.workers -= 1
            self._ahead_workers -= 1

    async def _walk_ahead(self, top: Node, state: _Ahead) -> int:
        """List `top`'s subtree as deep as the walker went (breadth first, at most AHEAD_DIRS
        listings), then learn the sizes of the first AHEAD_FILES files found if it asked for
        sizes there. Returns the nodes seen. A failure leaves the rest to the walker."""
        seen = 0
        files: list[Node] = []
        todo = [(top, 1)]
        listed = 0
        while todo and listed < AHEAD_DIRS:
            node, depth = todo.pop(0)
            if not node.attached:
                continue
            try:
                await self._ensure_fresh(node, listing_needed=True)
            except CiartfsError as e:
                log.debug("%s: not walked ahead: %s", node.path, e)
                continue
            listed += 1
            for name in node.listing or ():
                child = node.children.get(name)
                if child is None:
                    continue
                seen += 1
                if child.kind is Kind.DIR and depth < state.depth:
                    todo.append((child, depth + 1))
                elif child.kind is Kind.FILE and len(files) < AHEAD_FILES:
                    files.append(child)
        if state.mode == NAMES:
            return seen
        for node in files:
            if node.size is None and node.error is None and node.attached and node.inode not in self._probes:
                probe = _SizeProbe(trio.current_time())
                self._probes[node.inode] = probe
                await self._run_probe(node, probe, state.mode == READING)
        return seen
