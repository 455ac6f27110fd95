"""Backend choice, and the contract every op shares through pyanom.ops._backend."""

import re

import pytest
import torch

from pyanom._build import native_module

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
    "coreset": lambda backend="auto", device="cpu": greedy_coreset(
        torch.randn(50, 4, device=device), 10, backend=backend),
    "knn": lambda backend="auto", device="cpu": knn_scores(
        torch.randn(4, 3, device=device), torch.randn(6, 3, device=device), 2, backend=backend),
    "attention": lambda backend="auto", device="cpu": self_attention(
        torch.randn(1, 3, 4, 4, device=device), backend=backend),
    "channel_attention": lambda backend="auto", device="cpu": channel_self_attention(
        torch.randn(1, 3, 4, 4, device=device), backend=backend),
    "concentrated": lambda backend="auto", device="cpu": concentrated_loss(
        torch.randn(2, 5, 5, device=device), (torch.rand(2, 5, 5, device=device) > 0.5).float(),
        backend=backend),
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


# ---- each kernel's arguments: declared once (csrc/<stem>.h), followed by the binding and ops ----

def launched_kernels(device: str, monkeypatch) -> set[str]:
    """The compiled functions that one native call of every op (forward and backward) reaches on
    device, each checked against _C.kernel_args on the way (pyanom.ops._backend._bound)."""
    seen = set()
    bound = _backend._bound
    monkeypatch.setattr(_backend, "_bound", lambda name, *a: seen.add(name) or bound(name, *a))
    for stem, call in CALLS.items():
        call("native", device)
    z = torch.randn(2, 5, 5, device=device, requires_grad=True)
    concentrated_loss(z, torch.zeros(2, 5, 5, device=device), backend="native").backward()
    return seen


def test_every_declared_kernel_is_launched_by_its_declared_names(device, monkeypatch):
    declared = {name for name in native_module().kernel_args if name.endswith(f"_{device}")}
    assert declared, "the compiled module declares no kernel for this device"
    assert launched_kernels(device, monkeypatch) == declared


def test_the_binding_takes_the_declared_names():
    """pybind11's own signature of every entry point lists the names of _C.kernel_args."""
    c = native_module()
    for name, args in c.kernel_args.items():
        signature = getattr(c, name).__doc__.split("\n")[0]
        names = re.findall(r"(\w+): ", signature[signature.index("("):])
        assert tuple(names) == args, name


def test_a_call_that_does_not_follow_the_declaration_fails_naming_both(monkeypatch):
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"passes _C.knn_workspace_bytes_cpu \(q, n, d, chunk_size, "
                                           r"dtype\) but the compiled module declares \(q, n, d, k, "
                                           r"chunk_size, dtype\)"):
        _backend.workspace("knn", x, q=4, n=4, d=3, chunk_size=10)
    # A build whose list differs from the Python code (say, a stale build after an edit of
    # csrc/knn.h): the public call fails before any address reaches the kernel.
    args = native_module().kernel_args
    monkeypatch.setitem(args, "knn_cpu", ("bank", "queries", *args["knn_cpu"][2:]))
    with pytest.raises(RuntimeError, match=r"declares \(bank, queries, .*rebuild pyanom"):
        knn_scores(x, x, 2, backend="native")
    with pytest.raises(RuntimeError, match=r"_C.nothing_cpu .*declares \(no such kernel\)"):
        _backend.launch("nothing", x, x=x.data_ptr())
