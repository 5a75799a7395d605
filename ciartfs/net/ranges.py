"""Ranged replies checked against their request, before any byte is passed on.

Invariants:
- A `RangeReply` is exactly bytes [start, start+len(data)) of a resource of `total` bytes: a
  206 whose Content-Range or body length does not match the request, a 416 for an offset inside
  the resource, or a whole body (Range ignored) shorter than it says is a `RangeMismatch` (the
  client asks again), never data.
- A total that cannot be a file's size (>= 2**63, or thousands of digits) is an UpstreamError:
  not retried, the server said it.
- Memory is bounded by the requested length plus one network chunk, even when a server ignores
  Range and sends the whole body (`read_whole`, `read_whole_tail`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import httpx
import trio

from ciartfs.errors import UpstreamError, redact_url
from ciartfs.net.pool import Reply
from ciartfs.net.wire import BrokenAnswer

# Offsets of more than 19 digits cannot be ours (see MAX_RESOURCE_BYTES): such a header does
# not match, and int() never sees thousands of digits.
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d{1,19})-(\d{1,19})|\*)/(\d+|\*)\s*$", re.IGNORECASE)
# A resource size must fit st_size, a signed 64-bit off_t: a larger total (10^30) is a bad
# answer, reported as such, never a number passed on to overflow in the FUSE layer.
MAX_RESOURCE_BYTES = (1 << 63) - 1


def resource_size(digits: str, url: str, what: str) -> int:
    """A total from a header's digits; UpstreamError (not retried: the server said it) when it
    cannot be a file's size."""
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19 or int(digits) > MAX_RESOURCE_BYTES:
        raise UpstreamError(f"{redact_url(url)}: bad answer: {what} says {digits[:40]}"
                            f"{'...' if len(digits) > 40 else ''} bytes, more than a file can hold")
    return int(digits)


@dataclasses.dataclass(frozen=True)
class RangeReply:
    """`data` is exactly bytes [start, start+len(data)) of a resource of `total` bytes.

    `encoding` is the Content-Encoding the storage applied (e.g. "gzip"), if any: then the
    offsets and `total` count encoded bytes, and the caller must fetch and decode the whole.
    """

    start: int
    data: bytes
    total: int
    encoding: str | None = None
    # The server ignored Range and the caller asked for the body (`take_whole`): `data` is
    # empty, `total` is the Content-Length, and the caller must stream and close `whole`.
    whole: WholeBody | None = None
    # The caller asked for a buffer (`into`) and the body was received straight into it: these
    # are the bytes (`data` is empty). Nothing else holds or changes it.
    buffer: bytearray | None = None


class WholeBody:
    """A 200 answer's body, from its first byte, handed over unread: a cut or broken body, or
    one that sends nothing for `idle_timeout` seconds, ends `chunks()` with `BodyCut` (worth
    fetching again); the owner must `aclose()` it."""

    def __init__(self, reply: Reply, url: str, idle_timeout: float) -> None:
        self._reply = reply
        self._url = url
        self._idle_timeout = idle_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        received = self._reply.aiter_raw()
        while True:
            try:
                with trio.fail_after(self._idle_timeout):
                    chunk = await received.__anext__()
            except StopAsyncIteration:
                return
            except trio.TooSlowError:
                raise BodyCut(f"{redact_url(self._url)}: the body stalled (nothing for {self._idle_timeout:g}s)") from None
            except (httpx.TransportError, BrokenAnswer) as e:
                raise BodyCut(f"{redact_url(self._url)}: the body was cut ({type(e).__name__}: {e})") from None
            yield chunk

    async def aclose(self) -> None:
        await self._reply.aclose()


class BodyCut(UpstreamError):
    """A whole body handed over (`WholeBody`) ended before its end: fetching it again may work."""

class RangeMismatch(Exception):
    """An answer that does not match the range asked for, or is cut short: asking again may get
    the right one."""


