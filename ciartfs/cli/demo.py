"""`ciartfs demo`: the bundled fake CI server as a mount's backend, and what to try on it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ciartfs.config import Settings
from ciartfs.providers import registry
from ciartfs.providers.base import Configured

log = logging.getLogger("ciartfs")

DEMO_TOKEN = "demo-token"


@contextlib.contextmanager
def demo_backend(settings: Settings) -> Iterator[Settings]:
    """Starts the fake server with the demo data set; yields `settings` pointed at it, with a
    temporary block cache. Stops the server and removes that cache on the way out."""
    from ciartfs.fakeserver import FakeCI, demo_dataset
    from ciartfs.fakeserver.server import api_modules_for

    fake = FakeCI(tokens={DEMO_TOKEN}, api_modules=api_modules_for(registry.providers()))
    demo_cache = None
    try:
        demo_dataset(fake)
        fake.start()
        demo_cache = tempfile.mkdtemp(prefix="ciartfs-demo-cache-")
        # every provider the fake serves, at the fake, whatever the settings said
        in_force = tuple(Configured(p, demo) for p in registry.providers()
                         if (demo := p.demo(fake.api_url, DEMO_TOKEN)) is not None)
        settings = dataclasses.replace(settings, providers=in_force, cache_dir=Path(demo_cache))
        log.info("demo: fake CI server at %s", fake.api_url)
        yield settings
    finally:
        fake.stop()
        if demo_cache is not None:
            shutil.rmtree(demo_cache, ignore_errors=True)


def demo_hints(mp: str) -> str:
    """Commands to try on a demo mount at `mp`: each provider's examples."""
    tries = [line for p in registry.providers() for line in p.demo_examples(mp)]
    return "Try:\n" + "".join(f"  {line}\n" for line in tries) + f"Stop it with: ciartfs unmount {mp}"
