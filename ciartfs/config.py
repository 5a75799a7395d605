"""Settings: each one a command-line flag, an environment variable and a config-file key.

Precedence: flag > environment > `~/.config/ciartfs/config.toml` > built-in default.
Secrets never come from a flag value (it would show in `ps`): the CircleCI token is read
from `CIRCLE_TOKEN` or from a file named by `--circleci-token-file`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ciartfs.errors import ConfigError

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


def _parse_url(text: str) -> str:
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


def _positive_float(text: str | float) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def _positive_int(text: str | int) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def _positive_size(text: str | int) -> int:
    value = parse_size(text)
    if value <= 0:
        raise ValueError(f"must be > 0: {text!r}")
    return value


def _path(text: str) -> Path:
    return Path(os.path.expanduser(str(text)))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ciartfs"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "ciartfs" / "config.toml"


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its config key (also the attribute name), env var and parser."""

    key: str
    env: str | None
    parse: Callable[[Any], Any]
    default: Any
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("circleci_host", "CIRCLECI_HOST", _parse_url, "https://circleci.com",
           "CircleCI host; the v1.1 API is at URL/api/v1.1"),
    Option("circleci_token_file", "CIARTFS_CIRCLECI_TOKEN_FILE", _path, None,
           "file holding the CircleCI API token (else $CIRCLE_TOKEN)"),
    Option("taskcluster_root_url", "TASKCLUSTER_ROOT_URL", _parse_url, None,
           "Taskcluster deployment; adds taskcluster/ (credentials: $TASKCLUSTER_CLIENT_ID, $TASKCLUSTER_ACCESS_TOKEN, "
           "and $TASKCLUSTER_CERTIFICATE for temporary credentials)"),
    Option("cache_dir", "CIARTFS_CACHE_DIR", _path, None,
           "persistent block cache directory (default: $XDG_CACHE_HOME/ciartfs)"),
    Option("cache_size", "CIARTFS_CACHE_SIZE", parse_size, 10 << 30,
           "disk cache bound; least recently used blocks are evicted"),
    Option("memory_cache", "CIARTFS_MEMORY_CACHE", parse_size, 256 << 20,
           "in-memory block cache bound"),
    Option("max_inflight_memory", "CIARTFS_MAX_INFLIGHT_MEMORY", parse_size, 256 << 20,
           "bound on memory held by answers in flight (listings as received, decoded and parsed; "
           "read bodies; blocks waiting for the disk); a listing that does not fit fails with EIO"),
    Option("block_size", "CIARTFS_BLOCK_SIZE", parse_size, 128 << 10,
           "cache block size: what a random read fetches (sequential reads fetch runs of blocks)"),
    Option("max_decoded_size", "CIARTFS_MAX_DECODED_SIZE", _positive_size, 16 << 30,
           "largest decoded size of a gzip-encoded artifact (Taskcluster logs): beyond it, or at a "
           "bomb's compression ratio, reads fail with EIO (also bounded by half the disk cache)"),
    Option("recent_builds", "CIARTFS_RECENT_BUILDS", _positive_int, 30,
           "how many recent builds a project directory lists"),
    Option("latest_ttl", "CIARTFS_LATEST_TTL", _positive_float, 60.0,
           "seconds before 'latest' links and mutable listings are re-resolved"),
    Option("timeout", "CIARTFS_TIMEOUT", _positive_float, 30.0,
           "seconds one operation may take, retries included, before EIO"),
    Option("offline", "CIARTFS_OFFLINE", parse_bool, False,
           "no network at all: serve what the cache holds, EIO for the rest"),
    Option("allow_other", "CIARTFS_ALLOW_OTHER", parse_bool, False,
           "let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root)"),
    Option("allow_private_addresses", "CIARTFS_ALLOW_PRIVATE_ADDRESSES", parse_bool, False,
           "fetch artifact URLs that lead to loopback or private addresses even when no configured API "
           "host is at one (link-local addresses are never fetched)"),
    Option("verbose", "CIARTFS_VERBOSE", parse_bool, False, "log debug detail"),
    Option("log_file", "CIARTFS_LOG_FILE", _path, None, "append logs to this file"),
)

OPTIONS_BY_KEY = {o.key: o for o in OPTIONS}

MIN_BLOCK_SIZE = 4 << 10
MAX_BLOCK_SIZE = 64 << 20
# Room for a few ordinary listings, and for a ranged read of the largest block plus its network chunk.
MIN_INFLIGHT_MEMORY = 16 << 20


