"""The daemon's garbage-collector settings (mount.tune_gc): fewer young passes, start-up's
objects frozen out of full passes, and garbage cycles still collected."""

from __future__ import annotations

import gc
import weakref

from ciartfs.mount import GC_YOUNG_THRESHOLD, tune_gc


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_tune_gc_raises_the_young_threshold_freezes_start_up_and_still_collects_cycles() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0  # what start-up made: never walked again
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None  # a cycle made after start-up is still garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
