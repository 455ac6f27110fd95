"""Benchmarks read the real data from ../shared/data (or $PYANOM_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not root.is_dir():
        pytest.fail(f"real data not found at {root}: set PYANOM_DATA")
    return root
