"""The daemon's memory settings: the garbage collector's (mount.tune_gc: fewer young passes,
start-up's objects frozen out of full passes, garbage cycles still collected) and glibc's
(mount.tune_malloc: large buffers given back when freed)."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from ciartfs.mount import GC_YOUNG_THRESHOLD, MAX_MMAP_THRESHOLD, MIN_MMAP_THRESHOLD, mmap_threshold, tune_gc

MIB = 1 << 20


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


_HOLES = """
import sys
from ciartfs.mount import tune_malloc

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

if sys.argv[1] == "tuned":
    tune_malloc(128 << 10)
big = bytearray(8 << 20)
del big  # a large buffer freed: by default, glibc's mmap threshold now follows it up
before = resident()
bodies, pinned = [], []
for _ in range(40):
    bodies.append(bytearray(1 << 20))  # a body held in flight...
    pinned.append(bytes(64 << 10))  # ...and a smaller one made meanwhile, which lives on
del bodies
print(resident() - before)
"""


def _resident_growth_after_freeing_bodies(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", _HOLES, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


def test_tune_malloc_gives_freed_bodies_back_to_the_system_though_small_objects_outlive_them() -> None:
    # untuned, the 40 MiB freed stay mapped as holes in the heap behind the small objects
    assert _resident_growth_after_freeing_bodies("default") > 30 * MIB
    assert _resident_growth_after_freeing_bodies("tuned") < 8 * MIB  # the small ones: 2.5 MiB at most


def test_mmap_threshold_is_above_a_cache_block_and_within_glibcs_range() -> None:
    assert mmap_threshold(128 << 10) == MIN_MMAP_THRESHOLD
    assert mmap_threshold(4 << 20) == 8 << 20
    assert mmap_threshold(64 << 20) == MAX_MMAP_THRESHOLD
