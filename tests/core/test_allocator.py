"""pyanom.allocator: with glibc, freed large blocks stay in the process (no page faults when the
next batch allocates them again); PYANOM_MALLOC=system leaves malloc as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MiB block eight times with libc malloc, after creating a
# detector (which applies the tuning), and prints the minor page faults of the last seven rounds.
PROBE = """
import ctypes, resource
import pyanom
pyanom.create("patchcore")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
def round_trip():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                           reason="mallopt is glibc's")


def page_faults(malloc: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, "PYANOM_MALLOC": malloc},
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@glibc
def test_detector_keeps_freed_blocks_and_opt_out_restores_malloc():
    pages = 7 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert page_faults("") < pages // 100      # reused: the block is already mapped
    assert page_faults("system") > pages // 2  # glibc default: unmapped, faulted in again
