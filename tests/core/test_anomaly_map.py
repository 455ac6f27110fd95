"""upsample_scores (one matrix per axis) against its definition: bilinear upsampling, then the
separable Gaussian blur of gaussian_blur."""

import pytest
import torch
import torch.nn.functional as F

from pyanom.anomaly_map import gaussian_blur, upsample_scores


def upsample_then_blur(scores, size, sigma):
    maps = F.interpolate(scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return gaussian_blur(maps.squeeze(1), sigma)


@pytest.mark.parametrize("shape, size, sigma", [
    ((4, 32, 32), (256, 256), 4.0),   # PatchCore at 256 px
    ((2, 40, 14), (320, 112), 4.0),   # non-square
    ((3, 7, 5), (40, 30), 2.5),
    ((1, 1, 1), (9, 9), 4.0),         # smaller than the kernel: replicate padding
    ((2, 8, 8), (12, 40), 4.0),       # one side under the radius
    ((2, 16, 16), (16, 16), 1.0),     # no upsampling
    ((2, 9, 6), (30, 20), 0.0),       # no blur
    ((1, 4, 4), 16, 2.0),             # an int size
])
def test_upsample_scores_is_upsampling_then_blur(shape, size, sigma):
    torch.manual_seed(0)
    scores = torch.rand(shape) * 10
    expected = upsample_then_blur(scores, (size, size) if isinstance(size, int) else size, sigma)
    got = upsample_scores(scores, size, sigma)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_upsample_scores_non_contiguous_float64_and_large_values():
    scores = (torch.rand(3, 16, 32, dtype=torch.float64) * 1e6).transpose(1, 2)
    got = upsample_scores(scores, (64, 40), 4.0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, upsample_then_blur(scores, (64, 40), 4.0))


def test_upsample_scores_keeps_its_operators_usable_by_autograd():
    """The per-axis operators are kept between calls; made under inference_mode they must still
    serve a later call whose scores require grad."""
    with torch.inference_mode():
        first = upsample_scores(torch.rand(1, 8, 8), (24, 24), 2.0)
    scores = torch.rand(2, 8, 8, requires_grad=True)
    got = upsample_scores(scores, (24, 24), 2.0)
    got.sum().backward()
    assert scores.grad is not None and scores.grad.shape == scores.shape
    torch.testing.assert_close(got.detach()[:1], upsample_then_blur(scores.detach()[:1], (24, 24), 2.0))
    assert first.shape == (1, 24, 24)
