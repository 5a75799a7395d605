"""Whole-body fills: storage that ignores Range (CircleCI's HTML on circle-artifacts.com may).

Such storage answers every block's GET with the whole body. That body is kept, not read for
one block and dropped: it streams on in the background into the cache (a `Fill`), and the
artifact is remembered as one whose Range is ignored, so a read of any block waits for that one
body to reach it instead of starting another (single flight per artifact; no read-ahead for it).

Invariants:
- A block is stored only when all of its bytes arrived, from a body whose Content-Length is the
  artifact's known size: a body of another length is an error, a cut body is fetched again
  (blocks stored before the cut are kept; FILL_CUTS_TRIED cuts in a row fail the waiting reads
  with EIO), a partial block is never stored or served.
- Memory stays at a batch of blocks plus a network chunk, held against the in-flight budget:
  blocks go to the disk cache in batches as they arrive (without one, to the memory LRU, and
  only for files that fit a share of it).
- A size probe (the first block, for `ls -l`) keeps its body streaming only while fewer than
  PROBE_FILLS do so; the others stop after the first block, and the file's first read fetches
  it whole, once.
- A fill never outlives its deadline (WHOLE_FETCH_TIMEOUT_FACTOR operation timeouts); its
  waiters always wake, with its error or to ask by range.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import cachetools
import trio

from ciartfs.data.blocks import Blocks
from ciartfs.data.decode import MEMORY_ONLY_DECODE_SHARE, WHOLE_FETCH_TIMEOUT_FACTOR
from ciartfs.errors import CiartfsError, UpstreamError, UpstreamTimeout, again, redact_url
from ciartfs.namespace.model import Artifact
from ciartfs.net.pool import READ_SIZE
from ciartfs.net.ranges import BodyCut, RangeReply, WholeBody

log = logging.getLogger(__name__)

# Size probes whose Range-ignoring body streams on into the cache at once (see module docstring):
# `ls -l` of many such files stays bounded; a later `cat` of one of them fetches it once.
PROBE_FILLS = 4
# A whole body goes to the disk cache in batches of about this many bytes, one thread hop each.
FILL_BATCH_BYTES = 1 << 20
# A whole body cut this many times in a row fails the reads waiting for it (EIO).
FILL_CUTS_TRIED = 3
RANGE_IGNORED_KEPT = 100_000


class Fill:
    """An artifact's whole body streaming into the cache: blocks [0, stored) are stored."""

    def __init__(self, total: int, blocks: int) -> None:
        self.total = total
        self.blocks = blocks  # it stores blocks [0, blocks): all, or up to a probe's block
        self.stored = 0
        self.done = False
        self.error: CiartfsError | None = None
        self.wanted = -1  # the highest block a reader waits for: stored as soon as it is complete
        self._changed = trio.Event()

    def advance(self, stored: int) -> None:
        self.stored = stored
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, error: CiartfsError | None = None) -> None:
        if not self.done:
            self.done, self.error = True, error
            self._changed.set()

    async def wait_for(self, index: int) -> None:
        self.wanted = max(self.wanted, index)
        while self.stored <= index and not self.done:
            await self._changed.wait()


