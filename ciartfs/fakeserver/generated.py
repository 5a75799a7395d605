"""Large gzip-encoded artifacts made on the fly: a multi-hundred-MB log or a 10 GiB bomb is
served without its compressed or decoded bytes ever being held in memory.

The stream is one gzip member whose deflate data is a run of independent segments. Piece `i`
of the decoded body is `label(i) + bases[i % len(bases)]`; its segment is a stored block
holding the label, then that base's deflate blocks, compressed once up front and ending in a
full flush (byte-aligned, no back-reference before the segment). Any byte range of the stream
is then a matter of arithmetic and copying a few cached segments; only the gzip trailer's
CRC-32 needs a pass over the decoded bytes, made when a client reads that far.

The labels make every piece distinct, so a reader that serves a block from the wrong place
gets a wrong digest; a bomb leaves them out (a stream of zeros compresses ~1000:1).
"""

from __future__ import annotations

import hashlib
import random
import threading
import zlib
from collections.abc import Iterator, Sequence

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no flags, mtime 0, unknown OS
FINAL_BLOCK = b"\x03\x00"  # an empty final block (fixed Huffman codes)
TRAILER_LEN = 8  # CRC-32 and size mod 2**32, little-endian
LABEL_LEN = 16


def log_text(rng: random.Random, length: int) -> bytes:
    """Build-log-like lines (compresses about 4:1, like real CI logs)."""
    lines = []
    size = 0
    while size < length:
        line = (f"[task {rng.randrange(10**6):06d}] {rng.choice(_STEPS)} "
                f"{rng.choice(_WORDS)}/{rng.choice(_WORDS)}_{rng.randrange(1000)}.c ... {rng.choice(_RESULTS)}\n")
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:length]


_STEPS = ("compiling", "linking", "testing", "downloading", "checking", "packaging")
_WORDS = ("gfx", "dom", "netwerk", "layout", "js", "media", "widget", "xpcom", "storage", "toolkit", "security")
_RESULTS = ("ok", "ok", "ok", "ok (cached)", "skipped", "warning: unused variable")


def stored_block(data: bytes) -> bytes:
    """A non-final stored deflate block: header bits 000 padded to a byte, LEN, NLEN, data."""
    return b"\x00" + len(data).to_bytes(2, "little") + (len(data) ^ 0xFFFF).to_bytes(2, "little") + data


def deflate_segment(base: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(base) + compressor.flush(zlib.Z_FULL_FLUSH)


class GeneratedGzip:
    """`count` pieces; see the module docstring. Thread-safe (the fake serves from threads)."""

    def __init__(self, bases: Sequence[bytes], count: int, *, labelled: bool = True, level: int = 6) -> None:
        if not bases or count < 0:
            raise ValueError("need at least one base piece and a count >= 0")
        self.bases = [bytes(b) for b in bases]
        self.count = count
        self.labelled = labelled
        label_block = len(stored_block(b"x" * LABEL_LEN)) if labelled else 0
        self._segments = [deflate_segment(b, level) for b in self.bases]
        self._segment_lens = [label_block + len(s) for s in self._segments]
        self._period_bytes = sum(self._segment_lens)
        self._lock = threading.Lock()
        self._crc: int | None = None

    @classmethod
    def text(cls, decoded_bytes: int, seed: int = 1, piece_bytes: int = 64 << 10, distinct_bases: int = 16) -> GeneratedGzip:
        """Log-like text of about `decoded_bytes` (rounded up to whole pieces)."""
        rng = random.Random(seed)
        bases = [log_text(rng, piece_bytes - LABEL_LEN) for _ in range(distinct_bases)]
        return cls(bases, -(-decoded_bytes // piece_bytes))

    @classmethod
    def zeros(cls, decoded_bytes: int) -> GeneratedGzip:
        """A gzip bomb: `decoded_bytes` (a multiple of 1 MiB) of zeros, ~1 KiB compressed per MiB."""
        return cls([bytes(1 << 20)], decoded_bytes >> 20, labelled=False, level=9)

    # -- the decoded body ------------------------------------------------------------------------

    def label(self, index: int) -> bytes:
        return f"<piece {index:07d}>\n".encode()[-LABEL_LEN:] if self.labelled else b""

    def pieces(self) -> Iterator[bytes]:
        for i in range(self.count):
            yield self.label(i) + self.bases[i % len(self.bases)]

    @property
    def decoded_size(self) -> int:
        whole, rest = divmod(self.count, len(self.bases))
        label = LABEL_LEN if self.labelled else 0
        per_period = sum(len(b) for b in self.bases) + label * len(self.bases)
        return whole * per_period + sum(len(b) + label for b in self.bases[:rest])

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.pieces():
            digest.update(piece)
        return digest.hexdigest()

    # -- the stored (compressed) stream ----------------------------------------------------------

    @property
    def size(self) -> int:
        whole, rest = divmod(self.count, len(self.bases))
        body = whole * self._period_bytes + sum(self._segment_lens[:rest])
        return len(GZIP_HEADER) + body + len(FINAL_BLOCK) + TRAILER_LEN

    def _segment_bytes(self, index: int) -> bytes:
        seg = self._segments[index % len(self.bases)]
        return stored_block(self.label(index)) + seg if self.labelled else seg

    def _trailer(self) -> bytes:
        with self._lock:
            if self._crc is None:
                crc = 0
                for piece in self.pieces():
                    crc = zlib.crc32(piece, crc)
                self._crc = crc
            return self._crc.to_bytes(4, "little") + (self.decoded_size & 0xFFFFFFFF).to_bytes(4, "little")

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The stored bytes [start, end), in pieces of at most one segment."""
        end = min(end, self.size)
        if start >= end:
            return
        pos = 0

        def clip(part: bytes, at: int) -> bytes:
            return part[max(start - at, 0):end - at]

        if start < len(GZIP_HEADER):
            yield clip(GZIP_HEADER, 0)
        pos = len(GZIP_HEADER)
        # skip whole periods, then whole segments, before `start`
        k = len(self.bases)
        periods = max(0, min((start - pos) // self._period_bytes, self.count // k)) if self._period_bytes else 0
        index = periods * k
        pos += periods * self._period_bytes
        while index < self.count and pos + self._segment_lens[index % k] <= start:
            pos += self._segment_lens[index % k]
            index += 1
        while index < self.count and pos < end:
            yield clip(self._segment_bytes(index), pos)
            pos += self._segment_lens[index % k]
            index += 1
        for part in (FINAL_BLOCK, None):
            if pos >= end:
                return
            if part is None:
                if pos + TRAILER_LEN > start:
                    yield clip(self._trailer(), pos)
                return
            if pos + len(part) > start:
                yield clip(part, pos)
            pos += len(part)
