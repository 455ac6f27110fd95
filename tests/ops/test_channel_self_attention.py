"""channel_self_attention: native and torch backends against the float64 reference formula.

Tolerances: float32 rtol 1e-4 / atol 1e-5 (scaled by the input magnitude), float64 rtol 1e-10 /
atol 1e-12, both against the reference evaluated in float64 on the same values.
"""

import importlib

import numpy as np
import pytest
import torch

from pyanom.ops import channel_self_attention, reference

# The package's attribute of that name is the function; the module itself, for monkeypatching:
op_module = importlib.import_module("pyanom.ops.channel_self_attention")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}

SHAPES = [
    (1, 1, 1, 1),      # one position: the output is the input
    (1, 3, 1, 1),
    (2, 1, 4, 4),      # C = 1
    (3, 5, 7, 9),      # L = 63: not a whole number of vectors
    (1, 2, 1, 7),      # fewer positions than one vector
    (2, 4, 1, 65),     # one past a whole number of query blocks
    (8, 112, 16, 16),  # the benchmark size
    (2, 192, 8, 8),    # the detector's size (Lite0 stride 32 at 256 px)
    (1, 3, 64, 64),    # L = 4096
]


def expected(x):
    return reference.channel_self_attention(x.double())


def check(out, x, scale=1.0):
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.double(), expected(x), rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, backend):
    x = torch.randn(shape, dtype=dtype)
    check(channel_self_attention(x, backend=backend), x)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_non_negative_maps_like_the_detector_feeds(backend):
    """Rectified, standardised and scaled inputs (products up to ~100): the detector's regime."""
    x = torch.relu(torch.randn(4, 16, 8, 8, dtype=torch.float64)) * 4
    check(channel_self_attention(x, backend=backend), x, scale=4)


