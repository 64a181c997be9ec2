"""Give freed memory back to the operating system, so a long chat's RSS follows what is in use.

subtle: glibc's malloc serves allocations above its mmap threshold (128 KiB) with mmap and
returns them to the OS on free, but the threshold is *dynamic*: each freed mmapped block raises
it to that block's size, up to 32 MiB. After the first few explanation passes, the many 1-30 MB
tensors of every later pass land on the heap instead, where a few small live objects pin the
freed space. On the 30-turn memory benchmark RSS crept to 2.06 GB that way. Fixing the
threshold (which also switches off the dynamic adjustment) keeps it at 1.6-1.7 GB.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, made permanent

_result: bool | None = None  # the outcome of the first call; later calls return it


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process (idempotent). False where there is no glibc."""
    global _result
    if _result is None:
        _result = _set_threshold()
    return _result


def _set_threshold() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