@dataclasses.dataclass(frozen=True)
class Settings:
    circleci_host: str = "https://circleci.com"
    circleci_token: str | None = dataclasses.field(default=None, repr=False)
    taskcluster_root_url: str | None = None
    taskcluster_client_id: str | None = None
    taskcluster_access_token: str | None = dataclasses.field(default=None, repr=False)
    # temporary credentials' certificate (JSON text, signed by the issuer: kept out of logs too)
    taskcluster_certificate: str | None = dataclasses.field(default=None, repr=False)
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)
    cache_size: int = 10 << 30
    memory_cache: int = 256 << 20
    max_inflight_memory: int = 256 << 20
    block_size: int = 128 << 10
    max_decoded_size: int = 16 << 30
    recent_builds: int = 30
    latest_ttl: float = 60.0
    timeout: float = 30.0
    offline: bool = False
    allow_other: bool = False
    allow_private_addresses: bool = False
    verbose: bool = False
    log_file: Path | None = None

    @property
    def circleci_api(self) -> str:
        return self.circleci_host + "/api/v1.1"

    def secrets(self) -> list[str]:
        """Every credential in force, for log redaction."""
        return [s for s in (self.circleci_token, self.taskcluster_access_token, self.taskcluster_certificate) if s]


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file not found: {path}") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    unknown = sorted(set(data) - set(OPTIONS_BY_KEY))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return data


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path} must hold one token on one line")
    return token


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Merge flags (values None mean 'not given'), environment and config file."""
    env = os.environ if env is None else env
    explicit = config_path is not None or bool(env.get("CIARTFS_CONFIG"))
    path = config_path or Path(env.get("CIARTFS_CONFIG") or default_config_path(env))
    file_values = _read_config_file(path, explicit)

    values: dict[str, Any] = {}
    for opt in OPTIONS:
        for origin, raw in (("flag", flags.get(opt.key)), ("env", env.get(opt.env) if opt.env else None),
                            ("config", file_values.get(opt.key))):
            if raw is None:
                continue
            where = {"flag": f"--{opt.key.replace('_', '-')}", "env": f"${opt.env}",
                     "config": f"{path}: {opt.key}"}[origin]
            try:
                values[opt.key] = opt.parse(raw)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{where}: {e}") from None
            break
        else:
            values[opt.key] = opt.default

    # The token: a token file given as a flag wins, then $CIRCLE_TOKEN, then a file from env/config.
    token_file = values.pop("circleci_token_file")
    token = None
    if flags.get("circleci_token_file") is not None:
        token = _read_token_file(token_file)
    elif env.get("CIRCLE_TOKEN"):
        token = env["CIRCLE_TOKEN"].strip()
    elif token_file is not None:
        token = _read_token_file(token_file)

    if values["cache_dir"] is None:
        values["cache_dir"] = default_cache_dir()
    bs = values["block_size"]
    if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE or bs % 4096:
        raise ConfigError(f"block size must be a multiple of 4K between 4K and 64M, not {bs}")
    if values["memory_cache"] < 2 * bs:
        raise ConfigError("memory cache must hold at least two blocks")
    if values["max_inflight_memory"] < MIN_INFLIGHT_MEMORY:
        raise ConfigError(f"max inflight memory must be at least {MIN_INFLIGHT_MEMORY >> 20}M")
    # Taskcluster credentials: the variable names every Taskcluster client reads.
    tc_id = env.get("TASKCLUSTER_CLIENT_ID") or None
    tc_token = env.get("TASKCLUSTER_ACCESS_TOKEN") or None
    if bool(tc_id) != bool(tc_token):
        raise ConfigError("set both TASKCLUSTER_CLIENT_ID and TASKCLUSTER_ACCESS_TOKEN, or neither")
    tc_cert = (env.get("TASKCLUSTER_CERTIFICATE") or "").strip() or None
    if tc_cert is not None:
        if not tc_id:
            raise ConfigError("TASKCLUSTER_CERTIFICATE is set without TASKCLUSTER_CLIENT_ID and TASKCLUSTER_ACCESS_TOKEN")
        try:
            parsed = json.loads(tc_cert)
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):  # never quoted: it is a credential
            raise ConfigError("TASKCLUSTER_CERTIFICATE is not a JSON object (the certificate of temporary credentials)")
    return Settings(circleci_token=token, taskcluster_client_id=tc_id, taskcluster_access_token=tc_token,
                    taskcluster_certificate=tc_cert, **values)