@pytest.mark.parametrize("magnitude", [100.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_large_logits_are_stable(magnitude, dtype, backend):
    """x_c[i] x_c[j] up to 1e4 and 1e6 (both signs): exp must not overflow.

    In float32 a logit s carries a rounding error of about |s| * 6e-8, which moves the weights
    by as much relatively, so the output moves by up to that times the spread of the channel:
    float32 is held to atol 1e-6 * magnitude^3 (an overflow gives NaN or is off by the
    magnitude itself); float64 to rtol 1e-10 and atol 1e-12 * magnitude^3.
    """
    x = (torch.randn(2, 16, 9, 11, dtype=torch.float64) * magnitude).to(dtype)
    out = channel_self_attention(x, backend=backend)
    assert torch.isfinite(out).all()
    atol = (1e-6 if dtype == torch.float32 else 1e-12) * magnitude ** 3
    torch.testing.assert_close(out.double(), expected(x), rtol=TOL[dtype]["rtol"], atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repeated_extreme_of_huge_logits(dtype):
    """A rectified map, mostly 0 with a few equal values of 8e4 (met on MVTec bottle): logits of
    6.8e9, where exponents formed as a x_j - a max carry a rounding error of hundreds."""
    x = torch.zeros(2, 3, 8, 8, dtype=dtype)
    x[:, :, 3:5, 2:5] = 82194.4453
    out = channel_self_attention(x, backend="native")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected(x), rtol=1e-6, atol=0.0)


def test_large_logits_pick_the_extremes():
    """A large positive value attends to the channel's maximum, a large negative one to its minimum."""
    x = torch.tensor([[[[100.0, -100.0, 1.0, 2.0, -3.0]]]], dtype=torch.float64)
    out = channel_self_attention(x, backend="native")
    assert out[0, 0, 0, 0] == pytest.approx(100.0) and out[0, 0, 0, 1] == pytest.approx(-100.0)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_zero_attends_to_the_mean(backend):
    x = torch.randn(1, 5, 1, 40, dtype=torch.float64)
    x[..., 0] = 0
    out = channel_self_attention(x, backend=backend)
    torch.testing.assert_close(out[..., 0], x.mean(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_constant_channel_is_a_fixed_point(backend):
    x = torch.randn(2, 12, 1, 1).expand(2, 12, 6, 5)
    torch.testing.assert_close(channel_self_attention(x, backend=backend), x.contiguous(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("layout", ["channels_last", "slice", "transposed"])
def test_non_contiguous_input(layout, backend):
    base = torch.randn(2, 24, 10, 12, dtype=torch.float64)
    x = {"channels_last": base.to(memory_format=torch.channels_last),
         "slice": base[:, ::2, 1:, :7],
         "transposed": base.transpose(2, 3)}[layout]
    assert not x.is_contiguous()
    check(channel_self_attention(x, backend=backend), x)


def test_backends_agree_float32():
    x = torch.randn(4, 64, 12, 12)
    torch.testing.assert_close(channel_self_attention(x, backend="native"),
                               channel_self_attention(x, backend="torch"), rtol=1e-4, atol=1e-5)


def test_native_is_deterministic():
    x = torch.randn(3, 40, 9, 9)
    assert torch.equal(channel_self_attention(x, backend="native"),
                       channel_self_attention(x, backend="native"))


BAD = [
    (lambda: torch.full((1, 2, 3, 3), float("nan")), ValueError, "x contains NaN or Inf"),
    (lambda: torch.tensor([[[[1.0, float("inf")]]]]), ValueError, "x contains NaN or Inf"),
    (lambda: torch.randn(2, 3, 4), ValueError, "x must have 4 dimensions"),
    (lambda: torch.randn(1, 2, 3, 4, 5), ValueError, "x must have 4 dimensions"),
    (lambda: torch.ones(1, 2, 3, 3, dtype=torch.int64), TypeError, "x must have dtype float32, float64"),
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
        channel_self_attention(make(), backend=backend)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (9, 2, 31, 30), (4, 1, 17, 5)])
def test_one_non_finite_value_anywhere(where, value, backend):
    """Also in the last channel of the last image, in the last (partial) vector of positions."""
    x = torch.randn(10, 3, 32, 31, dtype=torch.float64)
    x[where] = value
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        channel_self_attention(x, backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        channel_self_attention(torch.randn(1, 2, 3, 3), backend="fast")


def test_grad_auto_takes_differentiable_torch_path():
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    (channel_self_attention(x) * weight).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (reference.channel_self_attention(x_ref) * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


def test_grad_native_raises():
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="backend='native' has no backward pass"):
        channel_self_attention(x, backend="native")


def test_auto_and_env_select_the_backend(monkeypatch):
    calls = []
    native, torch_path = op_module._native, op_module._torch
    monkeypatch.setattr(op_module, "_native", lambda x: calls.append("native") or native(x))
    monkeypatch.setattr(op_module, "_torch", lambda x: calls.append("torch") or torch_path(x))
    x = torch.randn(1, 3, 4, 4)
    channel_self_attention(x)
    monkeypatch.setenv("PYANOM_BACKEND", "torch")
    channel_self_attention(x)
    channel_self_attention(x, backend="native")  # an explicit choice beats the environment
    assert calls == ["native", "torch", "native"]


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_torch_compile_fullgraph(backend):
    x = torch.randn(2, 8, 5, 7)
    fn = torch.compile(lambda t: channel_self_attention(t * 2.0, backend=backend) + 1.0, fullgraph=True)
    check(fn(x) - 1.0, x * 2.0)


def test_registered_custom_op():
    x = torch.randn(1, 4, 3, 5)
    torch.library.opcheck(torch.ops.pyanom.channel_self_attention.default, (x, "native"))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(2, 1024, 16, 16), (1, 2, 80, 80)], ids=str)
def test_cuda_matches_reference(shape, dtype):
    """Also L = 6400: several shared tiles of keys."""
    x = torch.randn(shape, dtype=dtype, device="cuda")
    out = channel_self_attention(x, backend="native")
    assert out.device == x.device
    check(out.cpu(), x.cpu())


@cuda
@pytest.mark.parametrize("magnitude", [100.0, 1e3])
def test_cuda_large_logits_are_stable(magnitude):
    x = torch.randn(2, 16, 9, 11, device="cuda", dtype=torch.float64) * magnitude
    out = channel_self_attention(x, backend="native").cpu()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected(x.cpu()), rtol=1e-10, atol=1e-12 * magnitude ** 3)


@cuda
def test_cuda_kernel_runs_on_the_current_stream():
    """Graph capture fails for work launched on any stream but the capturing one."""
    x = torch.randn(2, 16, 6, 6, device="cuda")
    torch.ops.pyanom.channel_self_attention(x, "native")  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.pyanom.channel_self_attention(x, "native")
    graph.replay()
    torch.cuda.synchronize()
    check(out.cpu(), x.cpu())


@cuda
@pytest.mark.parametrize("make, error, message", BAD[:9])
def test_cuda_bad_input_rejected(make, error, message):
    with pytest.raises(error, match=message):
        channel_self_attention(make().cuda(), backend="native")
