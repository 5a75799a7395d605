"""The fake's storage: the blobs behind every artifact, and the S3-like host serving them.

`BlobStore` holds every servable artifact (CircleCI's FakeArtifact, Taskcluster's
FakeTcArtifact) in a dict keyed by blob id, so a storage GET finds its blob in O(1) whatever
the number of artifacts; live logs are indexed by their token the same way. The models add
their artifacts here as they are created (model.FakeBuild.add_artifact,
taskcluster.FakeRun.add_artifact). A blob is the artifact object itself: its bytes, or for a
generated artifact (generated.GeneratedGzip) the generator, read on the fly and never held.

The storage host serves presigned, expiring URLs (`BlobStore.presigned_url`): Range as S3
does (206, 416, anything else ignored), HEAD refused (the signature covers GET only), S3's
XML errors. `serve_bytes` is also how the hosts that serve an artifact directly answer (the
CircleCI HTML host, private HTML on the API host).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from ciartfs.fakeserver.routing import Reply, Request, Route, Served, write_body

if TYPE_CHECKING:
    from ciartfs.fakeserver.generated import GeneratedGzip
    from ciartfs.fakeserver.livelog import FakeLiveLog
    from ciartfs.fakeserver.server import FakeCI

CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NUM_RE = re.compile(r"[0-9]+")
_BLOB_PATH_RE = re.compile(r"/blob/([0-9]+)")
# One id space for every artifact of every fake in the process: a blob id never names two.
_blob_ids = itertools.count(1)
_blob_ids_lock = threading.Lock()


def next_blob_id() -> int:
    with _blob_ids_lock:
        return next(_blob_ids)


def reserve_blob_ids(count: int) -> range:
    """`count` consecutive blob ids no other artifact will take (for artifacts made on demand)."""
    global _blob_ids
    with _blob_ids_lock:
        start = next(_blob_ids)
        _blob_ids = itertools.count(start + count)
        return range(start, start + count)


class Blob(Protocol):
    """What storage serves of an artifact (FakeArtifact, FakeTcArtifact). Per-artifact
    misbehaviour (`stall`, `delay`, `storage_status`, `claimed_total`) is optional."""

    blob_id: int
    storage_redirect: str | None  # answer its GET with a 302 there

    @property
    def expired(self) -> bool: ...  # 404 NoSuchKey

    @property
    def stored(self) -> bytes: ...  # the bytes as stored (gzip-encoded ones encoded)

    @property
    def generated(self) -> GeneratedGzip | None: ...  # served instead of `stored`, made on the fly

    @property
    def content_encoding(self) -> str | None: ...


class BlobStore:
    """Every servable artifact by blob id, every live log by token; and the presigning key."""

    def __init__(self) -> None:
        self.by_id: dict[int, Blob] = {}
        self.live_logs: dict[str, FakeLiveLog] = {}
        self._secret = secrets.token_bytes(16)
        # blobs made when asked for, never held: (their reserved ids, the maker)
        self.generated: list[tuple[range, Callable[[int], Blob | None]]] = []

    def __len__(self) -> int:
        return len(self.by_id)

    def add(self, artifact: Blob) -> None:
        self.by_id[artifact.blob_id] = artifact
        live = getattr(artifact, "live", None)
        if live is not None:
            self.live_logs[live.token] = live

    def discard(self, *artifacts: Blob) -> None:
        for artifact in artifacts:
            self.by_id.pop(artifact.blob_id, None)
            live = getattr(artifact, "live", None)
            if live is not None:
                self.live_logs.pop(live.token, None)

    def add_generated(self, ids: range, make: Callable[[int], Blob | None]) -> None:
        """Blobs `ids` (from reserve_blob_ids) are made by `make(blob_id)` at each request."""
        self.generated.append((ids, make))

    def get(self, blob_id: int) -> Blob | None:
        blob = self.by_id.get(blob_id)
        if blob is None:
            blob = next((make(blob_id) for ids, make in self.generated if blob_id in ids), None)
        return blob

    def live_log(self, token: str) -> FakeLiveLog | None:
        return self.live_logs.get(token)

    def sign(self, blob_id: int, expires: int) -> str:
        return hmac.new(self._secret, f"{blob_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def presigned_url(self, storage_url: str, blob_id: int, ttl: float) -> str:
        expires = math.ceil(time.time() + ttl)  # rounded up: a URL lives at least its ttl
        return f"{storage_url}/blob/{blob_id}?expires={expires}&signature={self.sign(blob_id, expires)}"


def routes(fake: FakeCI) -> list[Route]:
    return [Route("storage", "", lambda request: handle(fake, request))]


def handle(fake: FakeCI, request: Request) -> None:
    """GET /blob/<id>?expires=&signature=: the blob's bytes, after the storage faults."""
    if request.method == "HEAD":  # a presigned GET URL's signature does not cover HEAD
        raise s3_error(403, "AccessDenied", "There were headers present in the request which were not signed")
    if request.method != "GET":
        raise s3_error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
    faults = fake.faults
    fake.hold("storage_hang")
    if faults.storage_latency:
        fake.wait(faults.storage_latency)
    status = faults.pop("storage_statuses")
    if status is None and faults.storage_fails():
        status = 503
    if status is not None:
        raise Reply(status, b"injected", content_type="text/plain",
                    headers={"Retry-After": "1"} if status == 429 else {})
    m = _BLOB_PATH_RE.fullmatch(request.raw_path)
    if m is None:
        raise s3_error(404, "NoSuchKey", "The specified key does not exist.")
    blob_id = int(m.group(1))
    expires = request.query.get("expires", "")
    if not _NUM_RE.fullmatch(expires) or not hmac.compare_digest(
            request.query.get("signature", "").encode(), fake.blobs.sign(blob_id, int(expires)).encode()):
        raise s3_error(403, "AccessDenied", "The request signature we calculated does not match the signature you provided.")
    if time.time() > int(expires):
        raise s3_error(403, "AccessDenied", "Request has expired")
    artifact = fake.blobs.get(blob_id)
    if artifact is None or artifact.expired:
        raise s3_error(404, "NoSuchKey", "The specified key does not exist.")
    if artifact.storage_redirect:
        raise Reply(302, b"", content_type="text/plain", headers={"Location": artifact.storage_redirect})
    if getattr(artifact, "stall", False):
        fake.stopping.wait()
        raise Reply(503, {"message": "shutting down"})
    delay = getattr(artifact, "delay", 0.0)
    if delay:
        fake.wait(delay)
    own_status = getattr(artifact, "storage_status", None)
    if own_status is not None:
        raise s3_error(own_status, "Injected", f"injected {own_status} for this object")
    serve_bytes(fake, request, artifact, honour_range=not faults.ignore_range)


