"""Concentrated loss for segmentation training (Wang et al. 2022), with fused native kernels.

The native forward pass reads every pixel once and keeps four sums per image; the backward
pass reads every pixel once more and writes the gradient in closed form from those sums.
Autograd through the reference instead runs about twenty elementwise kernels each way.
"""

from __future__ import annotations

import math

import torch

from pyanom.ops import _backend, _checks, reference

_TARGET_DTYPES = (torch.float32, torch.float64, torch.bool, torch.uint8)
_SUMS = 4  # per image: sum(p y), sum(p), sum(y), sum(pixel BCE); see csrc/concentrated.h


def concentrated_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 0.5,
                      lam: float = 0.95, eps: float = 1e-6, detach_factor: bool = True,
                      backend: str = "auto") -> torch.Tensor:
    """Mean over images of (1 - IoU)^gamma * (lam * Dice + (1 - lam) * BCE), a 0-dim tensor.

    logits: [B, ...] float32 or float64 (e.g. [B, H, W] or [B, 1, H, W]); each image is
    everything after the batch dimension. target: same shape, values in [0, 1]; float32,
    float64, bool or uint8 (0/1 masks; 0/255 masks are rejected, divide them by 255 first),
    converted to the logits' dtype. The target gets no gradient: it is ground truth.

    IoU is intersection over union, sum(p y) / (sum(p) + sum(y) - sum(p y) + eps) with
    p = sigmoid(logits), as the paper's text defines it; its eq. 2 prints 2 sum(p y) in the
    numerator, which lets "IoU" exceed 1 and leaves (1 - IoU)^0.5 undefined.
    Dice = 1 - (2 sum(p y) + eps) / (sum(p) + sum(y) + eps); BCE is the mean pixel binary
    cross-entropy computed from the logits (stable for any logit).
    detach_factor=True (the default) makes (1 - IoU)^gamma a weight without gradient;
    False differentiates through it, with its base clamped to at least eps so that the
    gradient stays finite as IoU -> 1. eps lies in (0, 1]. See pyanom.ops.reference.concentrated_loss.
    """
    if isinstance(logits, torch.Tensor) and logits.dim() < 2:
        raise ValueError(f"logits must have shape [B, ...] with at least 2 dimensions, "
                         f"got shape {tuple(logits.shape)}")
    rank = logits.dim() if isinstance(logits, torch.Tensor) else 2
    # Finiteness is checked below with the target's range, in one pass per tensor.
    logits = _checks.tensor("logits", logits, ndim=rank, finite=False)
    target = _checks.tensor("target", target, ndim=rank, dtypes=_TARGET_DTYPES, finite=False)
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    _checks.same_device(logits=logits, target=target)
    gamma = _checks.number("gamma", gamma, low=0.0)
    lam = _checks.number("lam", lam, low=0.0, high=1.0)
    # A smoothing term: beyond 1 it outweighs the sums it smooths (and past a float32 the
    # torch path cannot even hold it).
    eps = _checks.number("eps", eps, high=1.0)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not isinstance(detach_factor, bool):
        raise TypeError(f"detach_factor must be a bool, got {type(detach_factor).__name__}")
    if _checks.has_values(logits) and _checks.has_values(target):
        _check_values(logits, target)
    target = target.detach().to(logits.dtype)
    return torch.ops.pyanom.concentrated(logits, target, gamma, lam, eps, detach_factor, backend)[0]


