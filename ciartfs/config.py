"""Settings: each one a command-line flag, an environment variable and a config-file key.

Precedence: flag > environment > `~/.config/ciartfs/config.toml` > built-in default.
The core settings are here; each provider contributes its own options and reads its own
credentials (providers/base.py), so nothing here knows a CI system. Secrets never come from
a flag value (it would show in `ps`): providers read them from the environment or token files.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ciartfs.errors import ConfigError
from ciartfs.options import (
    Option,
    OptionValues,
    Origin,
    parse_bool,
    parse_path,
    parse_size,
    positive_float,
    positive_int,
    positive_size,
)
from ciartfs.providers import registry
from ciartfs.providers.base import Configured, Provider, check_providers

__all__ = [
    "ConfigError",
    "Option",
    "Settings",
    "all_options",
    "default_cache_dir",
    "default_config_path",
    "load_settings",
    "options_by_key",
    "parse_bool",
    "parse_size",
]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "ciartfs"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "ciartfs" / "config.toml"


CORE_OPTIONS: tuple[Option, ...] = (
    Option("cache_dir", "CIARTFS_CACHE_DIR", parse_path, None,
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
    Option("max_decoded_size", "CIARTFS_MAX_DECODED_SIZE", positive_size, 16 << 30,
           "largest decoded size of a gzip-encoded artifact (such as a compressed log): beyond it, or at a "
           "bomb's compression ratio, reads fail with EIO (also bounded by half the disk cache)"),
    Option("recent_builds", "CIARTFS_RECENT_BUILDS", positive_int, 30,
           "how many recent builds a project directory lists"),
    Option("latest_ttl", "CIARTFS_LATEST_TTL", positive_float, 60.0,
           "seconds before 'latest' links and mutable listings are re-resolved"),
    Option("timeout", "CIARTFS_TIMEOUT", positive_float, 30.0,
           "seconds one operation may take, retries included, before EIO"),
    Option("offline", "CIARTFS_OFFLINE", parse_bool, False,
           "no network at all: serve what the cache holds, EIO for the rest"),
    Option("allow_other", "CIARTFS_ALLOW_OTHER", parse_bool, False,
           "let other users see the mount (needs user_allow_other in /etc/fuse.conf for non-root)"),
    Option("allow_private_addresses", "CIARTFS_ALLOW_PRIVATE_ADDRESSES", parse_bool, False,
           "fetch artifact URLs that lead to loopback or private addresses even when no configured API "
           "host is at one (link-local addresses are never fetched)"),
    Option("verbose", "CIARTFS_VERBOSE", parse_bool, False, "log debug detail"),
    Option("log_file", "CIARTFS_LOG_FILE", parse_path, None, "append logs to this file"),
)

def all_options(providers: Sequence[Provider[Any]] | None = None) -> tuple[Option, ...]:
    """Every setting: the core ones, then each provider's (the registry's unless given)."""
    providers = registry.providers() if providers is None else providers
    check_providers(providers, CORE_OPTIONS)
    return CORE_OPTIONS + tuple(o for p in providers for o in p.options)


def options_by_key(providers: Sequence[Provider[Any]] | None = None) -> dict[str, Option]:
    return {o.key: o for o in all_options(providers)}


MIN_BLOCK_SIZE = 4 << 10
MAX_BLOCK_SIZE = 64 << 20
# Room for a few ordinary listings, and for a ranged read of the largest block plus its network chunk.
MIN_INFLIGHT_MEMORY = 16 << 20


@dataclasses.dataclass(frozen=True)
class Settings:
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
    # The providers in force, in registry order, each with its own settings (their reprs show no secret).
    providers: tuple[Configured[Any], ...] = ()

    def provider(self, name: str) -> Any:
        """The settings of the provider called `name`, or None if it is not in force."""
        return next((c.settings for c in self.providers if c.name == name), None)

    def secrets(self) -> list[str]:
        """Every credential in force, for log redaction."""
        return [s for c in self.providers for s in c.secrets() if s]


def _read_config_file(path: Path, explicit: bool, known: Mapping[str, Option]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file not found: {path}") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return data


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    providers: Sequence[Provider[Any]] | None = None,
) -> Settings:
    """Merge flags (values None mean 'not given'), environment and config file; each provider
    (the registry's unless given) then makes its settings from its options and credentials."""
    env = os.environ if env is None else env
    providers = registry.providers(env) if providers is None else tuple(providers)
    known = options_by_key(providers)
    explicit = config_path is not None or bool(env.get("CIARTFS_CONFIG"))
    path = config_path or Path(env.get("CIARTFS_CONFIG") or default_config_path(env))
    file_values = _read_config_file(path, explicit, known)

    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for opt in known.values():
        given: tuple[tuple[Origin, Any], ...] = (
            ("flag", flags.get(opt.key)), ("env", env.get(opt.env) if opt.env else None),
            ("config", file_values.get(opt.key)))
        for origin, raw in given:
            if raw is None:
                continue
            where = {"flag": opt.flag, "env": f"${opt.env}", "config": f"{path}: {opt.key}"}[origin]
            try:
                values[opt.key] = opt.parse(raw)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{where}: {e}") from None
            origins[opt.key] = origin
            break
        else:
            values[opt.key] = opt.default
            origins[opt.key] = "default"

    core = {o.key: values[o.key] for o in CORE_OPTIONS}
    if core["cache_dir"] is None:
        core["cache_dir"] = default_cache_dir()
    bs = core["block_size"]
    if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE or bs % 4096:
        raise ConfigError(f"block size must be a multiple of 4K between 4K and 64M, not {bs}")
    if core["memory_cache"] < 2 * bs:
        raise ConfigError("memory cache must hold at least two blocks")
    if core["max_inflight_memory"] < MIN_INFLIGHT_MEMORY:
        raise ConfigError(f"max inflight memory must be at least {MIN_INFLIGHT_MEMORY >> 20}M")
    in_force: list[Configured[Any]] = []
    for p in providers:
        own = {o.key for o in p.options}
        loaded = p.load(OptionValues({k: v for k, v in values.items() if k in own},
                                     {k: v for k, v in origins.items() if k in own}, env))
        if loaded is not None:
            in_force.append(Configured(p, loaded))
    return Settings(providers=tuple(in_force), **core)
