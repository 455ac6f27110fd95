"""Concentrated loss for segmentation training (Wang et al. 2022), with fused native kernels.

The native forward pass reads every pixel once and keeps four sums per image; the backward
pass reads every pixel once more and writes the gradient in closed form from those sums.
Autograd through the reference instead runs about twenty elementwise kernels each way.
"""

from __future__ import annotations

import math

import torch

from pyanom._build import native_module
from pyanom.ops import _backend, _checks, reference

_TARGET_DTYPES = (torch.float32, torch.float64, torch.bool, torch.uint8)
_SUMS = 4  # per image: sum(p y), sum(p), sum(y), sum(pixel BCE); see csrc/kernels.h


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
    gradient stays finite as IoU -> 1. See pyanom.ops.reference.concentrated_loss.
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
    device = _checks.same_device(logits=logits, target=target)
    gamma = _checks.number("gamma", gamma, low=0.0)
    lam = _checks.number("lam", lam, low=0.0, high=1.0)
    eps = _checks.number("eps", eps)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not isinstance(detach_factor, bool):
        raise TypeError(f"detach_factor must be a bool, got {type(detach_factor).__name__}")
    use_native = _backend.resolve(backend, device, "concentrated_loss") == "native"
    if not torch.compiler.is_compiling():  # data-dependent, so skipped while tracing
        _check_values(logits, target)
    target = target.detach().to(logits.dtype)
    if use_native:
        return _native(logits, target, gamma, lam, eps, detach_factor)[0]
    return reference.concentrated_loss(logits, target, gamma=gamma, lam=lam, eps=eps,
                                       detach_factor=detach_factor)


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


def _launch(kernel: str, device: torch.device, *args) -> None:
    """Call _C.<kernel>_cpu, or _C.<kernel>_cuda on the device's current stream."""
    c = native_module()
    if device.type == "cuda":
        with torch.cuda.device(device):
            getattr(c, kernel + "_cuda")(*args, torch.cuda.current_stream(device).cuda_stream)
    else:
        getattr(c, kernel + "_cpu")(*args)


def _dtype_name(x: torch.Tensor) -> str:
    return str(x.dtype).replace("torch.", "")


@torch.library.custom_op("pyanom::concentrated_loss", mutates_args=())
def _native(logits: torch.Tensor, target: torch.Tensor, gamma: float, lam: float, eps: float,
            detach_factor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-image sums [B, 4] float64) from the fused forward kernel."""
    logits, target = logits.contiguous(), target.contiguous()
    batch = logits.shape[0]
    pixels = logits.numel() // batch
    loss = logits.new_empty(())
    sums = logits.new_empty((batch, _SUMS), dtype=torch.float64)
    nbytes = native_module().concentrated_loss_workspace_bytes(batch, pixels)
    workspace = logits.new_empty((nbytes // 8,), dtype=torch.float64)
    _launch("concentrated_loss_forward", logits.device, logits.data_ptr(), target.data_ptr(),
            batch, pixels, gamma, lam, eps, loss.data_ptr(), sums.data_ptr(),
            workspace.data_ptr(), nbytes, _dtype_name(logits))
    return loss, sums


@_native.register_fake
def _(logits, target, gamma, lam, eps, detach_factor):
    return logits.new_empty(()), logits.new_empty((logits.shape[0], _SUMS), dtype=torch.float64)


@torch.library.custom_op("pyanom::concentrated_loss_backward", mutates_args=())
def _native_backward(grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                     sums: torch.Tensor, gamma: float, lam: float, eps: float,
                     detach_factor: bool) -> torch.Tensor:
    """d loss / d logits from the fused backward kernel (one pass over the pixels)."""
    grad_loss, logits, target, sums = (t.contiguous() for t in (grad_loss, logits, target, sums))
    batch = logits.shape[0]
    grad_logits = torch.empty_like(logits)
    _launch("concentrated_loss_backward", logits.device, grad_loss.data_ptr(), logits.data_ptr(),
            target.data_ptr(), sums.data_ptr(), batch, logits.numel() // batch,
            gamma, lam, eps, detach_factor, grad_logits.data_ptr(), _dtype_name(logits))
    return grad_logits


@_native_backward.register_fake
def _(grad_loss, logits, target, sums, gamma, lam, eps, detach_factor):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, target, gamma, lam, eps, detach_factor = inputs
    ctx.save_for_backward(logits, target, output[1])
    ctx.params = (gamma, lam, eps, detach_factor)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, grad_sums):
    logits, target, sums = ctx.saved_tensors
    grad_logits = _native_backward(grad_loss, logits, target, sums, *ctx.params)
    return grad_logits, None, None, None, None, None


_native.register_autograd(_backward, setup_context=_setup_context)
