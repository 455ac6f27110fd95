"""Keep freed activation memory in the process instead of handing it back to the OS.

glibc serves every allocation above its mmap threshold (32 MiB at most by default) with a
fresh mmap and unmaps it on free, so each batch of a CNN page-faults its activations back in,
and on a small line PC that kernel work can cost more than the arithmetic. Raising the mmap and
trim thresholds keeps up to `limit` bytes of freed memory for reuse. Process-wide, glibc only, done once; PYANOM_MALLOC=system opts out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h
_done = False


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Tune glibc malloc as above; True when it took effect (now or by an earlier call)."""
    global _done
    if _done:
        return True
    if os.environ.get("PYANOM_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
    return _done
