"""The CI systems a mount can show: one line each (see base.py for what a provider is).

$CIARTFS_EXTRA_PROVIDERS adds providers from outside this package, as `module:attribute`
(comma-separated): the test suite's toy provider plugs in that way. The module is imported from
sys.path like any other; the variable is the user's own environment, as PYTHONPATH is.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from ciartfs.errors import ConfigError
from ciartfs.providers import circleci, github, taskcluster
from ciartfs.providers.base import Provider

PROVIDERS: tuple[Provider[Any], ...] = (
    circleci.PROVIDER,
    taskcluster.PROVIDER,
    github.PROVIDER,
)

EXTRA_PROVIDERS_ENV = "CIARTFS_EXTRA_PROVIDERS"


def providers(env: Mapping[str, str] | None = None) -> tuple[Provider[Any], ...]:
    """The built-in providers, then those $CIARTFS_EXTRA_PROVIDERS names, in that order."""
    env = os.environ if env is None else env
    return PROVIDERS + tuple(_load_extra(spec.strip()) for spec in env.get(EXTRA_PROVIDERS_ENV, "").split(",")
                             if spec.strip())


def _load_extra(spec: str) -> Provider[Any]:
    module_name, _, attribute = spec.partition(":")
    try:
        provider = getattr(importlib.import_module(module_name), attribute or "PROVIDER")
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"${EXTRA_PROVIDERS_ENV}: cannot load {spec!r}: {e}") from None
    if not isinstance(provider, Provider):
        raise ConfigError(f"${EXTRA_PROVIDERS_ENV}: {spec!r} is not a Provider")
    return provider
