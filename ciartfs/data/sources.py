"""Byte sources: how an artifact's bytes are obtained, said by the artifact itself.

An `Artifact` carries a `source` (a `ByteSource`), set by the provider where it builds the
artifact. The reader (reader.py) serves every source the same way: the memory and disk block
tiers, single flight per block, read-ahead and hash checks are its own; only what happens on a
miss, and how a size is learned, belongs to the source's `SourceReader`.

The sources:
- `RANGED` (`RangedUrl()`): one URL serving the file's bytes, read by block-aligned ranged GETs
  (ranged.py). Two things are found out at run time from the storage's answers, not declared:
  storage that keeps the file gzip/deflate-encoded (Range counts encoded bytes), so the file is
  fetched whole and decoded once (decoded-whole: decode.py); and storage that ignores Range, so
  the one whole body is streamed into the cache (fill.py).
- `TAIL_FIRST` (`RangedUrl(tail_first=True)`): the same, for an archive whose index is at its
  end (zip, jar, wheel...): its size is learned from a ranged GET of its tail, which is kept, and
  opening it fetches the tail at once. Providers choose it with `source_for_name(path)`.
- `LIVE` (`LiveLog()`): a growing file served from one shared stream (a running task's log):
  no SourceReader; never probed, never read by range (livelog.py, served by fs.py).

Invariants:
- Descriptors are immutable and, for the URL sources, shared singletons: an `Artifact` holds a
  reference, never a per-artifact object (issue 17 counts bytes per artifact).
- An artifact's source is fixed where it is built; what its storage turns out to do (encode,
  ignore Range) is remembered by the reader for the mount's life, never written back.
- A SourceReader stores only whole, verified blocks, under the keys `Blocks.key` makes, and
  returns exactly the block asked for; the reader checks its length against the size shown.
- An artifact whose source has no SourceReader fails alone, with EIO.

Zip members (issue 18) fit as one more source without touching the coordinator. The type is
`ZipMember` below (archive artifact, local header offset, compressed size, method, CRC-32); the
work is `ZipMemberReader` (zipmember.py, with `ZipArchives`, which lists an archive's members;
zipindex.py parses its index). The member's own Artifact has its own `key` (the archive's
key + the member path) and its `size` from the central directory, so the reader never asks the
source for a size (`learn_size` only covers a listing without one). Its `fetch(art, index, key)`:
- stored: the member's block `index` is the archive's bytes [data + index*bs, ...), read with
  `reader.read(archive, ...)`: the archive's blocks come through the same cache and read-ahead
  (the local header is read once that way to find `data`: its name and extra lengths may
  differ from the central directory's);
- deflated: decode from the nearest checkpoint (a copy of zlib's state, its 32 KiB window
  included, taken every few MiB of output; or where the last decode stopped) at or before the
  block, reading compressed bytes from the archive the same way, and keep the decoded blocks
  under the member's keys (`Blocks.keep`), as decode.py does for gzip; a CRC-32 check on a
  whole read as hashes.py does for promised hashes;
- bzip2 and lzma: the same, decoded from the start or where the last decode stopped (their
  decompressors cannot be copied);
- other methods, or encrypted members: EIO with a log line naming the method.
`readahead_wanted` is False: the archive's own read-ahead (a member's reads pass it a
ReadStream) fetches the compressed bytes in runs, and a member's prefetch would hold a
prefetch slot while waiting for archive blocks that runs waiting for a slot have claimed (a
deadlock); so `fetch_run` is never called. `opening_blocks` is empty.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ciartfs.data.reader import Reader
    from ciartfs.namespace.model import Artifact

# Archives whose index is at their end: readers (unzip -l, jar, pip) look there first, so
# opening one fetches its tail at once; a zip's central directory of a few thousand members
# fits in TAIL_BYTES (ranged.py).
TAIL_FIRST_SUFFIXES = (".zip", ".jar", ".war", ".ear", ".aar", ".apk", ".whl", ".nupkg", ".ipa", ".xpi", ".vsix")


class ByteSource:
    """How an artifact's bytes are obtained (see the module docstring). Subclasses are frozen
    dataclasses; the reader finds the `SourceReader` for one by its type."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RangedUrl(ByteSource):
    """The artifact's URL serves its bytes by Range; `tail_first`: an archive indexed at its end."""

    tail_first: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class LiveLog(ByteSource):
    """A growing file served from one shared stream (livelog.py): never probed, never ranged."""


