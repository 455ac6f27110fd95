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

from pyanom._build import native_module
from pyanom.ops import _backend, _checks

DEFAULT_CHUNK_SIZE = 1 << 20
"""Default scratch bound in elements (4 MiB of float32)."""

_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, k: int, *, chunk_size: int | None = None,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest Euclidean distances from each query to the bank, and their bank indices.

    Args:
        queries: [Q, D] float32 or float64 (any strides).
        bank: [N, D], same dtype and device as queries (e.g. a PatchCore memory bank).
        k: neighbours per query, 1 <= k <= N.
        chunk_size: the most elements (of the inputs' dtype) of scratch one call holds at once,
            besides O(Q * k + Q + N) bookkeeping; default DEFAULT_CHUNK_SIZE. The torch backend
            spends it on one query-block x bank-block distance tile, the native CPU kernel on a
            packed block of bank rows plus small per-thread tiles, the CUDA kernel (whose tiles
            live in shared memory) on partial top-k lists when it splits the bank between
            blocks. Values below one minimal tile are rounded up to it. The result does not
            depend on it (native: bit for bit).
        backend: "auto" (native when built for the device, else torch; env PYANOM_BACKEND
            overrides), "native" or "torch".

    Returns:
        (distances [Q, k] ascending, inputs' dtype; indices [Q, k] int64), ties to the lowest
        index. Differentiable in queries and bank through the distances.
    """
    queries = _checks.tensor("queries", queries, ndim=2)
    bank = _checks.tensor("bank", bank, ndim=2)
    _checks.same_device(queries=queries, bank=bank)
    _checks.same_dtype(queries=queries, bank=bank)
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries and bank must have the same number of features: queries is "
                         f"{tuple(queries.shape)}, bank is {tuple(bank.shape)}")
    k = _checks.integer("k", k, low=1, high=bank.shape[0])
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else _checks.integer("chunk_size", chunk_size, low=1)
    _backend.check(backend, "knn_scores")
    return _knn_scores_op(queries, bank, k, chunk, backend)


@torch.library.custom_op("pyanom::knn_scores", mutates_args=())
def _knn_scores_op(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Resolved here, not in knn_scores, so that torch.compile never traces the build queries.
    if _backend.resolve(backend, queries.device, "knn_scores") == "native":
        return _native_knn(queries.contiguous(), bank.contiguous(), k, chunk_size)
    return _torch_knn(queries, bank, k, chunk_size)


@_knn_scores_op.register_fake
def _(queries, bank, k, chunk_size, backend):
    rows = queries.shape[0]
    return queries.new_empty(rows, k), queries.new_empty(rows, k, dtype=torch.int64)


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


_knn_scores_op.register_autograd(_backward, setup_context=_setup_context)


def _native_knn(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int):
    c = native_module()
    (q, d), n = queries.shape, bank.shape[0]
    dtype = _DTYPE_NAMES[queries.dtype]
    distances = torch.empty(q, k, dtype=queries.dtype, device=queries.device)
    indices = torch.empty(q, k, dtype=torch.int64, device=queries.device)
    pointers = (queries.data_ptr(), bank.data_ptr(), distances.data_ptr(), indices.data_ptr())
    if queries.device.type == "cpu":
        nbytes = c.knn_scores_workspace_bytes(q, n, d, k, dtype, chunk_size)
        workspace = torch.empty(nbytes, dtype=torch.uint8)
        c.knn_scores_cpu(*pointers, workspace.data_ptr(), nbytes, q, n, d, k, dtype, chunk_size)
        return distances, indices
    with torch.cuda.device(queries.device):  # the kernel sizes its grid for the current device
        nbytes = c.knn_scores_cuda_workspace_bytes(q, n, d, k, dtype, chunk_size)
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=queries.device)
        c.knn_scores_cuda(*pointers, workspace.data_ptr(), nbytes, q, n, d, k, dtype, chunk_size,
                          torch.cuda.current_stream().cuda_stream)
    return distances, indices


def _torch_knn(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int):
    """Tiles of at most chunk_size values of ||b||^2 - 2 q.b (one addmm each) reduced with
    topk; ||q||^2, constant along a row, is added to the survivors only."""
    q, n = queries.shape[0], bank.shape[0]
    cols = min(n, max(1, chunk_size // min(q, 128)))
    rows = min(q, max(1, chunk_size // cols))
    bank_sq = bank.pow(2).sum(1)
    query_sq = queries.pow(2).sum(1, keepdim=True)
    tile = queries.new_empty(rows * cols)
    distances = queries.new_empty(q, k)
    indices = torch.empty(q, k, dtype=torch.int64, device=queries.device)
    for r0 in range(0, q, rows):
        block, block_sq = queries[r0:r0 + rows], query_sq[r0:r0 + rows]
        best_d = best_i = None
        for c0 in range(0, n, cols):
            part = tile[:block.shape[0] * min(cols, n - c0)].view(block.shape[0], -1)
            torch.addmm(bank_sq[c0:c0 + cols], block, bank[c0:c0 + cols].T, alpha=-2, out=part)
            cand_d, cand_i = _smallest(part, min(k, part.shape[1]))
            cand_d, cand_i = _in_order(cand_d.add_(block_sq).clamp_min_(0), cand_i + c0)
            if best_d is None:
                best_d, best_i = cand_d, cand_i
            else:  # both in (distance, index) order, every kept index below every candidate's
                best_d, order = torch.cat([best_d, cand_d], 1).sort(dim=1, stable=True)
                best_i = torch.cat([best_i, cand_i], 1).gather(1, order)
                best_d, best_i = best_d[:, :k], best_i[:, :k]
        distances[r0:r0 + rows] = best_d.sqrt()
        indices[r0:r0 + rows] = best_i
    return distances, indices


def _smallest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest of each row and their columns, in no particular order. Where the k-th
    and (k+1)-th tie, topk's choice among them is arbitrary: those rows are sorted stably."""
    if k == values.shape[1]:
        return values.clone(), torch.arange(k, device=values.device).expand_as(values).clone()
    top, cols = values.topk(k + 1, dim=1, largest=False, sorted=True)
    boundary_tie = top[:, k - 1] == top[:, k]
    top, cols = top[:, :k], cols[:, :k]
    if bool(boundary_tie.any()):
        tied = boundary_tie.nonzero().squeeze(1)
        v, c = values[tied].sort(dim=1, stable=True)
        top[tied], cols[tied] = v[:, :k], c[:, :k]
    return top, cols


def _in_order(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by (value, index): by index, then stably by value."""
    index, order = index.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, stable=True)
    return values, index.gather(1, order)
