"""One setting's description (`Option`) and the parsers of setting values.

Shared by config.py (the core settings) and the providers (each describes its own settings,
see providers/base.py), so that neither imports the other to describe a setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """'256M' -> 268435456. Binary units (K, M, G, T; 'MiB' and 'MB' mean the same)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 512K, 256M, 10G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_url(text: str) -> str:
    """An API base URL: http(s), with a host, without credentials; no trailing '/'."""
    parts = urllib.parse.urlsplit(str(text))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {text!r}")
    if parts.username or parts.password:
        raise ValueError("the URL must not carry credentials")
    return str(text).rstrip("/")


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def positive_float(text: str | float) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def positive_int(text: str | int) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def positive_size(text: str | int) -> int:
    value = parse_size(text)
    if value <= 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def parse_path(text: str) -> Path:
    return Path(os.path.expanduser(str(text)))


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its config key (also its flag, `--key-name`), env var and parser.

    A secret is never an Option: a flag's value shows in `ps`, and config files get shared.
    An Option may name a file that holds one (`circleci_token_file`)."""

    key: str
    env: str | None
    parse: Callable[[Any], Any]
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


Origin = Literal["flag", "env", "config", "default"]


@dataclasses.dataclass(frozen=True)
class OptionValues:
    """Settled values of options (flag > environment > config file > default), where each
    came from, and the environment itself (credentials are read from variables)."""

    values: Mapping[str, Any]
    origins: Mapping[str, Origin]
    env: Mapping[str, str]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def from_flag(self, key: str) -> bool:
        return self.origins.get(key) == "flag"
