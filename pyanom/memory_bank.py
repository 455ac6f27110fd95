"""A memory bank of normal patch features (PatchCore's): their greedy k-center coreset, taken
over all features at once (exact) or shard by shard in bounded memory (sharded).

Exact holds every training feature before the selection, as the paper does: about 0.6 MB per
image with Lite0 at 256 px, so 24 GB fill at some 30,000 images. Sharded reads the training set in
shards of a bounded number of images; each shard keeps its own greedy coreset, oversampled
(``oversample`` times its share of the final size), and the final coreset is taken over the union
of the shards' picks: a composable coreset for k-center (Malkomes et al., "Fast distributed
k-center clustering with outliers on massive data", NeurIPS 2015). Peak memory is one shard plus
the picks, whatever the number of images; shards are also the unit of work on a cluster
(pyanom.distributed).

The bound. Greedy k-center on any point set S reaches a covering radius of at most 2 OPT_k(P)
for every superset P of S (its k centres and the farthest point are pairwise at least that far
apart, and two of these k + 1 points share a cluster of P's optimal k centres). A shard keeping
k_s picks therefore covers its features within 2 OPT_{k_s}(P), the final selection covers the
union within 2 OPT_k(P), and every training feature lies within 2 OPT_{k_s} + 2 OPT_k of the
memory: within 4 OPT_k, hence within 4 times the exact coreset's radius, wherever each shard
keeps at least k picks (more shards, each keeping fewer picks, weaken the first term). The
radii are those of the randomly projected features the selection runs on.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from pyanom.ops import greedy_coreset, knn_scores

MODES = ("exact", "sharded", "auto")

__all__ = ["MODES", "MemoryBankPlan", "covering_radius", "merge_picks", "shard_picks", "build_memory_bank"]


class MemoryBankPlan:
    """How a memory bank is built: exact or sharded, and how many images a shard holds.

    ``auto`` is exact while all features fit ``budget_bytes``, sharded above; a sharded plan
    holds ``shard_images`` images a shard (default: as many as fill half the budget, leaving the
    other half to the picks)."""

    def __init__(self, *, n_images: int, bytes_per_image: int, mode: str = "auto", budget_bytes: int,
                 shard_images: int | None = None):
        if mode not in MODES:
            raise ValueError(f"coreset_mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.n_images = n_images
        self.bytes_per_image = bytes_per_image
        self.exact = mode == "exact" or (mode == "auto" and n_images * bytes_per_image <= budget_bytes)
        if self.exact:
            self.shard_images = n_images
        else:
            self.shard_images = shard_images or max(1, budget_bytes // 2 // max(1, bytes_per_image))
        self.mode = "exact" if self.exact else "sharded"

    @property
    def shards(self) -> list[range]:
        """Image index ranges, in order: the same on one machine and on a cluster."""
        return [range(i, min(i + self.shard_images, self.n_images))
                for i in range(0, self.n_images, self.shard_images)]

    def __repr__(self) -> str:
        return f"MemoryBankPlan({self.mode}, {len(self.shards)} shard(s) of <= {self.shard_images} images)"


def shard_picks(features: torch.Tensor, ratio: float, *, oversample: float, projection_dim: int,
                seed: int) -> torch.Tensor:
    """The rows of one shard's greedy coreset: ceil(ratio * oversample * rows) of them (all rows
    at most), as a new tensor, so the shard's buffer can be reused."""
    k = min(len(features), max(1, math.ceil(ratio * oversample * len(features))))
    return features[greedy_coreset(features, k, projection_dim=projection_dim, seed=seed)]


def merge_picks(picks: list[torch.Tensor], total_rows: int, ratio: float, *, projection_dim: int,
                seed: int) -> torch.Tensor:
    """The final memory bank: ceil(ratio * total_rows) rows chosen greedily from the union of
    the shards' picks (in shard order, so the result does not depend on where shards ran)."""
    union = torch.cat(picks)
    k = min(len(union), max(1, math.ceil(ratio * total_rows)))
    return union[greedy_coreset(union, k, projection_dim=projection_dim, seed=seed)].contiguous()


def build_memory_bank(batches: Iterable[tuple[int, torch.Tensor]], *, n_images: int, ratio: float,
                      projection_dim: int, seed: int, mode: str = "auto", budget_bytes: int,
                      shard_images: int | None = None, oversample: float = 2.0, progress: bool = False,
                      desc: str = "coreset") -> tuple[torch.Tensor, MemoryBankPlan]:
    """The memory bank from ``batches`` of (number of images, their feature rows [n * rows, D]),
    which arrive in image order, and the plan that built it.

    Exact mode equals one greedy_coreset over every row (the paper's); sharded mode never holds
    more than one shard of rows plus the picks.
    """
    stream = iter(batches)
    try:
        first = next(stream)
    except StopIteration:
        raise ValueError("no training images to build a memory bank from") from None
    rows_per_image, dim = first[1].shape[0] // first[0], first[1].shape[1]
    plan = MemoryBankPlan(n_images=n_images, bytes_per_image=rows_per_image * dim * first[1].element_size(),
                          mode=mode, budget_bytes=budget_bytes, shard_images=shard_images)
    picks, total_rows = [], n_images * rows_per_image
    bar = tqdm(total=len(plan.shards), desc=f"{desc} ({plan.mode})", disable=not progress or plan.exact)
    for rows in _shards(_chain(first, stream), plan, rows_per_image):
        if plan.exact:
            k = max(1, math.ceil(ratio * len(rows)))
            with tqdm(total=1, desc=f"{desc} {k} of {len(rows)}", disable=not progress) as one:
                bank = rows[greedy_coreset(rows, k, projection_dim=projection_dim, seed=seed)].contiguous()
                one.update()
            return bank, plan
        picks.append(shard_picks(rows, ratio, oversample=oversample, projection_dim=projection_dim, seed=seed))
        bar.update()
    bar.close()
    return merge_picks(picks, total_rows, ratio, projection_dim=projection_dim, seed=seed), plan


def covering_radius(features: torch.Tensor, bank: torch.Tensor) -> float:
    """The largest distance from any feature to its nearest memory entry: what a coreset bounds."""
    return float(knn_scores(features, bank, 1)[0].max())


def _chain(first, rest) -> Iterator[tuple[int, torch.Tensor]]:
    yield first
    yield from rest


def _shards(batches: Iterator[tuple[int, torch.Tensor]], plan: MemoryBankPlan,
            rows_per_image: int) -> Iterator[torch.Tensor]:
    """Cut the batch stream at the plan's shard boundaries into one reused, preallocated buffer."""
    buffer, filled, shard_rows = None, 0, [len(s) * rows_per_image for s in plan.shards]
    shard = 0
    for _, rows in batches:
        while len(rows):
            if buffer is None:
                buffer = rows.new_empty(max(shard_rows), rows.shape[1])
            take = min(len(rows), shard_rows[shard] - filled)
            buffer[filled:filled + take] = rows[:take]
            filled, rows = filled + take, rows[take:]
            if filled == shard_rows[shard]:
                yield buffer[:filled]
                shard, filled = shard + 1, 0
    if shard != len(shard_rows):
        raise ValueError(f"expected {plan.n_images} images of features, got fewer")
