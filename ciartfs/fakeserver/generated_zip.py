"""Large zip archives made on the fly for the fake's GitHub Actions artifacts: a 500 MiB
artifact, 70,000 members (zip64 by count), a member larger than 4 GiB (zip64 by size) are
served without the archive ever being held in memory.

A member's bytes are `label + base + base + ...` cut to its size: the label (its index, 16
bytes) makes every member distinct, the base is one of a few shared pieces. A stored member is
those bytes as they are; a deflated member is one `label + base` whose deflate data is a stored
block holding the label, then the base compressed once up front (ending in a full flush, so it
does not refer back), then an empty final block - copied, not recompressed, for every member.
Any byte range of the archive is then arithmetic over a table of member offsets (bisect) and
copies of a few cached pieces. CRC-32s are computed on first need, once per member (the bytes
are regenerated for it, never kept); the central directory is built once, when first read.

Layout, as the stdlib zipfile writes (APPNOTE 6.3): local header (sizes and CRC in it, no data
descriptor) and data per member; the central directory; when the archive needs it (65,535
members or more, a size or offset past 0xFFFFFFFF) the zip64 end record and locator; the end
record. Zip64 extra fields carry exactly the fields that overflow (both sizes in a local
header).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import random
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence

from ciartfs.fakeserver.generated import deflate_segment, log_text, stored_block

LABEL_LEN = 16
CHUNK = 1 << 20
MAX32 = 0xFFFFFFFF
MAX16 = 0xFFFF
_DOS_TIME, _DOS_DATE = (10 << 11), ((2026 - 1980) << 9) | (11 << 5) | 1  # 2026-11-01 10:00:00
STORED, DEFLATED = 0, 8
_FINAL_EMPTY = b"\x03\x00"
# Members larger than this have their CRC-32 combined from their pieces' (a pass over a 4 GiB
# member took seconds, past a client's timeout on a busy machine); smaller ones are passed over.
COMBINED_CRC_OVER = 16 << 20


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    name: str
    size: int  # uncompressed bytes
    base: int  # index into GeneratedZip.bases
    method: int = STORED  # STORED | DEFLATED (a deflated member is exactly label + base)
    labelled: bool = True


# CRC-32 arithmetic (zlib's crc32_combine, which Python's zlib does not expose): the CRC of
# A + B from those of A and B and B's length, in O(log length).
_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected, as zlib's multmodp)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) modulo the polynomial
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32(a + b) from crc1 = zlib.crc32(a), crc2 = zlib.crc32(b) and len2 = len(b)."""
    n, k, x = len2, 3, 1 << 31  # x^(8 * len2)
    while n:
        if n & 1:
            x = _multmodp(_X2N[k & 31], x)
        n >>= 1
        k += 1
    return _multmodp(x, crc1) ^ crc2


def _repeated_crc(crc: int, length: int, count: int) -> int:
    """The CRC-32 of `count` copies of bytes of CRC `crc` and `length` bytes."""
    result = 0
    while count:
        if count & 1:
            result = crc32_combine(result, crc, length)
        crc, length, count = crc32_combine(crc, crc, length), 2 * length, count >> 1
    return result


def _label(index: int) -> bytes:
    return f"<member {index:07d}>\n".encode()[-LABEL_LEN:]


