"""CI providers: each turns one CI system's API answers into listing records and directories."""

from __future__ import annotations

import datetime
from typing import Any


def parse_time(value: Any) -> float | None:
    """An ISO-8601 time from an API ('2026-11-01T10:00:00.000Z') as a Unix time, else None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
