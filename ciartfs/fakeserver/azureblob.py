"""The "blob" host: an Azure Blob storage stand-in serving GitHub Actions artifacts behind
SAS-signed URLs (the Location of the API's artifact-download 302; github.py builds them).

As Azure Blob storage does (learn.microsoft.com, "Specifying the range header for Blob service
operations", "Get Blob", "Create a service SAS"; checked 2026-12):

- A URL is `<blob_url>/actions-results/<guid>/workflow-job-run-<guid>/artifacts/<hex>.zip`
  with a SAS query `rscd=...&se=<expiry>&sig=<signature>&sp=r&spr=https&sr=b&st=<start>&sv=...`
  (keys in alphabetical order, as GitHub's are). The signature covers the path and `se`;
  `rscd` becomes the answer's Content-Disposition.
- A request carrying `Authorization` is refused: 403 AuthenticationFailed, XML body ("Server
  failed to authenticate the request. Make sure the value of Authorization header is formed
  correctly including the signature.") - what clients that forward the API token across the
  redirect get from the real service.
- Past `se`, or with a signature that does not verify: 403 AuthenticationFailed (XML, with an
  AuthenticationErrorDetail). An unknown blob: 404 BlobNotFound.
- Range: only Azure's two formats, `bytes=a-` and `bytes=a-b` (also as `x-ms-range`, which
  wins): 206 with Content-Range; a start at or past the end: 416 InvalidRange with
  `Content-Range: bytes */<size>`. Anything else - a suffix range `bytes=-n`, several ranges,
  garbage - is not one of those formats and is ignored: 200 and the whole blob. (So a reader
  cannot ask for "the last n bytes" without knowing the size: it comes from the API's
  `size_in_bytes`, a HEAD, or the total of a first 206's Content-Range.)
- HEAD (Get Blob Properties) answers the headers of a whole GET, no body.
- Every blob answer names itself like Azure: `Server: Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0`,
  x-ms-request-id, x-ms-version, x-ms-blob-type: BlockBlob, x-ms-lease-state/-status,
  x-ms-server-encrypted, x-ms-creation-time, ETag "0x8D...", Last-Modified; errors carry
  x-ms-error-code.

The fake's own misbehaviour comes from `Faults.blob_hang`, `blob_latency`, `blob_statuses`
(each status used once) and `blob_body_faults` ("cut": the connection closes halfway through
the body). Each request's log entry (`Recorded.bytes_sent`) records the body bytes sent.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import math
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from ciartfs.fakeserver.routing import Reply, Request, Served, write_body

if TYPE_CHECKING:
    from ciartfs.fakeserver.server import FakeCI

SAS_VERSION = "2025-05-05"
CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")
_AUTH_FAILED = ("Server failed to authenticate the request. Make sure the value of Authorization header is "
                "formed correctly including the signature.")


class BlobContent(Protocol):
    """A blob's bytes: held (MemoryBlob) or made on the fly (generated_zip.GeneratedZip)."""

    @property
    def size(self) -> int: ...

    def read(self, start: int, end: int) -> Iterator[bytes]: ...  # bytes [start, end)

    def sha256(self) -> str: ...  # hex digest of the whole blob


class MemoryBlob:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, end: int) -> Iterator[bytes]:
        view = memoryview(self.data)[start:min(end, len(self.data))]
        for i in range(0, len(view), CHUNK):
            yield bytes(view[i:i + CHUNK])

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class StoredBlob(Protocol):
    """What the blob host needs of an artifact (github.FakeGhArtifact)."""

    content: BlobContent
    content_type: str
    download_name: str  # Content-Disposition's filename
    created: datetime.datetime
    delay: float


