"""Backend choice shared by every op."""

import pytest
import torch

from pyanom.ops import _backend


def test_auto_is_native_on_cpu_and_torch_on_unverified_cuda(monkeypatch):
    monkeypatch.delenv("PYANOM_BACKEND", raising=False)
    assert _backend.resolve("auto", torch.device("cpu"), "op") == "native"
    monkeypatch.setattr(_backend, "native_available", lambda device: True)
    assert _backend.resolve("auto", torch.device("cuda"), "op") == "torch"
    assert _backend.resolve("native", torch.device("cuda"), "op") == "native"


def test_env_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("PYANOM_BACKEND", "torch")
    assert _backend.resolve("auto", torch.device("cpu"), "op") == "torch"
    assert _backend.resolve("native", torch.device("cpu"), "op") == "native"
    monkeypatch.setenv("PYANOM_BACKEND", "fast")
    with pytest.raises(ValueError, match="PYANOM_BACKEND"):
        _backend.resolve("auto", torch.device("cpu"), "op")


def test_bad_backend_name_and_missing_native_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.resolve("gpu", torch.device("cpu"), "op")
    monkeypatch.setattr(_backend, "native_available", lambda device: False)
    with pytest.raises(RuntimeError, match="op: no native kernel"):
        _backend.resolve("native", torch.device("cpu"), "op")