async def read_partial(resp: Reply, url: str, start: int, length: int, into: bool = False) -> RangeReply:
    """A 206's body, checked against the request for [start, start+length): its Content-Range
    names exactly those bytes (fewer at the resource's end), and the body is that long.
    `into`: received straight into one buffer (`RangeReply.buffer`) where the answer allows it."""
    m = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
    if not m or m.group(1) is None or m.group(3) == "*":
        raise RangeMismatch(f"206 without a usable Content-Range ({resp.headers.get('content-range')!r})")
    first, last, total = int(m.group(1)), int(m.group(2)), resource_size(m.group(3), url, "Content-Range")
    expected_last = min(start + length, total) - 1
    if first != start or last != expected_last or last < first:
        raise RangeMismatch(f"Content-Range {first}-{last}/{total} does not match the request {start}-{start + length - 1}")
    want = last - first + 1
    if into and resp.body_length() == want:  # (a body of another length: read as chunks, refused below)
        return RangeReply(start, b"", total, buffer=await resp.read_all())
    body = resp.body_in_hand()
    if body is not None:  # all of it came with the head: nothing to read
        if len(body) != want:
            raise RangeMismatch(f"body of {len(body)} bytes, its Content-Range says {want}")
        return RangeReply(start, body, total)
    chunks, got = [], 0
    async for chunk in resp.aiter_raw():
        chunks.append(chunk)
        got += len(chunk)
        if got > want:
            raise RangeMismatch(f"body longer than its Content-Range ({got} > {want})")
    if got != want:
        raise RangeMismatch(f"short body: {got} of {want} bytes")
    return RangeReply(start, chunks[0] if len(chunks) == 1 else b"".join(chunks), total)  # one copy at most


def total_of(resp: Reply, url: str) -> int:
    """The resource's size a 206's Content-Range names."""
    m = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
    if not m or m.group(1) is None or m.group(3) == "*":
        raise RangeMismatch(f"206 without a usable Content-Range ({resp.headers.get('content-range')!r})")
    return resource_size(m.group(3), url, "Content-Range")


async def read_whole_tail(resp: Reply, url: str, length: int) -> RangeReply:
    """The server ignored a suffix Range: stream the body, keeping its last `length`
    bytes (memory: `length` plus a chunk)."""
    declared = resp.headers.get("content-length")
    expected = resource_size(declared, url, "Content-Length") if declared and declared.isdigit() else None
    kept = bytearray()
    total = 0
    async for chunk in resp.aiter_raw():
        total += len(chunk)
        kept += chunk
        if len(kept) > length:
            del kept[:len(kept) - length]
    if expected is not None and expected != total:
        raise RangeMismatch(f"short body: {total} of {declared} bytes")
    return RangeReply(total - len(kept), bytes(kept), total)


async def read_whole(resp: Reply, url: str, start: int, length: int) -> RangeReply:
    """The server ignored Range: stream, keep only [start, start+length), learn the total."""
    declared = resp.headers.get("content-length")
    total = resource_size(declared, url, "Content-Length") if declared and declared.isdigit() else None
    end = start + length
    pos = 0
    kept = bytearray()
    async for chunk in resp.aiter_raw():
        lo, hi = max(start, pos), min(end, pos + len(chunk))
        if lo < hi:
            kept += chunk[lo - pos:hi - pos]
        pos += len(chunk)
        if total is not None and pos >= end:
            break  # we know the total and have our bytes: drop the rest of the body
    if total is None:
        total = pos
    elif pos < min(end, total):
        raise RangeMismatch(f"short body: {pos} of {total} bytes")
    if start >= total:
        return RangeReply(start, b"", total)
    if len(kept) != min(end, total) - start:
        raise RangeMismatch("whole-body answer did not cover the requested range")
    return RangeReply(start, bytes(kept), total)


def unsatisfiable(resp: Reply, url: str, start: int) -> RangeReply:
    """A 416 for a range from `start`: an empty reply at the end of the resource, whose size it
    must name; a mismatch when `start` is inside it."""
    m = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
    if not m or m.group(3) == "*":
        raise UpstreamError(f"{redact_url(url)}: HTTP 416 without the resource size")
    total = resource_size(m.group(3), url, "Content-Range")
    if start < total:
        raise RangeMismatch(f"HTTP 416 for an offset inside the resource ({start} < {total})")
    return RangeReply(start, b"", total)
