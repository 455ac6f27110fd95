"""self_attention: native and torch backends against the float64 reference formula.

Tolerances: float32 rtol 1e-4 / atol 1e-5 (scaled by the input magnitude), float64 rtol 1e-10 /
atol 1e-12, both against the reference evaluated in float64 on the same values.
"""

import numpy as np
import pytest
import torch

from pyanom.ops import attention, reference, self_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}

SHAPES = [
    (1, 1, 1, 1),      # one position: the output is the input
    (1, 3, 1, 1),
    (2, 1, 4, 4),      # C = 1
    (3, 5, 7, 9),      # odd H, W; L = 63 is not a whole number of vectors
    (2, 16, 16, 16),
    (1, 64, 13, 17),
    (2, 1024, 4, 4),   # wide channels, few positions
    (1, 7, 32, 32),    # L = 1024
    (1, 33, 31, 33),   # L = 1023: partial query block, partial key tile
    (1, 256, 16, 16),  # the SA-PatchCore size class
]


def expected(x):
    return reference.self_attention(x.double())


def check(out, x, scale=1.0):
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.double(), expected(x), rtol=tol["rtol"],
                               atol=tol["atol"] * scale)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, backend):
    x = torch.randn(shape, dtype=dtype)
    check(self_attention(x, backend=backend), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 9, 23, 29), (1, 20, 33, 33), (3, 5, 7, 9), (1, 1, 1, 1)],
                         ids=str)