def _check_values(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Finite logits and a finite target within [0, 1], from one min/max pass over each
    (several times cheaper than isfinite(x).all(), which matters next to a fused kernel)."""
    bounds = torch.stack([v.to(torch.float64) for v in (*torch.aminmax(logits),
                                                        *torch.aminmax(target))]).tolist()
    if not all(map(math.isfinite, bounds[:2])):  # min and max propagate NaN
        raise ValueError("logits contains NaN or Inf")
    if not all(map(math.isfinite, bounds[2:])):
        raise ValueError("target contains NaN or Inf")
    if bounds[2] < 0 or bounds[3] > 1:
        raise ValueError(f"target must lie in [0, 1], got values in [{bounds[2]:g}, {bounds[3]:g}]"
                         " (divide 0/255 masks by 255)")


def _twin(logits, target, gamma, lam, eps, detach_factor):
    """(loss, zeros): the sums serve only the native backward; the twin's is autograd's."""
    loss = reference.concentrated_loss(logits, target, gamma=gamma, lam=lam, eps=eps,
                                       detach_factor=detach_factor)
    return loss, logits.new_zeros((logits.shape[0], _SUMS), dtype=torch.float64)


def _native(logits, target, gamma, lam, eps, detach_factor):
    """(loss, per-image sums [B, 4] float64) from the fused forward kernel."""
    logits, target = logits.contiguous(), target.contiguous()
    batch = logits.shape[0]
    pixels = logits.numel() // batch
    loss = logits.new_empty(())
    sums = logits.new_empty((batch, _SUMS), dtype=torch.float64)
    scratch = _backend.workspace("concentrated", logits, batch=batch, pixels=pixels)
    _backend.launch("concentrated", logits, logits=logits.data_ptr(), target=target.data_ptr(),
                    batch=batch, pixels=pixels, gamma=gamma, lam=lam, eps=eps, loss=loss.data_ptr(),
                    sums=sums.data_ptr(), workspace=scratch.data_ptr(), workspace_bytes=scratch.numel())
    return loss, sums


def _native_backward(grad_loss, logits, target, sums, gamma, lam, eps, detach_factor):
    """d loss / d logits from the fused backward kernel (one pass over the pixels)."""
    grad_loss, logits, target, sums = (t.contiguous() for t in (grad_loss, logits, target, sums))
    batch = logits.shape[0]
    grad_logits = torch.empty_like(logits)
    _backend.launch("concentrated_backward", logits, grad_loss=grad_loss.data_ptr(),
                    logits=logits.data_ptr(), target=target.data_ptr(), sums=sums.data_ptr(),
                    batch=batch, pixels=logits.numel() // batch, gamma=gamma, lam=lam, eps=eps,
                    detach_factor=detach_factor, grad_logits=grad_logits.data_ptr())
    return grad_logits


def _setup_context(ctx, inputs, output):
    logits, target, gamma, lam, eps, detach_factor, backend = inputs
    ctx.save_for_backward(logits, target, output[1])
    ctx.params = (gamma, lam, eps, detach_factor)
    # Meta tensors (shapes only) run no kernel either way: their backward is the twin's, on meta.
    ctx.native = (logits.device.type != "meta"
                  and _backend.resolve(backend, logits.device, "concentrated_loss") == "native")
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, grad_sums):
    logits, target, sums = ctx.saved_tensors
    if ctx.native:
        grad_logits = torch.ops.pyanom.concentrated_backward(grad_loss, logits, target, sums,
                                                             *ctx.params, "native")
    else:
        gamma, lam, eps, detach_factor = ctx.params
        twin = lambda z: reference.concentrated_loss(z, target, gamma=gamma, lam=lam, eps=eps,  # noqa: E731
                                                     detach_factor=detach_factor)
        grad_logits = _backend.twin_vjp(twin, (logits,), grad_loss, (True,))[0]
    return grad_logits, None, None, None, None, None, None


_backend.define(
    "concentrated_backward", "concentrated_loss",
    "(Tensor grad_loss, Tensor logits, Tensor target, Tensor sums, float gamma, float lam, "
    "float eps, bool detach_factor, str backend) -> Tensor",
    twin=None, native=_native_backward,
    fake=lambda grad_loss, logits, *rest: torch.empty_like(logits,
                                                           memory_format=torch.contiguous_format))

_backend.define(
    "concentrated", "concentrated_loss",
    "(Tensor logits, Tensor target, float gamma, float lam, float eps, bool detach_factor, "
    "str backend) -> (Tensor, Tensor)",
    twin=_twin, native=_native,
    fake=lambda logits, target, gamma, lam, eps, detach_factor, backend: (
        logits.new_empty(()), logits.new_empty((logits.shape[0], _SUMS), dtype=torch.float64)),
    backward=_backward, setup_context=_setup_context)