class BlobContainer:
    """The storage account: blobs by path, and the SAS signing key."""

    def __init__(self) -> None:
        self.by_path: dict[str, StoredBlob] = {}
        self._key = secrets.token_bytes(32)

    def add(self, blob: StoredBlob) -> str:
        """Store the blob under a new path (as GitHub's: GUIDs and a content hash); its path."""
        path = (f"/actions-results/{uuid.uuid4()}/workflow-job-run-{uuid.uuid4()}/artifacts/"
                f"{secrets.token_hex(32)}{'.zip' if blob.content_type == 'application/zip' else ''}")
        self.by_path[path] = blob
        return path

    def discard(self, path: str) -> None:
        self.by_path.pop(path, None)

    def sign(self, path: str, expiry: str) -> str:
        mac = hmac.new(self._key, f"r\n{expiry}\n{path}\n{SAS_VERSION}".encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode()

    def signed_url(self, blob_url: str, path: str, ttl: float, download_name: str) -> str:
        now = time.time()
        expiry = _iso(math.ceil(now + ttl))  # rounded up: a URL lives at least its ttl
        query = {
            "rscd": f'attachment; filename="{download_name}"',
            "se": expiry,
            "sig": self.sign(path, expiry),
            "sp": "r", "spr": "https", "sr": "b",
            "st": _iso(math.floor(now) - 300),
            "sv": SAS_VERSION,
        }
        return f"{blob_url}{path}?{urllib.parse.urlencode(query)}"


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_date(t: datetime.datetime) -> str:
    return email.utils.format_datetime(t.astimezone(datetime.UTC), usegmt=True)


def azure_error(status: int, code: str, message: str, detail: str | None = None,
                headers: dict[str, str] | None = None) -> Reply:
    request_id = str(uuid.uuid4())
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    body = (f'\ufeff<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}\n'
            f"RequestId:{request_id}\nTime:{now}</Message>")
    if detail:
        body += f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>"
    body += "</Error>"
    return Reply(status, body.encode(), content_type="application/xml",
                 headers={"x-ms-request-id": request_id,
                          "x-ms-version": SAS_VERSION, "x-ms-error-code": code, **(headers or {})})


def handle(fake: FakeCI, container: BlobContainer, request: Request) -> None:
    """GET/HEAD <path>?<SAS>: the blob's bytes, after the blob host's faults and the SAS check."""
    faults = fake.faults
    fake.hold("blob_hang")
    if faults.blob_latency:
        fake.wait(faults.blob_latency)
    status = faults.pop("blob_statuses")
    if status is not None:
        raise azure_error(status, "ServerBusy" if status == 503 else "InternalError", f"injected {status}",
                          headers={"Retry-After": "1"} if status in (429, 503) else {})
    if request.method not in ("GET", "HEAD"):
        raise azure_error(403, "AuthorizationPermissionMismatch",
                          "This request is not authorized to perform this operation using this permission.")
    if request.headers.get("Authorization") is not None:
        raise azure_error(403, "AuthenticationFailed", _AUTH_FAILED,
                          "Authentication scheme in the Authorization header is not supported with a SAS.")
    query = request.query
    expiry, signature = query.get("se", ""), query.get("sig", "")
    path = urllib.parse.unquote(request.raw_path)
    if not expiry or not signature:
        raise azure_error(403, "AuthenticationFailed", _AUTH_FAILED, "Signature fields not well formed.")
    if not hmac.compare_digest(signature.encode(), container.sign(path, expiry).encode()):
        raise azure_error(403, "AuthenticationFailed", _AUTH_FAILED,
                          "Signature did not match. String to sign used was r")
    try:
        expires_at = datetime.datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise azure_error(403, "AuthenticationFailed", _AUTH_FAILED, "Signature fields not well formed.") from None
    now = datetime.datetime.now(datetime.UTC)
    if now > expires_at:
        raise azure_error(403, "AuthenticationFailed", _AUTH_FAILED,
                          f"Signed expiry time [{_http_date(expires_at)}] must be after current time [{_http_date(now)}]")
    blob = container.by_path.get(path)
    if blob is None:
        raise azure_error(404, "BlobNotFound", "The specified blob does not exist.")
    if blob.delay:
        fake.wait(blob.delay)
    _serve(fake, request, blob, query.get("rscd"))


def _serve(fake: FakeCI, request: Request, blob: StoredBlob, disposition: str | None) -> None:
    content = blob.content
    total = content.size
    spec = request.headers.get("x-ms-range") or request.headers.get("Range")
    start, end, status = 0, total, 200
    if spec:
        m = _RANGE_RE.match(spec.strip())
        if m and (not m.group(2) or int(m.group(2)) >= int(m.group(1))):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, total) if m.group(2) else total
            status = 206
            if start >= total:
                raise azure_error(416, "InvalidRange", "The range specified is invalid for the current size of the resource.",
                                  headers={"Content-Range": f"bytes */{total}"})
        # anything else is not one of Azure's two range formats: ignored, the whole blob
    length = end - start
    created = blob.created
    headers = {
        "Content-Type": blob.content_type,
        "Content-Length": str(length),
        "Accept-Ranges": "bytes",
        "Last-Modified": _http_date(created),
        "ETag": f'"0x8D{int(created.timestamp() * 1e7) & 0xFFFFFFFFFFFFF:013X}"',
        "Server": "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0",
        "x-ms-request-id": str(uuid.uuid4()),
        "x-ms-version": SAS_VERSION,
        "x-ms-creation-time": _http_date(created),
        "x-ms-blob-type": "BlockBlob",
        "x-ms-lease-status": "unlocked",
        "x-ms-lease-state": "available",
        "x-ms-server-encrypted": "true",
    }
    if disposition:
        headers["Content-Disposition"] = disposition
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    body_fault = fake.faults.pop("blob_body_faults") if request.method == "GET" else None
    sent_limit = length // 2 if body_fault == "cut" else length
    handler = request.handler
    request.record.status = status  # before the body: the client may look at the log once it has it
    try:
        handler.send_response_only(status)  # not send_response: its Server header is not Azure's
        handler.send_header("Date", handler.date_time_string())
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if request.method == "GET":
            def counted(sent: int) -> None:
                request.record.bytes_sent = sent

            write_body(handler, content.read(start, start + sent_limit), complete=sent_limit == length,
                       counted=counted)
    except OSError:
        handler.close_connection = True
        raise Served(-1) from None
    raise Served(status)
