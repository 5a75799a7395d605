"""One exception hierarchy for the whole package, and the errno each maps to.

Everything below the FUSE layer raises a `CiartfsError` subclass; `fs.py` turns it into
`pyfuse3.FUSEError(err.errno)`. Messages are for logs and must never contain a credential:
URLs are passed through `redact_url` before they go into a message.
"""

from __future__ import annotations

import errno
import urllib.parse

# Query parameters that carry credentials in the APIs we talk to (CircleCI accepts the
# token as `circle-token`; presigned storage URLs carry signatures).
_SECRET_QUERY_KEYS = {"circle-token", "signature", "x-amz-signature", "x-amz-credential", "bewit", "sig"}


def redact_url(url: str) -> str:
    """The URL with user info and secret query values replaced, safe for logs and messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if query:
        safe = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in query]
        query_text = urllib.parse.urlencode(safe, safe="*")
    else:
        query_text = parts.query
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query_text, parts.fragment))


class CiartfsError(Exception):
    """Base class: a failure that reaches the kernel as `errno`."""

    errno: int = errno.EIO


class NotFound(CiartfsError):
    """The user, project, build, task or path does not exist (or is hidden from us)."""

    errno = errno.ENOENT


class ArtifactExpired(NotFound):
    """The listing names the artifact but its URL answers 404: CircleCI deletes artifacts
    after 30 days. Reported as ENOENT, distinct from a generic network failure (EIO)."""


class Forbidden(CiartfsError):
    """401/403 from an API: missing or bad credentials. `status` is the HTTP status when known
    (providers turn it into advice: a token is needed, or the token was refused)."""

    errno = errno.EACCES

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AddressRefused(CiartfsError):
    """A URL chosen by others (a listing's, a reference artifact's, a redirect's) leads to an
    address the address rule refuses (see `addresses`): loopback, private or link-local.
    Not a network failure: never retried, and only that file fails."""

    errno = errno.EACCES


class UpstreamError(CiartfsError):
    """The remote side failed (5xx, bad answer, connection trouble) after retries."""

    errno = errno.EIO


class ContentMismatch(UpstreamError):
    """The bytes read do not have the content hashes the storage promised (Taskcluster's
    object service). `reported`: raised again for a failure already logged once."""

    def __init__(self, message: str, reported: bool = False) -> None:
        super().__init__(message)
        self.reported = reported


class UpstreamTimeout(UpstreamError):
    """No complete answer within the time bound."""


class Offline(UpstreamError):
    """--offline, and what was asked for is not in the cache."""


class BadListing(UpstreamError):
    """An API answer that does not have the documented shape (malformed JSON, wrong types)."""


class ReadOnly(CiartfsError):
    errno = errno.EROFS


class ConfigError(Exception):
    """A setting is invalid; the message is one line meant for the user."""


def again(error: CiartfsError) -> CiartfsError:
    """A fresh exception like `error`, for raising a remembered failure once more: raising the
    one object from many tasks would grow its traceback with each."""
    return type(error)(*error.args)
