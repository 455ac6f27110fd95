"""Parameter-free self-attention over the positions of feature maps (SA-PatchCore, eq. 4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyanom._build import native_module
from pyanom.ops import _checks
from pyanom.ops._backend import check, resolve

# The CPU kernel holds the whole score matrix of maps up to this many positions (64 MiB in
# float32 at 4096): it is symmetric, so only half of it is computed. Longer maps go
# flash-attention style, one block of keys at a time with the online softmax.
FULL_SCORES_MAX_POSITIONS = 4096


def self_attention(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """softmax(X X^T / sqrt(C)) X for each map of x [B, C, H, W], X being the map as [H*W, C].

    Every position becomes a similarity-weighted mix of all positions of its own map, which
    lets a patch feature see the whole image (SA-PatchCore, eq. 4: over positions, not the
    per-channel variant of the authors' code). Returns a contiguous [B, C, H, W] tensor.

    The native kernels have no backward pass (the op runs on frozen features): when x requires
    grad and grad mode is on, "auto" takes the differentiable torch path and "native" raises.
    """
    # NaN and Inf are rejected inside the op: the CPU kernel finds them while packing x,
    # which spares a separate pass over the whole input.
    _checks.tensor("x", x, ndim=4, finite=False)
    check(backend, "self_attention")
    if x.requires_grad and torch.is_grad_enabled():
        if backend == "native":
            raise ValueError("self_attention: backend='native' has no backward pass, but x "
                             "requires grad; use backend='auto' or 'torch', or torch.no_grad()")
        return _torch_attention(_finite(x))
    return torch.ops.pyanom.self_attention(x, backend)


@torch.library.custom_op("pyanom::self_attention", mutates_args=())
def _self_attention_op(x: torch.Tensor, backend: str) -> torch.Tensor:
    if resolve(backend, x.device, "self_attention") == "torch":
        return _torch_attention(_finite(x))
    return _native_attention(x)


@_self_attention_op.register_fake
def _(x: torch.Tensor, backend: str) -> torch.Tensor:
    return x.new_empty(x.shape)


def _finite(x: torch.Tensor) -> torch.Tensor:
    return _checks.tensor("x", x, ndim=4)


def _torch_attention(x: torch.Tensor) -> torch.Tensor:
    """One attention head of dimension C over the L = H*W positions."""
    b, c, h, w = x.shape
    tokens = x.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)  # [B, 1, L, C]
    out = F.scaled_dot_product_attention(tokens, tokens, tokens, scale=1.0 / math.sqrt(c))
    return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w).contiguous()


def _native_attention(x: torch.Tensor) -> torch.Tensor:
    c_mod = native_module()
    b, c, h, w = x.shape
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dtype = str(x.dtype).removeprefix("torch.")
    if x.device.type == "cuda":
        _finite(x)
        with torch.cuda.device(x.device):
            stream = torch.cuda.current_stream().cuda_stream
            c_mod.self_attention_cuda(x.data_ptr(), out.data_ptr(), b, c, h * w, dtype, stream)
        return out
    size = c_mod.self_attention_workspace_bytes(b, c, h * w, FULL_SCORES_MAX_POSITIONS, dtype)
    workspace = torch.empty(size, dtype=torch.uint8)
    c_mod.self_attention_cpu(x.data_ptr(), out.data_ptr(), workspace.data_ptr(), size, b, c,
                             h * w, FULL_SCORES_MAX_POSITIONS, dtype)
    return out
