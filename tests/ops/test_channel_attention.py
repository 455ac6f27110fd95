"""channel_self_attention (stem channel_attention): what only the per-channel form has, its
extremes and large logits, against the twin in pyanom.ops.reference evaluated in float64 (to the
tolerances of test_attention.py, which tests all it shares with self_attention on both: shapes,
bad input, layouts, gradients, compile, CUDA streams).
"""

import pytest
import torch

from pyanom.ops import channel_self_attention, reference

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}

def expected(x):
    return reference.channel_self_attention(x.double())


def check(out, x, scale=1.0):
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.double(), expected(x), rtol=tol["rtol"], atol=tol["atol"] * scale)


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


@pytest.mark.cuda
@pytest.mark.parametrize("magnitude", [100.0, 1e3])
def test_cuda_large_logits_are_stable(magnitude):
    x = torch.randn(2, 16, 9, 11, device="cuda", dtype=torch.float64) * magnitude
    out = channel_self_attention(x, backend="native").cpu()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected(x.cpu()), rtol=1e-10, atol=1e-12 * magnitude ** 3)
