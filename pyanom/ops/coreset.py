"""greedy_coreset: k-center greedy selection of representative rows (PatchCore's memory bank).

The native C++ kernel has not landed yet: every backend runs the PyTorch loop of
pyanom.ops.reference (exact, but one Python iteration per selected row).
"""

from __future__ import annotations

import torch

from pyanom.ops import _checks, reference


def greedy_coreset(features: torch.Tensor, k: int, *, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Indices [min(k, N)] (int64, selection order) of a k-center greedy coreset of features [N, D].

    Features are first projected to projection_dim random directions (skipped when D is not
    larger); the first center is drawn from seed unless `start` is given; ties go to the lowest
    index; k >= N returns all N.
    """
    _checks.tensor("features", features, ndim=2)
    k = _checks.integer("k", k, low=1)
    projection_dim = _checks.integer("projection_dim", projection_dim, low=1)
    seed = _checks.integer("seed", seed)
    if start is not None:
        start = _checks.integer("start", start, low=0, high=features.shape[0] - 1)
    if backend not in ("auto", "torch"):
        raise RuntimeError(f"greedy_coreset: backend {backend!r} is not available yet (only the torch loop)")
    return reference.greedy_coreset(features, k, projection_dim=projection_dim, seed=seed, start=start)
