"""From coarse patch scores to a smooth anomaly map at the image's resolution."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius 4 sigma (the 33 taps of sigma = 4)."""
    radius = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur [B, H, W] maps with two 1-D passes (a 2-D Gaussian is separable: 2 x 33 taps
    instead of 33 x 33), reflecting at the borders."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.dtype, maps.device)
    r = k.numel() // 2
    x = maps.unsqueeze(1)
    mode = _border_mode(x.shape[-2:], r)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def _border_mode(size, radius: int) -> str:
    """Reflect padding needs the pad to be smaller than the side; replicate covers tiny maps."""
    return "reflect" if min(size) > radius else "replicate"


def _axis_operator(n_in: int, n_out: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """[n_out, n_in]: linear interpolation (align_corners=False) then the 1-D `kernel`, as one matrix."""
    eye = torch.eye(n_in, dtype=kernel.dtype, device=kernel.device)[:, None]
    rows = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)
    r = kernel.numel() // 2
    return F.conv1d(F.pad(rows, (r, r), mode=mode), kernel.view(1, 1, -1))[:, 0].T


def upsample_scores(patch_scores: torch.Tensor, size: int | tuple[int, int], sigma: float) -> torch.Tensor:
    """Patch scores [B, h, w] -> anomaly maps [B, H, W]: bilinear upsampling, then Gaussian blur
    (as `gaussian_blur`). Both are linear and separable, so the two together are one small matrix
    per axis: A_h @ scores @ A_w.T, far cheaper than blurring the upsampled map."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    (h, w), key = patch_scores.shape[-2:], (size, float(sigma), patch_scores.dtype, patch_scores.device)
    # A traced graph (pyanom.export) computes them in the graph; elsewhere one image pays for
    # them as much as a batch does, so they are kept.
    operators = _axis_operators if torch.jit.is_tracing() or torch.compiler.is_compiling() else _kept_operators
    rows, cols = operators(h, w, *key)
    return rows @ patch_scores @ cols.T


def _axis_operators(h: int, w: int, size: tuple[int, int], sigma: float, dtype, device):
    """The [H, h] and [W, w] operators of upsample_scores."""
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma, dtype, device)
    else:  # one tap of 1: no blur
        kernel = torch.ones(1, dtype=dtype, device=device)
    mode = _border_mode(size, kernel.numel() // 2)
    return _axis_operator(h, size[0], kernel, mode), _axis_operator(w, size[1], kernel, mode)


@functools.lru_cache(maxsize=16)
def _kept_operators(h: int, w: int, size: tuple[int, int], sigma: float, dtype, device):
    """_axis_operators, kept for the next call with the same sizes: plain tensors (not inference
    ones, which autograd could not save), never written to."""
    with torch.inference_mode(False), torch.no_grad():
        return _axis_operators(h, w, size, sigma, dtype, device)


def at_sizes(maps: torch.Tensor, sizes) -> list[torch.Tensor]:
    """Maps [B, h, w] at the detector's size -> one map per image at its own (height, width)
    (sizes: one per map, None keeps that map as it is): bilinear, antialiased where it shrinks.
    Consecutive maps of one size are resized in one call; a map already at its size is not copied."""
    out: list[torch.Tensor] = []
    i = 0
    while i < len(maps):
        j = i + 1
        while j < len(maps) and sizes[j] == sizes[i]:
            j += 1
        run, size = maps[i:j], sizes[i]
        if size is not None and tuple(size) != tuple(run.shape[-2:]):
            shrink = size[0] < run.shape[-2] or size[1] < run.shape[-1]
            run = F.interpolate(run.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False,
                                antialias=shrink).squeeze(1)
        out += list(run)
        i = j
    return out


def join_maps(parts) -> torch.Tensor | list[torch.Tensor]:
    """The maps of consecutive parts (each a tensor [B, H, W] or a list of maps [H, W]) as one
    [N, H, W] tensor when they share a size, else as the list of maps (images of different sizes)."""
    single = [m for part in parts for m in part]
    if len({tuple(m.shape) for m in single}) == 1:
        return torch.stack(single)
    return single
