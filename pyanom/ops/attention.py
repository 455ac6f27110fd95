"""self_attention: parameter-free self-attention over the positions of feature maps (SA-PatchCore, eq. 4)."""

from __future__ import annotations

import torch

from pyanom.ops import _backend, _checks, reference

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
    return torch.ops.pyanom.attention(x, _backend.for_grad(backend, "self_attention", x=x))


def _native(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.device.type == "cuda":
        _checks.finite_values("x", x)
        _backend.launch("attention", x, x=x.data_ptr(), out=out.data_ptr(), batch=b, channels=c,
                        positions=h * w)
        return out
    sizes = dict(batch=b, channels=c, positions=h * w, full_limit=FULL_SCORES_MAX_POSITIONS)
    scratch = _backend.workspace("attention", x, **sizes)
    _backend.launch("attention", x, x=x.data_ptr(), out=out.data_ptr(), workspace=scratch.data_ptr(),
                    workspace_bytes=scratch.numel(), **sizes)
    return out


_backend.define("attention", "self_attention", "(Tensor x, str backend) -> Tensor",
                twin=lambda x: reference.self_attention(_checks.finite_values("x", x)),
                native=_native, fake=lambda x, backend: x.new_empty(x.shape),
                twin_gradient=reference.self_attention)