def test_flash_path_matches_reference(shape, dtype, monkeypatch):
    """Maps above the full-scores limit go block by block (L = 667 and 1089: several key blocks)."""
    monkeypatch.setattr(attention, "FULL_SCORES_MAX_POSITIONS", 0)
    x = torch.randn(shape, dtype=dtype)
    check(self_attention(x, backend="native"), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_more_images_than_one_group(dtype):
    """The CPU kernel packs (and scores) a group of images at a time: 3 in fp32, 1 in fp64 here."""
    x = torch.randn(7, 3, 32, 32, dtype=dtype)
    check(self_attention(x, backend="native"), x)


@pytest.mark.parametrize("magnitude", [30.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_large_magnitude_is_stable(magnitude, dtype, backend):
    """Logits in the thousands to millions: exp must not overflow (the max is subtracted).

    In float32 a logit s carries a rounding error of about |s| * 6e-8 (here up to 0.1), which
    moves the weights by as much, so float32 is held to rtol 1e-3 / atol 1e-4 * magnitude here
    (an overflow would be off by the magnitude itself); float64 to the usual.
    """
    x = (torch.randn(2, 16, 9, 11, dtype=torch.float64) * magnitude).to(dtype)
    out = self_attention(x, backend=backend)
    assert torch.isfinite(out).all()
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected(x), rtol=1e-3, atol=1e-4 * magnitude)
    else:
        check(out, x, scale=magnitude)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_constant_map_is_a_fixed_point(backend):
    """All positions equal: every weight row averages copies of the same vector."""
    x = torch.randn(2, 12, 1, 1).expand(2, 12, 6, 5)
    torch.testing.assert_close(self_attention(x, backend=backend), x.contiguous(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("layout", ["channels_last", "slice", "transposed"])
def test_non_contiguous_input(layout, backend):
    base = torch.randn(2, 24, 10, 12, dtype=torch.float64)
    x = {"channels_last": base.to(memory_format=torch.channels_last),
         "slice": base[:, ::2, 1:, :7],
         "transposed": base.transpose(2, 3)}[layout]
    assert not x.is_contiguous()
    check(self_attention(x, backend=backend), x)


def test_backends_agree_float32():
    x = torch.randn(4, 128, 12, 12)
    torch.testing.assert_close(self_attention(x, backend="native"),
                               self_attention(x, backend="torch"), rtol=1e-4, atol=1e-5)


def test_native_is_deterministic():
    x = torch.randn(3, 40, 9, 9)
    assert torch.equal(self_attention(x, backend="native"), self_attention(x, backend="native"))


BAD = [
    (lambda: torch.full((1, 2, 3, 3), float("nan")), ValueError, "x contains NaN or Inf"),
    (lambda: torch.tensor([[[[1.0, float("inf")]]]]), ValueError, "x contains NaN or Inf"),
    (lambda: torch.randn(2, 3, 4), ValueError, "x must have 4 dimensions"),
    (lambda: torch.randn(1, 2, 3, 4, 5), ValueError, "x must have 4 dimensions"),
    (lambda: torch.ones(1, 2, 3, 3, dtype=torch.int64), TypeError,
     "x must have dtype float32, float64"),
    (lambda: torch.randn(1, 2, 3, 3).half(), TypeError, "x must have dtype float32, float64"),
    (lambda: torch.randn(0, 2, 3, 3), ValueError, "x is empty"),
    (lambda: torch.randn(1, 0, 3, 3), ValueError, "x is empty"),
    (lambda: torch.randn(1, 2, 0, 3), ValueError, "x is empty"),
    (lambda: [[[[1.0]]]], TypeError, "x must be a torch.Tensor"),
    (lambda: np.ones((1, 2, 3, 3), dtype=np.float32), TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["native", "torch", "auto"])
@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_input_rejected_alike(make, error, message, backend):
    with pytest.raises(error, match=message):
        self_attention(make(), backend=backend)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (9, 2, 31, 30), (4, 1, 17, 5)])
def test_one_non_finite_value_anywhere(where, value, backend):
    """Also in the last image of the last group, in the last (partial) vector of positions."""
    x = torch.randn(10, 3, 32, 31, dtype=torch.float64)
    x[where] = value
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        self_attention(x, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        self_attention(torch.randn(1, 2, 3, 3), backend="fast")


def test_grad_auto_takes_differentiable_torch_path():
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    (self_attention(x) * weight).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (reference.self_attention(x_ref) * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


def test_grad_auto_wins_over_env_native(monkeypatch):
    monkeypatch.setenv("PYANOM_BACKEND", "native")
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    self_attention(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_grad_native_raises():
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="backend='native' has no backward pass"):
        self_attention(x, backend="native")


def test_no_grad_mode_allows_native_on_grad_tensors():
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        out = self_attention(x, backend="native")
    assert out.grad_fn is None
    check(out, x.detach())


def test_auto_and_env_select_the_backend(monkeypatch):
    calls = []
    native, torch_path = attention._native_attention, attention._torch_attention
    monkeypatch.setattr(attention, "_native_attention",
                        lambda x: calls.append("native") or native(x))
    monkeypatch.setattr(attention, "_torch_attention",
                        lambda x: calls.append("torch") or torch_path(x))
    x = torch.randn(1, 3, 4, 4)
    self_attention(x)
    monkeypatch.setenv("PYANOM_BACKEND", "torch")
    self_attention(x)
    self_attention(x, backend="native")  # an explicit choice beats the environment
    assert calls == ["native", "torch", "native"]


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_torch_compile_fullgraph(backend):
    x = torch.randn(2, 8, 5, 7)
    fn = torch.compile(lambda t: self_attention(t * 2.0, backend=backend) + 1.0, fullgraph=True)
    check(fn(x) - 1.0, x * 2.0)


def test_registered_custom_op():
    x = torch.randn(1, 4, 3, 5)
    torch.library.opcheck(torch.ops.pyanom.self_attention.default, (x, "native"))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(2, 2048, 8, 8), (1, 64, 64, 64), (2, 9, 23, 29),
                                            (1, 2100, 5, 5), (1, 3, 65, 65)], ids=str)
def test_cuda_matches_reference(shape, dtype):
    """C up to 2048 and H*W up to 4096 (the issue's range), and past both."""
    x = torch.randn(shape, dtype=dtype, device="cuda")
    out = self_attention(x, backend="native")
    assert out.device == x.device
    check(out.cpu(), x.cpu())


@cuda
@pytest.mark.parametrize("magnitude", [30.0, 1e3])
def test_cuda_large_magnitude_is_stable(magnitude):
    x = torch.randn(2, 16, 9, 11, device="cuda") * magnitude
    out = self_attention(x, backend="native").cpu()
    assert torch.isfinite(out).all()
    check(out, x.cpu(), scale=magnitude)


@cuda
def test_cuda_non_contiguous_and_side_stream():
    x = torch.randn(2, 24, 10, 12, device="cuda").to(memory_format=torch.channels_last)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = self_attention(x, backend="native")
    torch.cuda.current_stream().wait_stream(stream)
    check(out.cpu(), x.cpu())


@cuda
def test_cuda_kernel_runs_on_the_current_stream():
    """Graph capture fails for work launched on any stream but the capturing one."""
    x = torch.randn(2, 16, 6, 6, device="cuda")
    torch.ops.pyanom.self_attention(x, "native")  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.pyanom.self_attention(x, "native")
    graph.replay()
    torch.cuda.synchronize()
    check(out.cpu(), x.cpu())


@cuda
@pytest.mark.parametrize("make, error, message", BAD[:9])
def test_cuda_bad_input_rejected(make, error, message):
    with pytest.raises(error, match=message):
        self_attention(make().cuda(), backend="native")


@cuda
def test_cuda_torch_compile_fullgraph():
    x = torch.randn(2, 8, 5, 7, device="cuda")
    fn = torch.compile(lambda t: self_attention(t, backend="native"), fullgraph=True)
    check(fn(x).cpu(), x.cpu())
