"""The hypothesis settings every fuzz and property test of the core shares.

Examples derive from each test's name (derandomize), so CI sees the same ones every run;
PYANOM_FUZZ_EXAMPLES sets how many per test (default 40), for a longer hunt e.g.
    PYANOM_FUZZ_EXAMPLES=3000 python3 -P -m pytest tests/core/test_fuzz_*.py
A case a hunt finds is kept as a plain regression test beside the property that found it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("PYANOM_FUZZ_EXAMPLES", "40"))


def fuzz(scale: float = 1.0) -> settings:
    """Hypothesis settings for one property: `scale` times the example budget (cheap properties
    take more examples, ones that write files fewer)."""
    return settings(max_examples=max(1, round(EXAMPLES * scale)), derandomize=True, deadline=None, database=None,
                    print_blob=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                            HealthCheck.data_too_large])
