"""The C library's functions that Python's os module lacks (malloc_trim, fallocate with flags),
looked up once through ctypes.

Invariant: each function is an object of its own (`CDLL[name]`, not `CDLL.name`, which is one
object shared process-wide whose argtypes anyone may set), and a function the platform lacks
(not glibc, not Linux) is None: callers then do without, never fail.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any


def function(name: str, restype: Any, *argtypes: Any) -> Callable[..., Any] | None:
    """libc's `name` with these C types (ctypes' c_int, ...), or None where there is none."""
    try:
        call = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)[name]
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = argtypes, restype
    return call
