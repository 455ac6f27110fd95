"""Choosing between the native kernels and the pure-PyTorch path for one call."""

from __future__ import annotations

import os

import torch

from pyanom._build import native_module

BACKENDS = ("auto", "native", "torch")
# The CUDA kernels compile but have not yet been run on a GPU: until they pass the ops suite
# there, "auto" keeps CUDA tensors on the torch path (explicit "native" still reaches them).
AUTO_NATIVE_DEVICES = ("cpu",)


def native_available(device: torch.device) -> bool:
    """True when the compiled module has kernels for this device and can use it."""
    c = native_module()
    if c is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return bool(c.build_info()["cuda"]) and c.cuda_device_count() > 0
    return False


def check(backend: str, op: str) -> str:
    """The backend argument, validated before a custom op is entered (so the error names it)."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(backend: str, device: torch.device, op: str) -> str:
    """Return "native" or "torch" for `op` on `device`.

    "auto" means native when built for the device (and trusted there, AUTO_NATIVE_DEVICES), torch otherwise; the environment
    variable PYANOM_BACKEND (native|torch) overrides "auto" but never an explicit choice.
    """
    if check(backend, op) == "auto":
        env = os.environ.get("PYANOM_BACKEND", "").strip().lower()
        if env in ("native", "torch"):
            backend = env
        elif env not in ("", "auto"):
            raise ValueError(f"PYANOM_BACKEND must be auto, native or torch, got {env!r}")
        else:
            auto_ok = device.type in AUTO_NATIVE_DEVICES
            return "native" if auto_ok and native_available(device) else "torch"
    if backend == "native" and not native_available(device):
        from pyanom._build import build_info

        info = build_info()
        why = info.get("native_error") or f"this build has backends {info['backends_compiled']}"
        raise RuntimeError(f"{op}: no native kernel for device {device} ({why})")
    return backend
