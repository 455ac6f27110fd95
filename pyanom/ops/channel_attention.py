"""channel_self_attention: per-channel self-attention over the positions of feature maps (the
SA-PatchCore authors' released code, as opposed to eq. 4 of their paper: see pyanom.ops.attention)."""

from __future__ import annotations

import torch

from pyanom.ops import _backend, _checks, reference


def channel_self_attention(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """For each channel c of x [B, C, H, W] separately: out_c[i] = sum_j softmax_j(x_c[i] x_c[j]) x_c[j]
    over the H*W positions, unscaled. Returns a contiguous [B, C, H, W] tensor.

    A position whose value is near 0 gets the channel's mean over the map, a large positive one
    its maximum, a large negative one its minimum: each patch carries statistics of the whole
    image in every channel. The native kernels never hold the B x C x HW x HW logits that the
    torch backend (the reference) materialises, and have no backward pass: when x requires grad
    and grad mode is on, "auto" takes the torch path and "native" raises.
    """
    _checks.tensor("x", x, ndim=4, finite=False)  # NaN/Inf: found inside, by the kernel's own pass
    return torch.ops.pyanom.channel_attention(
        x, _backend.for_grad(backend, "channel_self_attention", x=x))


def _native(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.device.type == "cuda":  # the CPU kernel finds NaN and Inf in its own pass
        _checks.finite_values("x", x)
    _backend.launch("channel_attention", x, x=x.data_ptr(), out=out.data_ptr(), batch=b, channels=c,
                    positions=h * w)
    return out


_backend.define("channel_attention", "channel_self_attention", "(Tensor x, str backend) -> Tensor",
                twin=lambda x: reference.channel_self_attention(_checks.finite_values("x", x)),
                native=_native, fake=lambda x, backend: x.new_empty(x.shape),
                twin_gradient=reference.channel_self_attention)
