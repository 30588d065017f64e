"""Hand freed heap memory back to the operating system.

An answer assembles per-layer contexts of several MB each and frees them when it ends. glibc's
allocator keeps such freed memory in the process (its mmap threshold rises after the first large
frees, so later large buffers come from the heap, where long-lived small objects allocated in
between pin it), and the resident size ratchets up with every question: about 0.4 GB per hour of
stream in ``bench/bench_memory.py`` before this. ``malloc_trim`` returns the free pages; the memory
calls it once per answer, where the large buffers have just been freed. Elsewhere (not glibc) it
does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return free heap pages to the system; True if the allocator released any."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
