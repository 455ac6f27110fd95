"""Memory banks of normal features (PatchCore's): the interface memory-bank detectors implement
(`MemoryBankDetector`, `MemoryBankSettings`), and the bank's greedy k-center coreset, taken over
all features at once (exact) or shard by shard in bounded memory (sharded).

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

import abc
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
from tqdm.auto import tqdm

from pyanom.detector import Detector
from pyanom.ops import greedy_coreset, knn_scores
from pyanom.settings import Settings, setting

MODES = ("exact", "sharded", "auto")


@dataclass
class MemoryBankSettings(Settings):
    """How a memory bank is built: the settings every memory-bank detector shares."""

    coreset_ratio: float = setting(0.1, "share of the training patch features kept in the memory bank",
                                   bounds=(0, 1), open="low")
    projection_dim: int = setting(128, "dimension of the random projection the coreset selection runs on",
                                  bounds=(1, None))
    seed: int = setting(0, "seed of the coreset selection's random projection")
    coreset_mode: str = setting("auto", "exact: one coreset over all features; sharded: bounded memory; "
                                "auto: exact while the features fit memory_budget_mb", choices=MODES)
    memory_budget_mb: int = setting(2048, "memory for patch features before the coreset (MB): auto switches "
                                    "to sharded above it", bounds=(1, None))
    shard_images: Optional[int] = setting(None, "images per shard when sharded; null: as many as fill half "
                                          "of memory_budget_mb", bounds=(1, None))
    shard_oversample: float = setting(2.0, "each shard keeps this many times its share of the final coreset",
                                      bounds=(1, None))

__all__ = ["MODES", "MemoryBankDetector", "MemoryBankSettings", "MemoryBankPlan", "build_locally", "covering_radius", "merge_picks", "shard_picks", "build_memory_bank"]


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


def build_locally(det: "MemoryBankDetector", train, progress: bool, *, rows=None,
                  n_images: int | None = None) -> tuple[torch.Tensor, MemoryBankPlan]:
    """A detector's memory bank built in this process by its config's plan (exact or sharded)."""
    cfg = det.config
    return build_memory_bank(det.memory_features(train, progress) if rows is None else rows,
                             n_images=len(train) if n_images is None else n_images, ratio=cfg.coreset_ratio,
                             projection_dim=cfg.projection_dim, seed=cfg.seed, mode=cfg.coreset_mode,
                             budget_bytes=cfg.memory_budget_mb << 20, shard_images=cfg.shard_images,
                             oversample=cfg.shard_oversample, progress=progress, desc=f"{det.name}: coreset")


BankBuilder = Callable[..., "tuple[torch.Tensor, MemoryBankPlan]"]


class MemoryBankDetector(Detector):
    """A detector whose learned state is a memory bank of normal feature rows, searched by kNN
    (PatchCore and its kin). The core builds, shards and distributes the bank through this
    interface, never through a plugin's own attributes: a plugin implements `memory_features`
    (the rows its bank is chosen from, image by image), fits with `fit_memory_bank` and scores
    with `nearest`. Its config is a MemoryBankSettings.

    `memory_bank` is a tensor [N, D] here, a bank held elsewhere (`attach_memory_bank`: e.g. by
    Ray actors, pyanom.distributed.shard_memory_bank) or None before fitting.
    """

    MEMORY_BANK = "memory_bank"  # the bank's tensor in the model file

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.memory_bank = None
        self.memory_plan: MemoryBankPlan | None = None  # how the last fit built the bank
        self.bank_builder: BankBuilder = build_locally  # pyanom.distributed.use_ray sets one that uses Ray

    @abc.abstractmethod
    def memory_features(self, images, progress: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """(number of images, their feature rows [n * rows, D]) batch by batch, in image order,
        for images given as a data set (InspectionSet or ImageList)."""

    def fit_memory_bank(self, train, progress: bool, *, rows=None, n_images: int | None = None) -> None:
        """Build the bank from ``train`` by the config's plan with `bank_builder`; ``rows`` and
        ``n_images`` replace memory_features(train) where a plugin cuts images otherwise (tiles),
        which only the local builder takes."""
        if rows is not None and self.bank_builder is not build_locally:
            raise ValueError(f"{self.name}: this fit (e.g. tiling) runs on one machine only; fit without Ray")
        self.memory_bank, self.memory_plan = self.bank_builder(self, train, progress, rows=rows, n_images=n_images)

    def attach_memory_bank(self, bank) -> "MemoryBankDetector":
        """Use ``bank`` (a ShardedMemoryBank, e.g. one a model file's bank was read into by actors)."""
        self.memory_bank = bank
        return self

    def nearest(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances [Q, k] and indices of the k nearest memory entries, wherever the bank is held."""
        if self.memory_bank is None:
            raise RuntimeError(f"{self.name}: not fitted")
        if isinstance(self.memory_bank, torch.Tensor):
            return knn_scores(queries, self.memory_bank, k)
        return self.memory_bank.knn(queries, k)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        bank = self.memory_bank  # one held by actors is gathered here to be saved
        return {self.MEMORY_BANK: bank if isinstance(bank, torch.Tensor) else bank.gather()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        bank = tensors.get(self.MEMORY_BANK)  # absent where actors read it (pyanom.distributed.load_sharded)
        self.memory_bank = None if bank is None else bank.to(self.device, torch.float32).contiguous()
