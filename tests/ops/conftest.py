"""What every op's tests share: the CUDA marker, the devices and backends, and a spy on the path
each call takes."""

from __future__ import annotations

import pytest
import torch

from pyanom.ops import _backend

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda (pyproject's marker) skip where no CUDA device is present."""
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    return request.param


@pytest.fixture(params=["native", "torch"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def paths(monkeypatch):
    """paths(stem) -> the list "native" / "torch" grows by at each call of that op's kernels."""

    def spy(stem: str) -> list[str]:
        calls: list[str] = []
        op = _backend.OPS[stem]
        native, twin = op.native, op.twin
        monkeypatch.setattr(op, "native", lambda *a: calls.append("native") or native(*a))
        monkeypatch.setattr(op, "twin", lambda *a: calls.append("torch") or twin(*a))
        return calls

    return spy
