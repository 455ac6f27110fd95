"""The hypothesis settings every fuzz and property test of the core shares.

Examples derive from each test's name (derandomize), so CI sees the same ones every run;
PYANOM_FUZZ_EXAMPLES sets how many per test (default 40), for a longer hunt e.g.
    PYANOM_FUZZ_EXAMPLES=3000 python3 -P -m pytest tests/core/test_fuzz_*.py
A case a hunt finds is kept as a plain regression test beside the property that found it.
"""

from __future__ import annotations

import os
import resource
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("PYANOM_FUZZ_EXAMPLES", "40"))


def fuzz(scale: float = 1.0) -> settings:
    """Hypothesis settings for one property: `scale` times the example budget (cheap properties
    take more examples, ones that write files fewer)."""
    return settings(max_examples=max(1, round(EXAMPLES * scale)), derandomize=True, deadline=None, database=None,
                    print_blob=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                            HealthCheck.data_too_large])


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextmanager
def memory_cap(headroom: int = 256 << 20):
    """The process's address space limited to what it maps now plus `headroom` for the block: an
    allocation of the size a damaged header claims fails as a MemoryError instead of taking the
    machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_mapped_bytes() + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