@dataclasses.dataclass(frozen=True, slots=True)
class ZipMember(ByteSource):
    """A member of a zip artifact (issue 18; see the module docstring). One per member, unlike
    the URL sources: a member's whereabouts are its own."""

    archive: Artifact  # the zip itself, read by Range (its blocks cached as any artifact's)
    header_offset: int  # of the member's local header in the archive
    compressed_size: int  # from the central directory
    method: int  # 0 stored, 8 deflated, 12 bzip2, 14 lzma
    crc32: int
    # why it cannot be read (zipindex.py: overlapping, encrypted...): listed, reads fail with EIO
    problem: str | None = None
    # its compressed data must end by here (the next member's local header, or the central
    # directory): a compressed size that lies is found when it is read
    data_limit: int = 0
    # its archive's members in archive order (which follow it), shared by all of them
    order: MemberOrder | None = dataclasses.field(default=None, compare=False, repr=False)


class MemberOrder:
    """The members of one zip archive by the offset of their local headers: which ones follow a
    member (zipmember.py decodes them ahead of a reader going through the archive in order)."""

    def __init__(self) -> None:
        self._by_offset: dict[int, Artifact] = {}
        self._offsets: list[int] | None = None

    def add(self, header_offset: int, member: Artifact) -> None:
        self._by_offset[header_offset] = member
        self._offsets = None

    def seal(self) -> None:
        """Every member is added: sort them (once; the listing does it in its worker thread)."""
        self._offsets = sorted(self._by_offset)

    def _sealed(self) -> list[int]:
        if self._offsets is None:
            self.seal()
        assert self._offsets is not None
        return self._offsets

    def following(self, header_offset: int, count: int) -> list[Artifact]:
        """Up to `count` members whose local headers come after `header_offset`, in order."""
        offsets = self._sealed()
        i = bisect.bisect_right(offsets, header_offset)
        return [self._by_offset[o] for o in offsets[i:i + count]]

    def count_between(self, after: int, up_to: int) -> int:
        """How many members' local headers lie in (after, up_to]."""
        offsets = self._sealed()
        return max(0, bisect.bisect_right(offsets, up_to) - bisect.bisect_right(offsets, after))


RANGED = RangedUrl()
TAIL_FIRST = RangedUrl(tail_first=True)
LIVE = LiveLog()


def source_for_name(name: str) -> RangedUrl:
    """The source of a file served by its URL, from its name: archives indexed at their end
    are read tail first."""
    return TAIL_FIRST if name.lower().endswith(TAIL_FIRST_SUFFIXES) else RANGED


class SourceReader(Protocol):
    """What the reader asks of one kind of source; one instance per Reader.

    The coordinator has already looked in the memory tier and holds the block's single flight
    when it calls `fetch`; the disk tier is the source's to consult (`Blocks.from_disk`), since
    some sources keep blocks under keys of their own making (decoded files)."""

    async def learn_size(self, art: Artifact, *, reading: bool = False) -> int:
        """The size, when neither the artifact (`art.size`) nor a failure memo answers.
        `reading`: the file is being opened, so a probe may bring what its first read wants;
        otherwise (`ls -l`) the probe should cost as few bytes as it can."""
        ...

    async def fetch(self, art: Artifact, index: int, key: str, *, probe: bool) -> bytes:
        """Block `index` (cache key `key`), from the disk tier or upstream, stored in the tiers.
        `probe`: asked for to learn the size (the total is not known yet)."""
        ...

    def readahead_runs(self, art: Artifact) -> bool:
        """Whether read-ahead may fetch this artifact's missing blocks in runs (`fetch_run`);
        otherwise one `fetch` per block."""
        ...

    def readahead_wanted(self, art: Artifact, total: int) -> bool:
        """Whether read-ahead is of use at all (not when one body brings every block)."""
        ...

    async def fetch_run(self, art: Artifact, first: int, count: int) -> tuple[bytes | bytearray, int] | None:
        """Blocks [first, first+count) in one request: (their bytes, the file's total size);
        None when the run is abandoned (a reader's own `fetch` will get the blocks). The bytes
        are the caller's alone (a bytearray the body was received into: nothing changes it)."""
        ...

    def opening_blocks(self, art: Artifact, total: int) -> range:
        """Blocks to fetch in the background when the file is opened (may be empty)."""
        ...


def source_readers(reader: Reader) -> dict[type[ByteSource], SourceReader]:
    """The SourceReader for each kind of source: a new source is one more line here."""
    from ciartfs.data.ranged import RangedUrlReader
    from ciartfs.data.zipmember import ZipMemberReader

    return {RangedUrl: RangedUrlReader(reader), ZipMember: ZipMemberReader(reader)}
