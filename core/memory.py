"""Give freed memory back to the operating system, so a long chat's RSS follows what is in use.

subtle: glibc's malloc serves allocations above its mmap threshold with mmap and returns
them to the OS on free, but the threshold is *dynamic*: each freed mmapped block raises it to
that block's size, up to 32 MiB. After the first explanation passes, the many 1-30 MB tensors
of every later pass land on the heap instead, where a few small live objects pin the freed
space, and RSS crept to 2.06 GB on the 30-turn memory benchmark. Fixing the threshold low
kept it at 1.63 GB but made every prefill slower (0.60 s instead of 0.43 s for 300 tokens:
each activation was a fresh mmap, page-faulted in). malloc_trim(0) after each script run
hands the free pages back instead, and the hot loops keep reusing the heap.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once; None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def give_back_freed_memory() -> bool:
    """Return the C heap's free pages to the OS. False where there is no glibc malloc_trim.

    Costs a few milliseconds; call it between pieces of work (app.py: after each page run).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
