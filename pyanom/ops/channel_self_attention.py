"""Per-channel self-attention over the positions of feature maps (the SA-PatchCore authors'
released code, as opposed to eq. 4 of their paper: see pyanom.ops.attention)."""

from __future__ import annotations

import torch

from pyanom._build import native_module
from pyanom.ops import _checks, reference
from pyanom.ops._backend import check, resolve


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
    check(backend, "channel_self_attention")
    if x.requires_grad and torch.is_grad_enabled():
        if backend == "native":
            raise ValueError("channel_self_attention: backend='native' has no backward pass, but x "
                             "requires grad; use backend='auto' or 'torch', or torch.no_grad()")
        return _torch(x)
    return torch.ops.pyanom.channel_self_attention(x, backend)


@torch.library.custom_op("pyanom::channel_self_attention", mutates_args=())
def _channel_self_attention_op(x: torch.Tensor, backend: str) -> torch.Tensor:
    if resolve(backend, x.device, "channel_self_attention") == "torch":
        return _torch(x)
    return _native(x)


@_channel_self_attention_op.register_fake
def _(x: torch.Tensor, backend: str) -> torch.Tensor:
    return x.new_empty(x.shape)


def _torch(x: torch.Tensor) -> torch.Tensor:
    _checks.tensor("x", x, ndim=4)
    return reference.channel_self_attention(x).contiguous()


def _native(x: torch.Tensor) -> torch.Tensor:
    c_mod = native_module()
    b, c, h, w = x.shape
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dtype = str(x.dtype).removeprefix("torch.")
    if x.device.type == "cuda":
        _checks.tensor("x", x, ndim=4)
        with torch.cuda.device(x.device):
            stream = torch.cuda.current_stream().cuda_stream
            c_mod.channel_self_attention_cuda(x.data_ptr(), out.data_ptr(), b, c, h * w, dtype, stream)
        return out
    c_mod.channel_self_attention_cpu(x.data_ptr(), out.data_ptr(), b, c, h * w, dtype)
    return out
