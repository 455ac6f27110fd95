"""Backend choice, and the contract every op shares through pyanom.ops._backend."""

import pytest
import torch

from pyanom.ops import (_backend, channel_self_attention, concentrated_loss, greedy_coreset,
                        knn_scores, self_attention)


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


# One small call per op stem, for the contract every op shares.
CALLS = {
    "coreset": lambda backend="auto": greedy_coreset(torch.randn(50, 4), 10, backend=backend),
    "knn": lambda backend="auto": knn_scores(torch.randn(4, 3), torch.randn(6, 3), 2, backend=backend),
    "attention": lambda backend="auto": self_attention(torch.randn(1, 3, 4, 4), backend=backend),
    "channel_attention": lambda backend="auto": channel_self_attention(torch.randn(1, 3, 4, 4),
                                                                       backend=backend),
    "concentrated": lambda backend="auto": concentrated_loss(
        torch.randn(2, 5, 5), (torch.rand(2, 5, 5) > 0.5).float(), backend=backend),
}
NAMES = {"coreset": "greedy_coreset", "knn": "knn_scores", "attention": "self_attention",
         "channel_attention": "channel_self_attention", "concentrated": "concentrated_loss"}


@pytest.mark.parametrize("stem", list(CALLS))
def test_auto_explicit_and_env_select_the_kernel(stem, paths, monkeypatch):
    calls, call = paths(stem), CALLS[stem]
    monkeypatch.delenv("PYANOM_BACKEND", raising=False)
    for backend in ("native", "torch", "auto"):  # auto: native on the CPU
        call(backend)
    monkeypatch.setenv("PYANOM_BACKEND", "torch")
    call()  # the environment overrides auto ...
    call("native")  # ... but never an explicit choice
    monkeypatch.setenv("PYANOM_BACKEND", "native")
    call("torch")
    assert calls == ["native", "torch", "native", "torch", "native", "torch"]
    monkeypatch.setenv("PYANOM_BACKEND", "bogus")
    with pytest.raises(ValueError, match="PYANOM_BACKEND"):
        call()


@pytest.mark.parametrize("stem", list(CALLS))
def test_unknown_backend_named_in_the_error(stem):
    with pytest.raises(ValueError, match=f"{NAMES[stem]}: backend must be one of"):
        CALLS[stem]("fast")


@pytest.mark.parametrize("stem", list(CALLS))
def test_without_native_kernel_the_twin_runs(stem, paths, monkeypatch):
    """An installation without the compiled module (or a device without kernels): auto is the
    twin, and native says why it is unavailable."""
    calls = paths(stem)
    monkeypatch.setattr(_backend, "native_available", lambda device: False)
    CALLS[stem]()
    assert calls == ["torch"]
    with pytest.raises(RuntimeError, match=f"{NAMES[stem]}: no native kernel"):
        CALLS[stem]("native")


@pytest.mark.parametrize("stem, args", [
    ("coreset", lambda: (torch.randn(20, 3), 5, 128, 0, -1)),
    ("knn", lambda: (torch.randn(4, 3), torch.randn(6, 3), 2, 1 << 20)),
    ("attention", lambda: (torch.randn(1, 4, 3, 5),)),
    ("channel_attention", lambda: (torch.randn(1, 4, 3, 5),)),
    ("concentrated", lambda: (torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True),
                              torch.rand(2, 5, 5, dtype=torch.float64), 0.5, 0.95, 1e-6, False)),
])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_registered_custom_op(stem, args, backend):
    """Schema, fake kernel and autograd registration agree with the kernels (torch.library.opcheck)."""
    torch.library.opcheck(getattr(torch.ops.pyanom, stem).default, (*args(), backend))
