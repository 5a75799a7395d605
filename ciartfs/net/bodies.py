"""Bounded memory for answer bodies: a shared byte budget, bounded Content-Encoding decoding,
and an upper bound on what parsing a JSON text takes.

Invariants:
- Bytes held by bodies in flight (API answers as received, decoded and parsed; ranged read
  bodies; blocks queued for the disk) never exceed the budget's `limit` in total. A growing
  reservation (`Hold.grow`) never waits: when the budget is spent it fails with
  `BudgetExhausted` and its holder lets go of everything, so holders can never wait on each
  other (no deadlock). Only fixed-size reservations taken at once (`MemoryBudget.take`) wait.
- Decoding never produces more than `step` bytes of output from one call, however well the
  input compresses: the caller accounts for each piece before asking for the next.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType

import trio

# Output of one decompression call: a gzip bomb's megabyte of input yields at most this
# before the caller has reserved it.
DECODE_STEP = 256 << 10


class BudgetExhausted(Exception):
    """The budget has not enough left for now: let go and try again later."""


class TooLarge(Exception):
    """More than the whole budget is needed: it will never fit."""


class MemoryBudget:
    """A byte budget shared by everything that holds a body in flight (see module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._freed = trio.lowlevel.ParkingLot()

    def try_take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    async def take(self, n: int) -> int:
        """Wait until `n` bytes are free and take them; returns what was taken, to give back.
        Only for reservations taken whole, by a task holding no other reservation (waiting
        while holding could deadlock). More than the whole budget takes all of it: such a
        reservation then waits for everything else to be given back, and runs alone."""
        n = min(n, self.limit)
        while not self.try_take(n):
            await self._freed.park()
        return n

    def give(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "gave back more than was taken"
        if self._freed:
            self._freed.unpark_all()

    def hold(self) -> Hold:
        return Hold(self)


class Hold:
    """A reservation that grows with what its holder keeps; `with` it to give it back."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, n: int) -> None:
        if self.size + n > self.budget.limit:
            raise TooLarge(f"{self.size + n} bytes needed, the budget is {self.budget.limit}")
        if not self.budget.try_take(n):
            raise BudgetExhausted(f"{self.budget.used} of {self.budget.limit} bytes in use by other answers")
        self.size += n

    def release(self) -> None:
        if self.size:
            self.budget.give(self.size)
            self.size = 0

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class UnsupportedEncoding(Exception):
    pass


class Decoder:
    """Incremental Content-Encoding decoding: identity, gzip (x-gzip) or deflate."""

    def __init__(self, encoding: str | None, step: int = DECODE_STEP) -> None:
        encoding = (encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r}")
        self.step = step
        self._deflate = encoding == "deflate"
        # gzip: 16 + 15 takes the gzip header only; deflate: a zlib stream (RFC 9110), or raw
        # deflate as some servers send it (decided on the first bytes)
        self._zlib = None if encoding == "identity" else zlib.decompressobj(31 if encoding != "deflate" else 15)
        self._started = False
        self._head = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces of `data`, each at most `step` bytes. Raises zlib.error on corrupt input."""
        if self._zlib is None:
            for i in range(0, len(data), self.step):
                yield data[i:i + self.step]
            return
        if self._deflate and not self._started:
            data = self._head = self._head + data
            if len(data) < 2:
                return  # the header decides which deflate this is
            if not _zlib_header(data):
                self._zlib = zlib.decompressobj(-15)
        self._started = self._started or bool(data)
        while data:
            if self._zlib.eof:
                raise zlib.error("data after the end of the compressed stream")
            piece = self._zlib.decompress(data, self.step)
            if self._zlib.unused_data:
                raise zlib.error("data after the end of the compressed stream")
            data = self._zlib.unconsumed_tail
            if piece:
                yield piece

    @property
    def compressed(self) -> bool:
        return self._zlib is not None

    def finish(self) -> None:
        """The body ended: raises zlib.error when the compressed stream did not."""
        if self._zlib is not None and self._started and not self._zlib.eof:
            raise zlib.error("the compressed body is truncated")
        if self._zlib is not None and not self._started:
            raise zlib.error("an empty compressed body")


async def receive(chunks: AsyncIterator[bytes], encoding: str | None, hold: Hold, max_bytes: int) -> bytearray:
    """A whole body, decoded, of at most `max_bytes` (else TooLarge), its memory held in
    `hold` as it grows (BudgetExhausted when the budget runs out first)."""
    decoder = Decoder(encoding)
    body = bytearray()
    reserved = hold.size  # what the holder took before (a network chunk): kept on top
    try:
        async for chunk in chunks:
            for piece in decoder.feed(chunk):
                size = len(body) + len(piece)
                if size > max_bytes:
                    raise TooLarge(f"larger than {max_bytes} bytes")
                covered = size + (size >> 3) + reserved  # a growing bytearray allocates up to 1/8 more
                if covered > hold.size:
                    hold.grow(covered - hold.size)
                body += piece
                if decoder.compressed:
                    await trio.lowlevel.checkpoint()  # decoding is CPU: let the FUSE loop in
        decoder.finish()
    except BaseException:
        # emptied at once: the frames in the exception's traceback (often in a reference
        # cycle, freed only when the garbage collector runs) would keep it alive
        body.clear()
        raise
    return body


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


# Bytes parsing takes per structural character ({ [ , : "), measured with tracemalloc on
# CPython 3.11: empty dicts and lists, one-key dicts, nested lists and short strings all stay
# under ~50; a margin above that.
PARSED_BYTES_PER_STRUCTURE = 64


def parsed_size_bound(text: bytes | bytearray) -> int:
    """An upper bound on the memory `json.loads(text)` allocates (the decoded str included),
    from a cheap count: a 2-byte `{}` becomes a 64-byte dict, so `[{},{},...]` takes ~25
    times its text. Non-ASCII text decodes to up to 4 bytes per character, twice over (the
    whole document as str, and its strings)."""
    structures = sum(text.count(c) for c in (b"{", b"[", b",", b":", b'"'))
    per_byte = 2 if text.isascii() else 8
    return per_byte * len(text) + PARSED_BYTES_PER_STRUCTURE * structures
