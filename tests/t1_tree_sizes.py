"""Tier 1: sizes are learned when asked for, without letting one artifact hold up or fail
its directory (fake clock: trio's autojump clock, so waits of seconds cost nothing).

A listing learns no size; asking for one file's size learns that one; asking for a second file
of a listed directory learns all its unknown sizes, by at most SIZE_PROBE_CONCURRENCY probes at
once; a stat waits at most `size_wait`; a failed size stays on its node (raised by `size_of`,
i.e. on open); a slow one goes on in the background and lands on its node; a file asked for
never queues behind the batch's slow probes; the reader remembers a failed size for a while.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from ciartfs.data import reader as reader_module
from ciartfs.data.cache import MemoryCache
from ciartfs.data.reader import Reader
from ciartfs.errors import ArtifactExpired, CiartfsError, Forbidden, UpstreamError
from ciartfs.namespace.model import Artifact, Entry, Kind, StaticDir
from ciartfs.namespace.tree import SIZE_PROBE_CONCURRENCY, Node, Tree
from ciartfs.net.client import HttpClient

WAIT = 2.0


def file_entry(name: str) -> Entry:
    return Entry(name, Kind.FILE, immutable=True, artifact=Artifact(f"k/{name}", f"http://x/{name}", True))


class Sizes:
    """A sizer by file name: `delays` (seconds; inf: never answers), `errors`, else the name's
    length after 0.05 s. Counts the calls per name."""

    def __init__(self, delays: dict[str, float] | None = None, errors: dict[str, CiartfsError] | None = None):
        self.delays = delays or {}
        self.errors = errors or {}
        self.calls: dict[str, int] = {}

    async def __call__(self, art: Artifact, reading: bool = False) -> int:
        name = art.url.rsplit("/", 1)[1]
        self.calls[name] = self.calls.get(name, 0) + 1
        await trio.sleep(self.delays.get(name, 0.05))
        if name in self.errors:
            raise self.errors[name]
        return len(name)


def make_tree(names: list[str], sizer: Sizes) -> tuple[Tree, Node]:
    root = StaticDir([Entry("d", Kind.DIR, immutable=True, source=StaticDir([file_entry(n) for n in names]))])
    tree = Tree(root, sizer, size_wait=WAIT)
    return tree, tree.root


async def listed(tree: Tree) -> dict[str, Node]:
    directory = await tree.lookup(tree.root, "d")
    return {c.name: c for c in await tree.list(directory)}


async def stat_two(tree: Tree, children: dict[str, Node], first: str, second: str) -> None:
    """What `ls -l` does first: stat one file, then another (the second starts the batch)."""
    await tree.learn_size(children[first])
    await tree.learn_size(children[second])


async def test_a_listing_learns_no_size(nursery, autojump_clock):
    sizer = Sizes()
    tree, _ = make_tree(["a.txt", "bb.txt", "ccc.txt"], sizer)
    tree.start(nursery)
    children = await listed(tree)
    await trio.sleep(60)
    assert sorted(children) == ["a.txt", "bb.txt", "ccc.txt"]
    assert sizer.calls == {} and all(c.size is None for c in children.values())


async def test_one_file_asked_for_learns_one_size(nursery, autojump_clock):
    sizer = Sizes()
    tree, _ = make_tree([f"f{i}" for i in range(50)], sizer)
    tree.start(nursery)
    children = await listed(tree)
    for _ in range(3):  # `cat`: lookup, fstat, open of the same file
        await tree.learn_size(children["f7"])
    assert await tree.size_of(children["f7"]) == 2
    await trio.sleep(60)
    assert sizer.calls == {"f7": 1}


async def test_a_second_file_asked_for_learns_every_size_bounded(nursery, autojump_clock):
    names = [f"f{i:04d}" for i in range(3 * SIZE_PROBE_CONCURRENCY + 5)]
    sizer = Sizes()
    running = peak = 0

    async def counting(art: Artifact, reading: bool) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await sizer(art, reading)
        finally:
            running -= 1

    root = StaticDir([Entry("d", Kind.DIR, immutable=True, source=StaticDir([file_entry(n) for n in names]))])
    tree = Tree(root, counting, size_wait=WAIT)
    tree.start(nursery)
    children = await listed(tree)
    tasks_before = len(nursery.child_tasks)
    await stat_two(tree, children, names[0], names[1])
    # a bounded pool of workers, not one task per file
    assert len(nursery.child_tasks) - tasks_before <= SIZE_PROBE_CONCURRENCY
    await trio.sleep(1.0)
    assert all(children[n].size == 5 for n in names)
    # concurrent, and bounded: the workers, plus the one file the second stat asked for itself
    assert SIZE_PROBE_CONCURRENCY <= peak <= SIZE_PROBE_CONCURRENCY + 1
    assert sizer.calls == dict.fromkeys(names, 1)
    # asking again costs nothing more
    await stat_two(tree, children, names[2], names[3])
    await trio.sleep(1.0)
    assert sizer.calls == dict.fromkeys(names, 1)


async def test_failed_sizes_leave_the_listing_whole_and_come_back_on_open(nursery):
    sizer = Sizes(errors={"gone.txt": ArtifactExpired("gone: HTTP 410"), "denied.txt": Forbidden("denied: HTTP 403")})
    tree, _ = make_tree(["a.txt", "gone.txt", "denied.txt", "bb.txt"], sizer)
    tree.start(nursery)
    children = await listed(tree)
    assert sorted(children) == ["a.txt", "bb.txt", "denied.txt", "gone.txt"]
    await stat_two(tree, children, "a.txt", "bb.txt")
    await trio.sleep(0.2)  # the batch learns the others
    assert children["a.txt"].size == 5 and children["bb.txt"].size == 6
    gone, denied = children["gone.txt"], children["denied.txt"]
    assert gone.size is None and isinstance(gone.error, ArtifactExpired) and "410" in str(gone.error)
    assert denied.size is None and isinstance(denied.error, Forbidden)
    with pytest.raises(ArtifactExpired, match="410") as info:
        await tree.size_of(gone)
    assert info.value is not gone.error  # a fresh exception each time: tracebacks do not pile up
    with pytest.raises(Forbidden):
        await tree.size_of(denied)
    assert await tree.size_of(children["a.txt"]) == 5
    # a lookup by name finds a failed file too
    assert await tree.lookup(tree.root.children["d"], "gone.txt") is gone
    # and once the artifact answers, its size replaces the error
    del sizer.errors["gone.txt"]
    await tree.learn_size(gone)
    assert gone.size == 8 and gone.error is None


async def test_a_slow_size_is_unknown_at_first_and_lands_later(nursery, autojump_clock):
    sizer = Sizes(delays={"slow.txt": 10.0, "stalled.txt": float("inf")})
    tree, _ = make_tree(["a.txt", "slow.txt", "stalled.txt", "z.txt"], sizer)
    tree.start(nursery)
    children = await listed(tree)
    slow, stalled = children["slow.txt"], children["stalled.txt"]
    await tree.learn_size(children["a.txt"])
    start = trio.current_time()
    await tree.learn_size(slow)  # the second file: the batch starts the others
    assert trio.current_time() - start == pytest.approx(WAIT, abs=0.01)  # a stat waits WAIT, no more
    assert children["a.txt"].size == 5 and children["z.txt"].size == 5
    assert slow.size is None and slow.error is None and stalled.size is None
    # a stat now: the probe is past its own deadline, so no waiting again
    before = trio.current_time()
    await tree.learn_size(slow)
    assert trio.current_time() == before and slow.size is None
    await trio.sleep(10.0)
    assert slow.size == 8  # the request went on in the background
    assert sizer.calls["slow.txt"] == 1
    # open waits for the answer however long (the sizer's own timeout bounds it in a mount)
    with trio.move_on_after(100) as scope:
        await tree.size_of(stalled)
    assert scope.cancelled_caught and sizer.calls["stalled.txt"] == 1


async def test_concurrent_askers_share_one_probe(nursery, autojump_clock):
    sizer = Sizes(delays={"f.txt": 1.0})
    tree, _ = make_tree(["f.txt", "g.txt"], sizer)
    tree.start(nursery)
    directory = await tree.lookup(tree.root, "d")
    children = {c.name: c for c in await tree.list(directory)}
    node = children["f.txt"]
    results: list[int] = []

    async def open_it() -> None:
        results.append(await tree.size_of(node))

    async with trio.open_nursery() as askers:
        for _ in range(5):
            askers.start_soon(tree.learn_size, node)
            askers.start_soon(open_it)
        askers.start_soon(tree.learn_size, children["g.txt"])  # the batch, while f's probe runs
    assert sizer.calls == {"f.txt": 1, "g.txt": 1} and results == [5] * 5


async def test_a_file_asked_for_does_not_queue_behind_the_batchs_stalled_probes(nursery, autojump_clock):
    names = [f"f{i:03d}" for i in range(SIZE_PROBE_CONCURRENCY + 6)]
    sizer = Sizes(delays={name: float("inf") for name in names})  # a storage host that never answers
    tree, _ = make_tree(names, sizer)
    tree.start(nursery)
    children = await listed(tree)
    start = trio.current_time()
    await stat_two(tree, children, names[0], names[1])
    assert trio.current_time() - start == pytest.approx(2 * WAIT, abs=0.01)  # each stat waited WAIT
    # the two asked for, and every worker, hold a stalled request
    queued = [name for name in names if name not in sizer.calls]
    assert len(sizer.calls) == SIZE_PROBE_CONCURRENCY + 2 and len(queued) == 4
    assert all(children[n].size is None for n in names)
    node = children[queued[0]]
    sizer.delays[node.name] = 0.05  # this one would answer at once
    await tree.learn_size(node)  # a stat of it
    assert node.size == 4 and trio.current_time() - start == pytest.approx(2 * WAIT + 0.05, abs=0.01)


async def test_before_start_every_wait_lasts_until_the_answer(autojump_clock):
    sizer = Sizes(delays={"slow.txt": 10.0}, errors={"bad.txt": UpstreamError("bad answer")})
    tree, _ = make_tree(["slow.txt", "bad.txt"], sizer)
    children = await listed(tree)
    await stat_two(tree, children, "slow.txt", "bad.txt")
    assert children["slow.txt"].size == 8 and isinstance(children["bad.txt"].error, UpstreamError)
    assert trio.current_time() >= 10.0


async def test_the_reader_remembers_a_failed_size_for_a_while(autojump_clock):
    asked: list[str] = []

    async def storage(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(410 if request.url.path == "/gone" else 206, content=b"0123456789",
                              headers={"Content-Range": "bytes 0-9/10"})

    reader = Reader(HttpClient(timeout=5, transport=httpx.MockTransport(storage)), MemoryCache(1 << 20), None, 4096)
    gone = Artifact("k/gone", "http://storage.example/gone", True)
    for _ in range(3):
        with pytest.raises(ArtifactExpired):
            await reader.size(gone)
    assert asked == ["/gone"]
    await trio.sleep(reader_module.SIZE_FAILURE_TTL + 1)
    with pytest.raises(ArtifactExpired):
        await reader.size(gone)
    assert asked == ["/gone", "/gone"]  # asked again once the memory expired
    assert await reader.size(Artifact("k/ok", "http://storage.example/ok", True)) == 10

