"""Argument checks shared by every op, so the native and torch paths reject the same input."""

from __future__ import annotations

import torch

FLOATS = (torch.float32, torch.float64)
INT64_MAX = 2**63 - 1  # integer arguments cross into the ops as int64


def tensor(name: str, x, *, ndim: int | tuple[int, ...], dtypes=FLOATS, finite: bool = True,
           nonempty: bool = True) -> torch.Tensor:
    """Check a tensor argument's type, rank, dtype, emptiness and finiteness."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {want}, got {str(x.dtype).replace('torch.', '')}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    return finite_values(name, x) if finite else x


def has_values(x: torch.Tensor) -> bool:
    """Whether x's values can be read now: not while torch.compile traces, not on the meta
    device (shapes only: an op on meta tensors gives meta tensors of its output's shape)."""
    return x.device.type != "meta" and not torch.compiler.is_compiling()


def finite_values(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise unless every value of x is finite. Data-dependent, so skipped where x has no values
    (has_values); eager calls always check (ops whose kernel finds NaN/Inf itself defer it there)."""
    if x.numel() and has_values(x):
        low, high = torch.aminmax(x)  # NaN propagates; ~20x cheaper than isfinite().all()
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            raise ValueError(f"{name} contains NaN or Inf")
    return x


def same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on one device: {listed}")
    return first


def same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    """All tensors of one dtype; returns it."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    first = next(iter(dtypes.values()))
    if any(d != first for d in dtypes.values()):
        listed = ", ".join(f"{n} is {str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise TypeError(f"tensors must share a dtype: {listed}")
    return first


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Check an integer argument lies in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.Tensor) or not hasattr(value, "__index__"):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def number(name: str, value, *, low: float | None = None, high: float | None = None) -> float:
    """Check a real argument is finite and lies in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value