class Fills:
    """The fills of one mount and the artifacts known to ignore Range."""

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks
        # artifacts whose storage answered a ranged GET with the whole body
        self.range_ignored: cachetools.LRUCache[str, bool] = cachetools.LRUCache(RANGE_IGNORED_KEPT)
        self.streaming: dict[str, Fill] = {}  # by artifact key, while streaming
        self._probe_fills = 0

    def ignores_range(self, art: Artifact) -> bool:
        return art.key in self.range_ignored

    def can_fill(self, art: Artifact, total: int | None) -> bool:
        """Whether a whole body of this artifact (of `total` bytes, if known) may stream into the cache."""
        b = self.blocks
        if not art.immutable or art.key in b.decoded or b.background is None:
            return False
        return total is None or self.fits(total)

    def fits(self, total: int) -> bool:
        b = self.blocks
        if b.disk is not None and b.disk.enabled:
            return True
        return total <= b.memory.max_bytes // MEMORY_ONLY_DECODE_SHARE

    async def block(self, art: Artifact, index: int, reply: RangeReply | None = None, *,
                    probe: bool = False) -> bytes | None:
        """Block `index` from the artifact's whole body: the one streaming now, or one started
        from `reply.whole` (which this takes over) or fetched anew. None when it could not be
        had that way (the fill ended before it without an error): the caller asks by range."""
        b = self.blocks
        whole = reply.whole if reply is not None else None
        try:
            fill = self.streaming.get(art.key)
            if fill is not None and index >= fill.blocks:  # a probe's short fill: wait it out
                await fill.wait_for(fill.blocks)
                fill = self.streaming.get(art.key)
            if fill is None:
                total = reply.total if reply is not None else b.sizes.get(art.key)
                if total is None:
                    return None
                if reply is not None:
                    b.remember_size(art, total)  # (a changed size fails here: nothing stored)
                count = max(1, -(-total // b.block_size))
                upto = count
                if whole is not None and (not self.fits(total) or (probe and self._probe_fills >= PROBE_FILLS)):
                    upto = min(count, index + 1)  # up to this block, then stop
                fill = Fill(total, upto)
                self.streaming[art.key] = fill
                probe_fill = probe and upto == count
                self._probe_fills += probe_fill  # counted at once: the next probe may come before it starts
                assert b.background is not None
                b.background.start_soon(self._run, art, fill, whole, probe_fill)
                whole = None  # the fill owns it now
            await fill.wait_for(index)
        finally:
            if whole is not None:  # another fill already streams this artifact
                with trio.CancelScope(shield=True):
                    await whole.aclose()
        if fill.stored > index:
            key = b.key(art, index, fill.total)
            data = b.memory.get(key)
            if data is None and b.disk is not None and b.disk.might_have(key):
                data = await trio.to_thread.run_sync(b.disk.get, key)
                if data is not None:
                    b.memory.put(key, data)
            if data is not None:
                return data
        if fill.error is not None:
            raise again(fill.error)
        return None

    async def _run(self, art: Artifact, fill: Fill, whole: WholeBody | None, probe: bool) -> None:
        """Stream the artifact's whole body into the cache (see Fill), starting from `whole`
        when given; a cut body is fetched again, from a GET whose Content-Length is checked."""
        b = self.blocks
        http = b.http
        url = redact_url(art.url)
        b.stats.fills += 1
        held = 0
        try:
            held = await http.budget.take(self._batch_bytes() + 2 * b.block_size + READ_SIZE)
            cuts = 0
            with trio.fail_after(http.timeout * WHOLE_FETCH_TIMEOUT_FACTOR):
                while True:
                    if whole is None:
                        b.stats.requests += 1
                        reply = await http.get_range(art.url, 0, b.block_size, credentials=art.credentialed,
                                                     take_whole=True)
                        if reply.whole is None:  # storage honours Range now: blocks are fetched by range
                            self.range_ignored.pop(art.key, None)
                            return
                        whole = reply.whole
                        if reply.total != fill.total:
                            raise UpstreamError(f"{url}: size changed from {fill.total} to {reply.total} bytes")
                    try:
                        await self._stream_into(art, fill, whole.chunks())
                        return
                    except BodyCut as e:
                        cuts += 1
                        if cuts >= FILL_CUTS_TRIED:
                            raise
                        log.info("%s; fetching it again", e)
                    finally:
                        with trio.CancelScope(shield=True):
                            await whole.aclose()
                        whole = None
        except trio.TooSlowError:
            fill.finish(UpstreamTimeout(f"{url}: the whole body did not arrive within "
                                        f"{http.timeout * WHOLE_FETCH_TIMEOUT_FACTOR:g}s"))
        except CiartfsError as e:
            log.info("%s: whole body not cached: %s", url, e)
            fill.finish(again(e))
        except Exception:
            log.exception("%s: whole body not cached", url)
            fill.finish(UpstreamError(f"{url}: internal error caching the whole body"))
        finally:
            if whole is not None:
                with trio.CancelScope(shield=True):
                    await whole.aclose()
            if held:
                http.budget.give(held)
            self._probe_fills -= probe
            if self.streaming.get(art.key) is fill:
                del self.streaming[art.key]
            fill.finish()  # waiters wake (a cancelled fill leaves them to ask by range)

    async def _stream_into(self, art: Artifact, fill: Fill, chunks: AsyncIterator[bytes]) -> None:
        """Cut the body into blocks and store blocks [fill.stored, fill.blocks)."""
        b = self.blocks
        bs, total = b.block_size, fill.total
        batch_limit = self._batch_bytes()
        pending = bytearray()
        batch: list[tuple[str, bytes]] = []
        batch_bytes = 0
        index = 0  # the next block to complete
        pos = 0
        try:
            async for chunk in chunks:
                pos += len(chunk)
                b.stats.bytes_fetched += len(chunk)
                if pos > total:  # (a Content-Length frames the body: a defence only)
                    raise UpstreamError(f"{redact_url(art.url)}: body longer than its {total} bytes")
                pending += chunk
                while index < fill.blocks and len(pending) >= min(bs, total - index * bs):
                    need = min(bs, total - index * bs)
                    if index >= fill.stored:
                        batch.append((b.key(art, index, total), bytes(pending[:need])))
                        batch_bytes += need
                    del pending[:need]
                    index += 1
                # a batch at a time; at once when it holds a block a reader waits for
                if batch and (batch_bytes >= batch_limit or index >= fill.blocks or index > fill.wanted >= fill.stored):
                    await self._store(fill, batch, index)
                    batch, batch_bytes = [], 0
                if index >= fill.blocks:
                    return  # (a probe's short fill drops the rest of the body)
        except BodyCut:
            if batch:  # its blocks arrived whole before the cut
                await self._store(fill, batch, index)
            raise
        if total == 0 and fill.stored == 0:
            await self._store(fill, [(b.key(art, 0, 0), b"")], 1)
            return
        raise BodyCut(f"{redact_url(art.url)}: short body: {pos} of {total} bytes")

    def _batch_bytes(self) -> int:
        """A fill's batch: FILL_BATCH_BYTES, less under a small --max-inflight-memory."""
        return max(self.blocks.block_size, min(FILL_BATCH_BYTES, self.blocks.http.budget.limit // 4))

    async def _store(self, fill: Fill, batch: list[tuple[str, bytes]], stored: int) -> None:
        b = self.blocks
        disk = b.disk if b.disk is not None and b.disk.enabled else None
        refused = batch
        if disk is not None:
            def put_all() -> list[tuple[str, bytes]]:
                return batch[disk.put_many(batch):]
            try:
                refused = await trio.to_thread.run_sync(put_all)
            except Exception:  # the disk cache is an optimisation
                log.exception("disk cache: write failed")
        for key, data in refused:  # no disk cache, or it is full: the memory LRU
            b.memory.put(key, data)
        fill.advance(stored)
