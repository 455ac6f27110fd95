"""k-center greedy coreset selection: the memory-bank subsampling step of PatchCore."""

from __future__ import annotations

import torch

from pyanom._build import native_module
from pyanom.ops import _backend, _checks, reference

_INT64 = (-(2**63), 2**63 - 1)  # seeds cross into the custom op as int64


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
    n = features.shape[0]
    k = _checks.integer("k", k, low=1)
    projection_dim = _checks.integer("projection_dim", projection_dim, low=1)
    seed = _checks.integer("seed", seed, low=_INT64[0], high=_INT64[1])
    start = -1 if start is None else _checks.integer("start", start, low=0, high=n - 1)
    _backend.check(backend, "greedy_coreset")
    return torch.ops.pyanom.greedy_coreset(features, k, projection_dim, seed, start, backend)


@torch.library.custom_op("pyanom::greedy_coreset", mutates_args=())
def _greedy_coreset(features: torch.Tensor, k: int, projection_dim: int, seed: int, start: int,
                    backend: str) -> torch.Tensor:
    # The backend is resolved here, at run time, so compiled graphs honour PYANOM_BACKEND.
    which = _backend.resolve(backend, features.device, "greedy_coreset")
    n = features.shape[0]
    if k >= n:
        return torch.arange(n, dtype=torch.int64, device=features.device)
    first = reference.coreset_start(n, seed) if start < 0 else start
    points = reference.random_projection(features, projection_dim, seed)
    if which == "torch":
        return reference.greedy_select(points, k, first)
    points = points.contiguous()
    c = native_module()
    dtype = str(points.dtype).replace("torch.", "")
    out = torch.empty(k, dtype=torch.int64, device=points.device)
    if points.device.type == "cuda":
        with torch.cuda.device(points.device):  # the kernel sizes its grid for the current device
            size = c.greedy_coreset_cuda_workspace_bytes(n, points.shape[1], k, dtype)
            workspace = torch.empty(size, dtype=torch.uint8, device=points.device)
            c.greedy_coreset_cuda(points.data_ptr(), n, points.shape[1], k, first, out.data_ptr(),
                                  workspace.data_ptr(), size, dtype, torch.cuda.current_stream().cuda_stream)
    else:
        size = c.greedy_coreset_workspace_bytes(n, points.shape[1], k, dtype)
        workspace = torch.empty(size, dtype=torch.uint8)
        c.greedy_coreset_cpu(points.data_ptr(), n, points.shape[1], k, first, out.data_ptr(),
                             workspace.data_ptr(), size, dtype)
    return out


@_greedy_coreset.register_fake
def _(features, k, projection_dim, seed, start, backend):
    return features.new_empty(torch.sym_min(k, features.shape[0]), dtype=torch.int64)
