"""What detectors that train networks share: seeded construction and saving a network's
tensors under a name inside one archive (pyanom.io: safetensors, never pickle)."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

Built = TypeVar("Built")


def seeded(build: Callable[[], Built], seed: int) -> Built:
    """build() with the global torch RNG seeded, so weight initialisation follows `seed`, leaving
    the caller's global RNG state (CPU; CUDA is not touched) as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as tensors named prefix.<key>."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load the tensors named prefix.* into module; a missing or unexpected one is an error."""
    own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(own)
    except RuntimeError as exc:
        raise ValueError(f"{prefix}: saved tensors do not fit the network built from the config: {exc}") from exc
