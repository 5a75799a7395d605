"""Buffers for bulk bytes: made to be received into, and page-aligned, so that the disk cache
can write them with O_DIRECT (packstore.py): straight from them to the device, without a copy
into the page cache. On this 2-core VM a copy of 1 GiB costs 0.4-0.6 CPU-s, about what a cold
read's whole budget for the disk cache is; written through the page cache, every block cached
was copied once more.

Invariants:
- `unfilled(n)` is a bytearray of exactly n bytes; from ALIGN_FROM bytes on, its first byte is
  page-aligned where CPython allows (a bytearray trimmed at its front keeps its allocation and
  moves only its logical start: never a copy). Its contents are whatever malloc gave: the
  caller overwrites every byte before anyone reads them.
- `address` only looks: it never keeps the buffer it examined exported, nor writes through it.
- Without ctypes (or with a CPython that does not expose these functions) everything still
  works: buffers are then plain zeroed bytearrays and `address` says None (never aligned).
- `recycle` takes back a run's buffer once the memory tier lets it go, and `unfilled` hands it
  out again (same length) once nothing refers to it any more (no view of it is left: CPython's
  reference count, with the list's own reference only): a fresh buffer was a fresh mapping
  from glibc, faulted in page by page as it was received into (half the pages of a 1 GiB cold
  read, ~10% of the daemon's CPU). At most RECYCLED_BYTES are kept so, in use elsewhere or not.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

PAGE = 4096
# Smaller buffers are not worth an O_DIRECT write (nor the page of slack an aligned one costs).
ALIGN_FROM = 64 << 10


def _make() -> tuple[Callable[[int], bytearray], Callable[[object], int | None]]:
    try:
        import ctypes

        api = ctypes.pythonapi
        make = api.PyByteArray_FromStringAndSize
        make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        make.restype = ctypes.py_object

        class PyBuffer(ctypes.Structure):  # CPython's Py_buffer (stable since 3.3)
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]

        get_buffer = api.PyObject_GetBuffer
        get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int)
        get_buffer.restype = ctypes.c_int
        release = api.PyBuffer_Release
        release.argtypes = (ctypes.POINTER(PyBuffer),)
        release.restype = None
    except (ImportError, AttributeError):
        return bytearray, lambda data: None

    def address(data: object) -> int | None:
        """Where the bytes of a buffer (bytes, bytearray, a contiguous memoryview) start in memory."""
        view = PyBuffer()
        if get_buffer(data, ctypes.byref(view), 0) != 0:  # (PyBUF_SIMPLE: contiguous bytes)
            return None
        try:
            return view.buf or None
        finally:
            release(ctypes.byref(view))

    def unfilled(n: int) -> bytearray:
        if n < ALIGN_FROM:
            buffer = make(None, n)
        else:
            buffer = make(None, n + PAGE - 1)
            if type(buffer) is bytearray:
                start = address(buffer)
                skip = -start % PAGE if start is not None else 0
                del buffer[:skip]  # the logical start moves; nothing is copied
                del buffer[n:]  # a few bytes off the end: the allocation stays where it is
        if type(buffer) is not bytearray or len(buffer) != n:
            raise MemoryError(f"no buffer of {n} bytes")
        return buffer

    return unfilled, address


_fresh, address = _make()

# Run buffers kept for `unfilled` to hand out again, at most (four runs of 4 MiB).
RECYCLED_BYTES = 16 << 20
_recycled: list[bytearray] = []
_recycled_bytes = 0


def _references(items: list[bytearray], index: int) -> int:
    return sys.getrefcount(items[index])


# what `_references` counts for a buffer the list alone refers to (the list, the argument)
_ONLY_LISTED = _references([bytearray(1)], 0) if hasattr(sys, "getrefcount") else -1


def recycle(buffer: object) -> None:
    """`buffer` (a run's, from `unfilled`) is no longer kept by its owner (see the module docstring)."""
    global _recycled_bytes
    if type(buffer) is not bytearray or len(buffer) < ALIGN_FROM or _ONLY_LISTED < 0:
        return
    _recycled.append(buffer)
    _recycled_bytes += len(buffer)
    while _recycled_bytes > RECYCLED_BYTES:
        _recycled_bytes -= len(_recycled.pop(0))


def unfilled(n: int) -> bytearray:
    """A bytearray of exactly n bytes to receive into (see the module docstring): a recycled one
    nothing else refers to, else a new one."""
    global _recycled_bytes
    if n >= ALIGN_FROM:
        for index in range(len(_recycled)):
            if len(_recycled[index]) == n and _references(_recycled, index) == _ONLY_LISTED:
                _recycled_bytes -= n
                return _recycled.pop(index)
    return _fresh(n)


def page_aligned(data: object) -> bool:
    """`data` starts on a page boundary and is a whole number of pages long (O_DIRECT can write it)."""
    if len(data) % PAGE:  # type: ignore[arg-type]
        return False
    start = address(data)
    return start is not None and start % PAGE == 0
