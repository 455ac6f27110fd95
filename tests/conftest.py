"""Shared fixtures: where the real data lives, and small synthetic sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """../shared/data beside the repository (CI), or $PYANOM_DATA."""
    return Path(os.environ.get("PYANOM_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.fail(f"real data not found at {root}: set PYANOM_DATA or place shared/ beside the repo")
    return root


@pytest.fixture(scope="session")
def texture_set(tmp_path_factory) -> Path:
    """A small synthetic inspection set (MVTec layout) shared by the CLI and plugin tests."""
    from pyanom.data.synthetic import make_inspection_set

    root = tmp_path_factory.mktemp("texture")
    make_inspection_set(root, kind="texture", n_train=24, n_test_good=6, n_test_defect=6, size=128, seed=1)
    return root
