"""Content hashes of artifacts whose storage promises them (Taskcluster `object` artifacts).

The blocks reads get are hashed in order from the artifact's start (on the trio thread, a block
at a time and a bounded number per read); the read that completes the file compares with the
promised hashes, asked for only then. A file of one block is checked before any of it is
served; a larger one read whole (`cat`, `sha256sum`) has its last read fail.

Invariants:
- A mismatch is EIO (ContentMismatch) for every read of the artifact from then on while the
  mount lives (objects are immutable: it will not come right; the kernel may still hold pages
  read before), logged once; its blocks are dropped from memory, the write queue and disk.
- Blocks are fed in order, each once: a block is fed only if it is `next_block` at that moment
  (reads check again after any await: concurrent reads also feed). The hashing runs on the
  trio thread in steps of HASH_AHEAD_BLOCKS, with a checkpoint between steps.
- A read continues the hashing through the blocks after its own that memory holds; a read that
  reaches the file's last block also through those being fetched and those on disk: kernel reads
  complete out of order, and a whole read must not end unchecked because the one that could
  finish the hashing came first. Neither asks the network for anything.
- Not checked: an object read out of order (random ranged reads, or kernel reads completing
  out of order) whose blocks from its start were not all held when a read could continue the
  hashing: in memory, or for the read of its last block also in flight or on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import cachetools
import trio

from ciartfs.data.blocks import Blocks
from ciartfs.data.cache import Buffer, SingleFlight
from ciartfs.errors import ContentMismatch, Offline, redact_url
from ciartfs.namespace.model import Artifact

log = logging.getLogger(__name__)

HeldBlock = Callable[[int], Awaitable["Buffer | None"]]

# Content hashes checked when the storage gives them (Taskcluster object artifacts).
HASH_ALGORITHMS = ("sha256", "sha512")
# Artifacts whose hashing from their start is under way, at most (least recently read dropped).
HASHING_KEPT = 4096
# Verdicts kept (right, or wrong).
VERDICTS_KEPT = 100_000
# Blocks hashed between checkpoints (a step's CPU on the trio thread: ~2 ms at 128 KiB blocks).
HASH_AHEAD_BLOCKS = 8


@dataclasses.dataclass
class _Hashing:
    """Content hashes of an artifact being read from its start: blocks before `next_block`
    are in the hashers; `digests` once all are."""

    hashers: dict[str, Any]
    next_block: int = 0
    digests: dict[str, str] | None = None


class HashChecks:
    """Hash checking for one mount (see the module docstring)."""

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks
        # artifacts being hashed from their start, the hashes their storage promised, those
        # found right this mount, and those found wrong
        self._hashing: cachetools.LRUCache[str, _Hashing] = cachetools.LRUCache(HASHING_KEPT)
        self._expected: cachetools.LRUCache[str, dict[str, str]] = cachetools.LRUCache(HASHING_KEPT)
        self._expecting: SingleFlight[dict[str, str]] = SingleFlight()
        self._verified: cachetools.LRUCache[str, bool] = cachetools.LRUCache(VERDICTS_KEPT)
        # (kept for the mount's life, not for a while: the kernel may still hold the pages read
        # before the mismatch showed, so a later whole read would reach us for its end only)
        self._mismatched: cachetools.LRUCache[str, ContentMismatch] = cachetools.LRUCache(VERDICTS_KEPT)
        self.checks = 0  # artifacts whose hashes were checked (right or wrong)

    @staticmethod
    def applies(art: Artifact) -> bool:
        return art.expected_hashes is not None and art.immutable

    def raise_if_mismatched(self, art: Artifact) -> None:
        if art.key in self._mismatched:  # (logged when found: raised quietly since)
            raise ContentMismatch(str(self._mismatched[art.key]), reported=True)

    async def check(self, art: Artifact, first: int, blocks: Sequence[Buffer], total: int,
                    held: HeldBlock | None = None) -> None:
        """Feed the blocks a read got (and those after them that are held) to the artifact's
        hashers when they continue from its start; once all its blocks went in, compare with
        the hashes the storage promised (see the module docstring). `held(index)`: the block if
        it costs no new request (in memory, being fetched, or on disk), else None."""
        key = art.key
        if key in self._verified or total <= 0:
            return
        count = self.blocks.count(total)
        at_end = held is not None and first + len(blocks) >= count  # (this read reached the last block)
        state = self._hashing.get(key)
        if state is None:
            if first != 0 and not at_end:
                return  # not read from its start (yet)
            # (only those the storage may promise: GitHub's sha256 alone is a third of SHA-512's CPU)
            promised = getattr(art.expected_hashes, "algorithms", HASH_ALGORITHMS)
            state = self._hashing[key] = _Hashing({name: hashlib.new(name) for name in HASH_ALGORITHMS
                                                   if name in promised})
        if not await self._feed(art, state, first, blocks, total, count, held if at_end else None):
            return
        digests = state.digests
        assert digests is not None
        try:
            expected = await self._expected_hashes(art)
        except Offline as e:
            log.info("%s: content hashes not checked: %s", redact_url(art.url), e)
            return
        self._hashing.pop(key, None)
        self.checks += 1
        wrong = sorted(name for name, value in expected.items() if name in digests and digests[name] != value)
        if not wrong:
            if not any(name in digests for name in expected):
                log.info("%s: no content hash we know in %s: not checked", redact_url(art.url), sorted(expected))
            self._verified[key] = True
            return
        if key in self._mismatched:  # a concurrent read found it first
            raise ContentMismatch(str(self._mismatched[key]), reported=True)
        mismatch = self._mismatched[key] = ContentMismatch(
            f"{redact_url(art.url)}: content hash mismatch ({', '.join(wrong)}) over all {total} bytes read: "
            f"not served; its cached blocks dropped", reported=True)
        # logged here, once: the read that finds it may be a read-ahead whose error nobody logs
        log.warning("%s", mismatch)
        await self.blocks.drop(art, count, total)
        raise ContentMismatch(str(mismatch), reported=True)

    async def _feed(self, art: Artifact, state: _Hashing, first: int, blocks: Sequence[Buffer], total: int,
                    count: int, held: HeldBlock | None) -> bool:
        """Feed what continues `state` (of `count` blocks) from the read's blocks and memory (and,
        with `held`, from what is being fetched or on disk); True once every block went in."""
        b, key = self.blocks, art.key
        step = HASH_AHEAD_BLOCKS
        while state.digests is None and state.next_block < count:
            index = state.next_block
            if first <= index < first + len(blocks):
                block: Buffer | None = blocks[index - first]
            else:
                block = b.memory.get_buffer(b.key(art, index, total))
                if block is None and held is not None:
                    block = await held(index)
                    if self._hashing.get(key) is not state:
                        return state.digests is not None  # (finished by another read, or dropped)
                    if state.next_block != index:
                        continue  # (another read fed it meanwhile: look again)
                if block is None:
                    return False
            for hasher in state.hashers.values():
                hasher.update(block)
            state.next_block += 1
            step -= 1
            if step == 0 and state.next_block < count:  # (the trio thread is shared: a checkpoint per step)
                step = HASH_AHEAD_BLOCKS
                await trio.lowlevel.checkpoint()
                if self._hashing.get(key) is not state:
                    return state.digests is not None  # (finished by another read, or dropped)
        if state.next_block == count and state.digests is None:
            state.digests = {name: hasher.hexdigest() for name, hasher in state.hashers.items()}
        return state.digests is not None

    async def _expected_hashes(self, art: Artifact) -> dict[str, str]:
        known = self._expected.get(art.key)
        if known is not None:
            return known
        assert art.expected_hashes is not None

        async def fetch() -> dict[str, str]:
            assert art.expected_hashes is not None
            hashes = dict(await art.expected_hashes())
            self._expected[art.key] = hashes
            return hashes
        return await self._expecting.run(art.key, fetch)
