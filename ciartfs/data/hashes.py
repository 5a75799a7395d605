"""Content hashes of artifacts whose storage promises them (Taskcluster `object` artifacts).

The blocks reads get are hashed in order from the artifact's start (on the trio thread, a block
at a time and a bounded number per read); the read that completes the file compares with the
promised hashes, asked for only then. A file of one block is checked before any of it is
served; a larger one read whole (`cat`, `sha256sum`) has its last read fail.

Invariants:
- A mismatch is EIO (ContentMismatch) for every read of the artifact from then on while the
  mount lives (objects are immutable: it will not come right; the kernel may still hold pages
  read before), logged once; its blocks are dropped from memory, the write queue and disk.
- Feeding the hashers never awaits, so concurrent reads feed in block order; the CPU a read
  spends is bounded (its own blocks plus HASH_AHEAD_BLOCKS from memory).
- Not checked: bytes of a large object read out of order (random ranged reads) before the
  whole was read from its start, and one whose blocks were evicted from memory between the
  reads that fetched them and the one that continues the hashing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import cachetools

from ciartfs.data.blocks import Blocks
from ciartfs.data.cache import Buffer, SingleFlight
from ciartfs.errors import ContentMismatch, Offline, redact_url
from ciartfs.namespace.model import Artifact

log = logging.getLogger(__name__)

# Content hashes checked when the storage gives them (Taskcluster object artifacts).
HASH_ALGORITHMS = ("sha256", "sha512")
# Artifacts whose hashing from their start is under way, at most (least recently read dropped).
HASHING_KEPT = 4096
# Verdicts kept (right, or wrong).
VERDICTS_KEPT = 100_000
# Blocks a read may hash beyond its own, from memory (read-ahead fetched them): bounds the
# CPU one read spends on the trio thread.
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

    async def check(self, art: Artifact, first: int, blocks: Sequence[Buffer], total: int) -> None:
        """Feed the blocks a read got (and those after them still in memory) to the artifact's
        hashers when they continue from its start; once all its blocks went in, compare with
        the hashes the storage promised (see the module docstring)."""
        key = art.key
        if key in self._verified or total <= 0:
            return
        state = self._hashing.get(key)
        if state is None:
            if first != 0:
                return  # not read from its start (yet)
            # (only those the storage may promise: GitHub's sha256 alone is a third of SHA-512's CPU)
            promised = getattr(art.expected_hashes, "algorithms", HASH_ALGORITHMS)
            state = self._hashing[key] = _Hashing({name: hashlib.new(name) for name in HASH_ALGORITHMS
                                                   if name in promised})
        b = self.blocks
        count = b.count(total)
        extra = HASH_AHEAD_BLOCKS  # bounded work per read: at most this many blocks from memory
        while state.digests is None and state.next_block < count:
            index = state.next_block
            if first <= index < first + len(blocks):
                block = blocks[index - first]
            else:
                cached = b.memory.get_buffer(b.key(art, index, total)) if extra > 0 else None
                if cached is None:
                    break
                block, extra = cached, extra - 1
            for hasher in state.hashers.values():
                hasher.update(block)
            state.next_block += 1
        if state.next_block == count and state.digests is None:
            state.digests = {name: hasher.hexdigest() for name, hasher in state.hashers.items()}
        if state.digests is None:
            return
        digests = state.digests
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
