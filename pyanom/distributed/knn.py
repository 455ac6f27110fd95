"""A memory bank too large for one process, held in parts by a set of Ray actors: each answers
the exact k nearest entries of its part, the caller merges them into the exact k nearest of all."""

from __future__ import annotations

import numpy as np
import torch

from pyanom.distributed import connect


class _BankPart:
    """One actor's rows of the memory bank, from index offset on."""

    def __init__(self, rows: np.ndarray, offset: int):
        self.rows, self.offset = torch.from_numpy(np.array(rows)), offset  # the object store's view is read-only

    def knn(self, queries: np.ndarray, k: int):
        from pyanom.ops import knn_scores

        dist, index = knn_scores(torch.from_numpy(np.array(queries)), self.rows, min(k, len(self.rows)))
        return dist.numpy(), (index + self.offset).numpy()


class ShardedMemoryBank:
    """``bank`` [N, D] split row-wise over ``parts`` actors; ``knn(queries, k)`` equals
    pyanom.ops.knn_scores(queries, bank, k): the same entries and distances (to float32
    rounding: each part's distance GEMM is blocked for its own shape; equal distances are ordered
    by index), found in parallel without any one process holding the whole bank."""

    def __init__(self, bank: torch.Tensor, parts: int, *, address: str | None = None, num_cpus: int | None = None):
        ray = connect(address, num_cpus=num_cpus)
        actor = ray.remote(num_cpus=0)(_BankPart)
        bounds = np.linspace(0, len(bank), parts + 1).astype(int)
        self._ray = ray
        self.size = len(bank)
        self.parts = [actor.remote(bank[a:b].numpy(), int(a)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def knn(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest distances [Q, k] (ascending) and their bank indices [Q, k] (int64)."""
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be between 1 and the bank size {self.size}, got {k}")
        q = queries.detach().cpu().float().contiguous().numpy()
        answers = self._ray.get([part.knn.remote(q, k) for part in self.parts])
        dist = np.concatenate([d for d, _ in answers], axis=1)
        index = np.concatenate([i for _, i in answers], axis=1)
        order = np.lexsort((index, dist), axis=1)[:, :k]  # by distance, ties to the lower index
        return (torch.from_numpy(np.take_along_axis(dist, order, 1)),
                torch.from_numpy(np.take_along_axis(index, order, 1)))