def serve_bytes(fake: FakeCI, request: Request, artifact: Blob, *, honour_range: bool) -> None:
    """Answer with the artifact's bytes: 206 for a Range when `honour_range`, else 200 and the
    whole body (storage_body_faults apply). Raises Served."""
    handler = request.handler
    claimed_total = getattr(artifact, "claimed_total", None)
    generated = artifact.generated
    data = b"" if generated is not None else artifact.stored
    encoding = artifact.content_encoding
    total = generated.size if generated is not None else len(data)
    spec = request.headers.get("Range")
    start, end, status = 0, total - 1, 200
    if spec and honour_range:
        rm = _RANGE_RE.match(spec.strip())
        first, last = (rm.group(1), rm.group(2)) if rm else ("", "")
        if first and (not last or int(last) >= int(first)):  # bytes=a-b, bytes=a-
            start = int(first)
            end = min(int(last), total - 1) if last else total - 1
            status = 206
        elif not first and last:  # bytes=-n: the last n bytes
            start = max(0, total - int(last))
            status = 206
        # anything else (multiple ranges, b < a, garbage) is ignored: 200 with the whole body
        if status == 206 and (start >= total or start > end):
            raise s3_error(416, "InvalidRange", "The requested range is not satisfiable",
                           {"Content-Range": f"bytes */{total}"})
    length = max(0, end + 1 - start)
    fault = fake.faults.pop("storage_body_faults")
    content_range = f"bytes {start}-{end}/{total if claimed_total is None else claimed_total}"
    if fault == "bad-range" and status == 206:
        content_range = f"bytes {start + 1}-{end + 1}/{total}"
    sent = length
    if fault == "cut":
        sent = length // 2
    elif fault == "short":
        sent = max(0, length - 1)
    if generated is not None:
        parts: Iterator[bytes | memoryview] = _coalesced(generated.read(start, start + sent))
    else:
        view = memoryview(data)[start:start + sent]  # no copy of the blob
        parts = (view[i:i + CHUNK] for i in range(0, len(view), CHUNK))
    request.record.status = status  # before the body: the client may look at the log once it has it
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(length))
        handler.send_header("Accept-Ranges", "bytes")
        if encoding:
            handler.send_header("Content-Encoding", encoding)
        if status == 206:
            handler.send_header("Content-Range", content_range)
        handler.end_headers()
        write_body(handler, parts, complete=sent == length)
    except OSError:
        handler.close_connection = True
        raise Served(-1) from None
    raise Served(status)


def _coalesced(parts: Iterator[bytes]) -> Iterator[bytes]:
    """Small pieces joined into writes of about CHUNK bytes (a bomb's segments are ~1 KiB)."""
    buffer = bytearray()
    for part in parts:
        buffer += part
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def s3_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Reply(status, body.encode(), content_type="application/xml", headers=headers)
