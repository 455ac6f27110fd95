"""k nearest bank rows of every query (PatchCore's anomaly scores), without a Q x N matrix.

Both backends compute squared distances as ||q||^2 - 2 q.b + ||b||^2 (GEMM speed) one bounded
tile at a time and keep only each query's k best. The expansion loses relative precision when
a distance is tiny next to the norms (near-duplicate points): |d^2 - exact d^2| is typically
eps * sqrt(D) * (||q||^2 + ||b||^2) (the tests allow 2e-5 of that scale in float32), so
distances near 0 carry an absolute error of about its square root. The native kernels (CPU,
and CUDA on the current stream with exact fp32/fp64 FMA, no tensor cores) sum every dot
product and norm in one order, so a query equal to a bank row gets exactly 0 and duplicate
bank rows tie exactly.
"""

from __future__ import annotations

import torch

from pyanom.ops import _backend, _checks, reference

DEFAULT_CHUNK_SIZE = 1 << 20
"""Default scratch bound in elements (4 MiB of float32)."""


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, k: int, *, chunk_size: int | None = None,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest Euclidean distances from each query to the bank, and their bank indices.

    Args:
        queries: [Q, D] float32 or float64 (any strides).
        bank: [N, D], same dtype and device as queries (e.g. a PatchCore memory bank).
        k: neighbours per query, 1 <= k <= N.
        chunk_size: the most elements (of the inputs' dtype) of scratch one call holds at once,
            besides O(Q * k + Q + N) bookkeeping; default DEFAULT_CHUNK_SIZE. The torch backend
            (pyanom.ops.reference.knn_scores) spends it on one query-block x bank-block distance
            tile, the native CPU kernel on a packed block of bank rows plus small per-thread tiles, the CUDA kernel (whose tiles
            live in shared memory) on partial top-k lists when it splits the bank between
            blocks. Values below one minimal tile are rounded up to it. The result does not
            depend on it (native: bit for bit).
        backend: "auto" (native when built for the device, else torch; env PYANOM_BACKEND
            overrides), "native" or "torch".

    Returns:
        (distances [Q, k] ascending, inputs' dtype; indices [Q, k] int64), ties to the lowest
        index. Differentiable in queries and bank through the distances.
    """
    # NaN and Inf are rejected inside the op: the CPU kernel finds them while it computes the
    # norms, which spares two passes over the inputs (the whole bank, at every call).
    queries = _checks.tensor("queries", queries, ndim=2, finite=False)
    bank = _checks.tensor("bank", bank, ndim=2, finite=False)
    _checks.same_device(queries=queries, bank=bank)
    _checks.same_dtype(queries=queries, bank=bank)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries and bank must have the same number of features: queries is "
                         f"{tuple(queries.shape)}, bank is {tuple(bank.shape)}")
    k = _checks.integer("k", k, low=1, high=bank.shape[0])
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else _checks.integer("chunk_size", chunk_size, low=1,
                                                                           high=_checks.INT64_MAX)
    return torch.ops.pyanom.knn(queries, bank, k, chunk, backend)


def _setup_context(ctx, inputs, output):
    queries, bank = inputs[0], inputs[1]
    distances, indices = output
    ctx.save_for_backward(queries, bank, distances, indices)
    ctx.mark_non_differentiable(indices)


def _backward(ctx, grad_distances, grad_indices):
    """d||q - b|| / dq = (q - b) / ||q - b|| (0 at distance 0, as torch.cdist), one neighbour
    rank at a time so that no [Q, k, D] tensor is formed."""
    queries, bank, distances, indices = ctx.saved_tensors
    weight = torch.where(distances > 0, grad_distances / distances, torch.zeros_like(distances))
    grad_q = queries * weight.sum(1, keepdim=True) if ctx.needs_input_grad[0] else None
    grad_b = torch.zeros_like(bank) if ctx.needs_input_grad[1] else None
    for rank in range(indices.shape[1]):
        w = weight[:, rank:rank + 1]
        neighbours = bank[indices[:, rank]]
        if grad_q is not None:
            grad_q = grad_q - w * neighbours
        if grad_b is not None:
            grad_b.index_add_(0, indices[:, rank], w * (neighbours - queries))
    return grad_q, grad_b, None, None, None


def _native(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int):
    queries, bank = queries.contiguous(), bank.contiguous()
    if queries.device.type == "cuda":
        _checks.finite_values("queries", queries)
        _checks.finite_values("bank", bank)
    (q, d), n = queries.shape, bank.shape[0]
    distances = queries.new_empty(q, k)
    indices = torch.empty(q, k, dtype=torch.int64, device=queries.device)
    sizes = dict(q=q, n=n, d=d, k=k, chunk_size=chunk_size)
    scratch = _backend.workspace("knn", queries, **sizes)
    _backend.launch("knn", queries, queries=queries.data_ptr(), bank=bank.data_ptr(),
                    distances=distances.data_ptr(), indices=indices.data_ptr(),
                    workspace=scratch.data_ptr(), workspace_bytes=scratch.numel(), **sizes)
    return distances, indices


_backend.define(
    "knn", "knn_scores",
    "(Tensor queries, Tensor bank, int k, int chunk_size, str backend) -> (Tensor, Tensor)",
    twin=lambda queries, bank, k, chunk_size: reference.knn_scores(
        _checks.finite_values("queries", queries), _checks.finite_values("bank", bank), k, chunk_size),
    native=_native,
    fake=lambda queries, bank, k, chunk_size, backend: (
        queries.new_empty(queries.shape[0], k),
        queries.new_empty(queries.shape[0], k, dtype=torch.int64)),
    backward=_backward, setup_context=_setup_context)