class GeneratedZip:
    """A zip archive of `members` built from `bases`; see the module docstring. Thread-safe."""

    def __init__(self, members: Sequence[MemberSpec], bases: Sequence[bytes], *, level: int = 6) -> None:
        self.members = list(members)
        self.bases = [bytes(b) for b in bases]
        self._segments: dict[int, bytes] = {}
        for m in self.members:
            if m.method == DEFLATED:
                if m.size != (LABEL_LEN if m.labelled else 0) + len(self.bases[m.base]):
                    raise ValueError(f"a deflated member is label + base: {m.name}")
                if m.base not in self._segments:
                    self._segments[m.base] = deflate_segment(self.bases[m.base], level)
        self._names = [m.name.encode() for m in self.members]
        self._lock = threading.Lock()
        self._crcs: dict[int, int] = {}
        self._central: bytes | None = None
        # offsets: where each member's local header starts; the central directory after the last
        self._offsets: list[int] = []
        pos = 0
        for i in range(len(self.members)):
            self._offsets.append(pos)
            pos += self._local_header_len(i) + self.compressed_size(i)
        self.central_offset = pos
        self._central_len = sum(self._central_entry_len(i) for i in range(len(self.members)))
        self.zip64 = (len(self.members) >= MAX16 or self.central_offset >= MAX32 or self._central_len >= MAX32
                      or any(self._needs_zip64(i) for i in range(len(self.members))))
        self._tail_len = (56 + 20 if self.zip64 else 0) + 22

    # -- ready-made archives ---------------------------------------------------------------------

    @classmethod
    def many_members(cls, count: int = 70_000, member_size: int = 64, seed: int = 1) -> GeneratedZip:
        """`count` small stored members (70,000: zip64 by count), in directories of 1,000."""
        rng = random.Random(seed)
        bases = [rng.randbytes(max(member_size - LABEL_LEN, 1)) for _ in range(16)]
        return cls([MemberSpec(f"d{i // 1000:03d}/f{i:06d}.bin", member_size, i % 16) for i in range(count)], bases)

    @classmethod
    def huge_member(cls, size: int = (4 << 30) + (1 << 20) + 123) -> GeneratedZip:
        """A small member, a stored member of `size` zeros (over 4 GiB: zip64 by size; its
        CRC is a pass over it, made once, on first need), and a small member after it."""
        bases = [b"before the big one\n", bytes(CHUNK), b"after the big one\n"]
        return cls([MemberSpec("before.txt", LABEL_LEN + len(bases[0]), 0),
                    MemberSpec("huge/zeros.bin", size, 1, labelled=False),
                    MemberSpec("after.txt", LABEL_LEN + len(bases[2]), 2)], bases)

    @classmethod
    def large(cls, total: int = 500 << 20, member_size: int = 1 << 20, seed: int = 1) -> GeneratedZip:
        """About `total` bytes of stored, incompressible members of `member_size` each."""
        rng = random.Random(seed)
        bases = [rng.randbytes(member_size) for _ in range(8)]
        count = max(1, total // member_size)
        return cls([MemberSpec(f"blobs/{i:05d}.bin", member_size, i % 8) for i in range(count)], bases)

    @classmethod
    def deflated(cls, count: int = 2000, member_size: int = 100 << 10, seed: int = 1) -> GeneratedZip:
        """`count` deflated log-like members of `member_size` (2000 x 100 KiB: ~200 MiB decoded)."""
        rng = random.Random(seed)
        bases = [log_text(rng, member_size - LABEL_LEN) for _ in range(16)]
        return cls([MemberSpec(f"logs/{i // 100:02d}/job-{i:05d}.log", member_size, i % 16, DEFLATED)
                    for i in range(count)], bases)

    # -- members ---------------------------------------------------------------------------------

    def member_read(self, index: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Member `index`'s uncompressed bytes [start, end), in pieces of at most CHUNK."""
        m = self.members[index]
        end = m.size if end is None else min(end, m.size)
        head = _label(index) if m.labelled else b""
        base = self.bases[m.base]
        pos = start
        while pos < end:
            if pos < len(head):
                piece = head[pos:end]
            else:
                off = (pos - len(head)) % len(base)
                piece = base[off:off + min(end - pos, CHUNK)]
            yield piece
            pos += len(piece)

    def member_sha256(self, index: int) -> str:
        digest = hashlib.sha256()
        for piece in self.member_read(index):
            digest.update(piece)
        return digest.hexdigest()

    def crc(self, index: int) -> int:
        with self._lock:
            known = self._crcs.get(index)
        if known is not None:
            return known
        m = self.members[index]
        if m.size <= COMBINED_CRC_OVER:
            crc = 0
            for piece in self.member_read(index):
                crc = zlib.crc32(piece, crc)
        else:  # label + base * whole + base[:part]: the repeats' CRCs combined, not computed over
            head = _label(index) if m.labelled else b""
            base = self.bases[m.base]
            whole, part = divmod(m.size - len(head), len(base))
            crc = crc32_combine(zlib.crc32(head), _repeated_crc(zlib.crc32(base), len(base), whole),
                                whole * len(base))
            crc = crc32_combine(crc, zlib.crc32(base[:part]), part)
        with self._lock:
            self._crcs[index] = crc
        return crc

    def compressed_size(self, index: int) -> int:
        m = self.members[index]
        if m.method == STORED:
            return m.size
        label = len(stored_block(b"x" * LABEL_LEN)) if m.labelled else 0
        return label + len(self._segments[m.base]) + len(_FINAL_EMPTY)

    def _compressed(self, index: int) -> bytes:
        m = self.members[index]
        label = stored_block(_label(index)) if m.labelled else b""
        return label + self._segments[m.base] + _FINAL_EMPTY

    def _needs_zip64(self, index: int) -> bool:
        return self.members[index].size >= MAX32 or self.compressed_size(index) >= MAX32

    # -- records ---------------------------------------------------------------------------------

    def _flags(self, index: int) -> int:
        return 0x800 if not self.members[index].name.isascii() else 0

    def _local_header_len(self, index: int) -> int:
        return 30 + len(self._names[index]) + (20 if self._needs_zip64(index) else 0)

    def _local_header(self, index: int) -> bytes:
        m, name = self.members[index], self._names[index]
        zip64 = self._needs_zip64(index)
        size, csize = m.size, self.compressed_size(index)
        extra = struct.pack("<HHQQ", 1, 16, size, csize) if zip64 else b""
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, self._flags(index), m.method,
                           _DOS_TIME, _DOS_DATE, self.crc(index), MAX32 if zip64 else csize,
                           MAX32 if zip64 else size, len(name), len(extra)) + name + extra

    def _central_fields(self, index: int) -> tuple[int, int, int, bytes]:
        m = self.members[index]
        size, csize, offset = m.size, self.compressed_size(index), self._offsets[index]
        fields = b""
        if size >= MAX32:
            fields += struct.pack("<Q", size)
        if csize >= MAX32:
            fields += struct.pack("<Q", csize)
        if offset >= MAX32:
            fields += struct.pack("<Q", offset)
        extra = struct.pack("<HH", 1, len(fields)) + fields if fields else b""
        return (min(size, MAX32), min(csize, MAX32), min(offset, MAX32), extra)

    def _central_entry_len(self, index: int) -> int:
        return 46 + len(self._names[index]) + len(self._central_fields(index)[3])

    def _central_entry(self, index: int) -> bytes:
        m, name = self.members[index], self._names[index]
        size, csize, offset, extra = self._central_fields(index)
        needed = 45 if extra or self.zip64 else 20
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 45, needed, self._flags(index), m.method,
                           _DOS_TIME, _DOS_DATE, self.crc(index), csize, size, len(name), len(extra), 0, 0, 0,
                           0o100644 << 16, offset) + name + extra

    def _central_and_tail(self) -> bytes:
        with self._lock:
            built = self._central
        if built is not None:
            return built
        central = b"".join(self._central_entry(i) for i in range(len(self.members)))
        count, offset, length = len(self.members), self.central_offset, len(central)
        tail = b""
        if self.zip64:
            end64_at = offset + length
            tail += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, count, count, length, offset)
            tail += struct.pack("<IIQI", 0x07064B50, 0, end64_at, 1)
        tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, MAX16), min(count, MAX16),
                            min(length, MAX32), min(offset, MAX32), 0)
        built = central + tail
        with self._lock:
            self._central = built
        return built

    # -- the archive (azureblob.BlobContent) -----------------------------------------------------

    @property
    def size(self) -> int:
        return self.central_offset + self._central_len + self._tail_len

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The archive's bytes [start, end)."""
        end = min(end, self.size)
        pos = start
        while pos < end:
            if pos >= self.central_offset:
                tail = self._central_and_tail()
                yield tail[pos - self.central_offset:end - self.central_offset]
                return
            index = bisect.bisect_right(self._offsets, pos) - 1
            at = self._offsets[index]
            header_len = self._local_header_len(index)
            if pos < at + header_len:
                piece = self._local_header(index)[pos - at:end - at]
            else:
                offset = pos - at - header_len
                want = min(end - pos, self.compressed_size(index) - offset, CHUNK)
                if self.members[index].method == STORED:
                    piece = b"".join(self.member_read(index, offset, offset + want))
                else:
                    piece = self._compressed(index)[offset:offset + want]
            yield piece
            pos += len(piece)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.read(0, self.size):
            digest.update(piece)
        return digest.hexdigest()
