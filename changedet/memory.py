"""How the process allocates the large arrays of a run. One responsibility: the allocator
settings the CLI applies once at start (`keep_freed_memory`).

A run allocates and frees full-grid float32 layers thousands of times (a 1620 x 1620 px layer is
10 MB). By default glibc hands every allocation above a few MB to the kernel and back
(mmap/munmap), numpy asks the kernel for huge pages on each, and the kernel zeroes every page
again on first touch: measured on a monitoring run over a 1620 x 1620 px AOI, zeroing pages
was a fifth of all CPU time and the system time 5-6 s of a 13-14 s run. Keeping freed memory
in the process for reuse takes most of that away (see the README's monitoring figures); the
peak is unchanged, memory freed at the end of a run is kept until the process exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy as np

__all__ = ["keep_freed_memory"]

# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_SETTINGS = (
    (_M_ARENA_MAX, 1),  # one heap: memory freed by any thread is reused by every thread
    (_M_MMAP_THRESHOLD, 32 << 20),  # glibc's largest: blocks below it come from the heap
    (_M_TRIM_THRESHOLD, (1 << 31) - 1),  # keep freed heap memory instead of returning it
    (_M_TOP_PAD, 256 << 20),  # grow the heap in large steps
)


def keep_freed_memory() -> bool:
    """Have freed memory reused instead of returned to the kernel and zeroed again: glibc's
    allocator keeps large blocks on its heap, and numpy stops asking for huge pages (with the
    heap reused they only cost faults). Linux with glibc only; elsewhere nothing changes.
    Returns whether the allocator took the settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's, which the settings are for
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in _SETTINGS):
        return False
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    set_hugepage = getattr(multiarray, "_set_madvise_hugepage", None)
    if callable(set_hugepage):
        set_hugepage(False)
    return True
