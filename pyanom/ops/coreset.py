"""k-center greedy coreset selection: the memory-bank subsampling step of PatchCore."""

from __future__ import annotations

import torch

from pyanom.ops import _backend, _checks, reference


def greedy_coreset(features: torch.Tensor, k: int, *, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Indices [min(k, N)] (int64, selection order) of a k-center greedy coreset of the rows of features.

    The rows are first projected to `projection_dim` random directions (skipped when
    D <= projection_dim), which keeps distances nearly intact while making each greedy step
    cheaper; then, starting from `start` (drawn from `seed` when None), the point farthest
    from the chosen set is added until k are chosen, ties going to the lowest index. The
    native kernel prunes with the triangle inequality yet returns exactly the reference's
    selection. k >= N returns all N indices in order.
    """
    features = _checks.tensor("features", features, ndim=2)
    n, d = features.shape
    # Past N (all rows) and past D (no projection) every value selects alike: clamped, so that
    # any int reaches the op (whose arguments are int64).
    k = min(_checks.integer("k", k, low=1), n)
    projection_dim = min(_checks.integer("projection_dim", projection_dim, low=1), d)
    seed = _checks.integer("seed", seed, low=-_checks.INT64_MAX - 1, high=_checks.INT64_MAX)
    start = -1 if start is None else _checks.integer("start", start, low=0, high=n - 1)
    return torch.ops.pyanom.coreset(features, k, projection_dim, seed, start, backend)


def _twin(features, k, projection_dim, seed, start):
    return reference.greedy_coreset(features, k, projection_dim=projection_dim, seed=seed,
                                    start=None if start < 0 else start)


def _native(features, k, projection_dim, seed, start):
    """The twin's projection and first center, then the pruned kernel for the greedy loop."""
    n = features.shape[0]
    if k >= n:
        return torch.arange(n, dtype=torch.int64, device=features.device)
    first = reference.coreset_start(n, seed) if start < 0 else start
    points = reference.random_projection(features, projection_dim, seed).contiguous()
    d = points.shape[1]
    out = torch.empty(k, dtype=torch.int64, device=points.device)
    scratch = _backend.workspace("coreset", points, n=n, d=d, k=k)
    _backend.launch("coreset", points, points=points.data_ptr(), n=n, d=d, k=k, start=first,
                    out=out.data_ptr(), workspace=scratch.data_ptr(), workspace_bytes=scratch.numel())
    return out


_backend.define(
    "coreset", "greedy_coreset",
    "(Tensor features, int k, int projection_dim, int seed, int start, str backend) -> Tensor",
    twin=_twin, native=_native,
    fake=lambda features, k, projection_dim, seed, start, backend: features.new_empty(
        torch.sym_min(k, features.shape[0]), dtype=torch.int64))
