"""CI providers: each turns one CI system's API answers into listing records and directories."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ciartfs.errors import BadListing

if TYPE_CHECKING:
    from ciartfs.providers.apidocs import JsonDocs, Keep


def parse_time(value: Any) -> float | None:
    """An ISO-8601 time from an API ('2026-11-01T10:00:00.000Z') as a Unix time, else None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def pages(docs: JsonDocs, url: str, *, token_param: str, token_field: str,
                params: dict[str, str | int] | None = None, keep: Keep = None) -> AsyncIterator[Any]:
    """Every page of a paginated listing, following its continuation token; a token that
    repeats (a looping server) fails the listing instead of looping forever."""
    seen: set[str] = set()
    token: str | None = None
    while True:
        query = dict(params or {})
        if token:
            query[token_param] = token
        doc = await docs.get_json(url, query or None, keep=keep)
        yield doc
        token = doc.get(token_field) if isinstance(doc, dict) else None
        if not token:
            return
        if not isinstance(token, str) or token in seen:
            raise BadListing(f"{url}: bad or repeating {token_field}; refusing to loop")
        seen.add(token)
