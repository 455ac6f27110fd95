"""A memory bank too large for one process, held in parts by a set of Ray actors: each answers
the exact k nearest entries of its part, the caller merges them into the exact k nearest of all.
A memory-bank detector scores against it as against a bank held here (shard_memory_bank for a
fitted detector, load_sharded for a model file)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pyanom.distributed.cluster import connect, require_ray


class _BankPart:
    """One actor's rows of the memory bank, from index offset on: given, or read from a model
    file's row range (so that no process, the caller included, ever holds the whole bank)."""

    def __init__(self, offset: int, rows: np.ndarray | None = None, archive: str | None = None,
                 name: str | None = None, stop: int | None = None):
        if archive is not None:
            from safetensors import safe_open

            with safe_open(archive, framework="pt") as f:
                rows = f.get_slice(name)[offset:stop].float().contiguous()
        else:
            rows = torch.from_numpy(np.array(rows))  # the object store's view is read-only
        self.rows, self.offset = rows, offset

    def knn(self, queries: np.ndarray, k: int):
        from pyanom.ops import knn_scores

        dist, index = knn_scores(torch.from_numpy(np.array(queries)), self.rows, min(k, len(self.rows)))
        return dist.numpy(), (index + self.offset).numpy()

    def held(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> np.ndarray:
        return self.rows[torch.from_numpy(index - self.offset)].numpy()


class ShardedMemoryBank:
    """A bank [N, D] split row-wise over ``parts`` actors; ``knn(queries, k)`` equals
    pyanom.ops.knn_scores(queries, bank, k): the same entries and distances (to float32
    rounding: each part's distance GEMM is blocked for its own shape; equal distances are ordered
    by index), found in parallel without any one process holding the whole bank. Indexing with a
    tensor of entry indices fetches those rows (what PatchCore's reweighting reads). It can be
    passed to Ray tasks, which then query the same actors. Built from a tensor, the parts also
    stay in Ray's object store (an actor that dies is restarted from them); from_archive reads
    them from the file instead."""

    def __init__(self, bank: torch.Tensor, parts: int, *, address: str | None = None, num_cpus: int | None = None):
        ray = connect(address, num_cpus=num_cpus)
        bounds = _bounds(len(bank), parts)
        self._start(ray, len(bank), bank.shape[1], bounds,
                    [dict(rows=bank[a:b].detach().cpu().float().numpy()) for a, b in zip(bounds[:-1], bounds[1:])])

    @classmethod
    def from_archive(cls, path: str | Path, name: str, parts: int, *, address: str | None = None,
                     num_cpus: int | None = None) -> "ShardedMemoryBank":
        """The tensor ``name`` of a model file, each actor reading only its own rows (on several
        nodes, the file must be on storage that every node mounts at the same path)."""
        from safetensors import safe_open

        ray = connect(address, num_cpus=num_cpus)
        path = str(Path(path).resolve())
        with safe_open(path, framework="pt") as f:
            n, dim = f.get_slice(name).get_shape()
        bounds = _bounds(n, parts)
        bank = cls.__new__(cls)
        bank._start(ray, n, dim, bounds, [dict(archive=path, name=name, stop=int(b)) for b in bounds[1:]])
        return bank

    def _start(self, ray, size: int, dim: int, bounds: np.ndarray, sources: list[dict]) -> None:
        # num_cpus=0: an actor only answers queries, it must not hold a CPU that fits or scores need.
        actor = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(_BankPart)
        self.size, self.dim, self.bounds = size, int(dim), bounds
        self.parts = [actor.remote(int(a), **src) for a, src in zip(bounds[:-1], sources)]
        held = sum(ray.get([p.held.remote() for p in self.parts]))  # a part that cannot load fails here
        if held != size:
            raise RuntimeError(f"the memory bank's actors hold {held} rows, expected {size}")

    def __len__(self) -> int:
        return self.size

    @property
    def shape(self) -> tuple[int, int]:
        return self.size, self.dim

    def knn(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest distances [Q, k] (ascending) and their bank indices [Q, k] (int64)."""
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be between 1 and the bank size {self.size}, got {k}")
        q = queries.detach().cpu().float().contiguous().numpy()
        answers = require_ray().get([part.knn.remote(q, k) for part in self.parts])
        dist = np.concatenate([d for d, _ in answers], axis=1)
        index = np.concatenate([i for _, i in answers], axis=1)
        order = np.lexsort((index, dist), axis=1)[:, :k]  # by distance, ties to the lower index
        return (torch.from_numpy(np.take_along_axis(dist, order, 1)).to(queries.device),
                torch.from_numpy(np.take_along_axis(index, order, 1)).to(queries.device))

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at ``index`` (an integer tensor of any shape) -> [*index.shape, D]."""
        flat = index.detach().cpu().reshape(-1).numpy().astype(np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() >= self.size):
            raise IndexError(f"memory bank index out of range 0..{self.size - 1}")
        owner = np.searchsorted(self.bounds, flat, side="right") - 1
        asked = {p: np.flatnonzero(owner == p) for p in np.unique(owner)}
        answers = require_ray().get([self.parts[p].take.remote(flat[at]) for p, at in asked.items()])
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        for at, rows in zip(asked.values(), answers):
            out[at] = rows
        return torch.from_numpy(out).reshape(*index.shape, self.dim).to(index.device)

    def gather(self) -> torch.Tensor:
        """The whole bank in this process (to save it): only where it fits."""
        return self[torch.arange(self.size)]


def shard_memory_bank(det, parts: int, *, address: str | None = None, num_cpus: int | None = None):
    """Hold the fitted bank of ``det`` (a pyanom.memory.MemoryBankDetector) in ``parts`` Ray actors
    and drop it here: scoring then merges their exact top-k, equal to this process's to float32
    rounding. Returns det."""
    if not isinstance(det.memory_bank, torch.Tensor):
        raise RuntimeError(f"{det.name}: fit or load the detector before sharding its memory bank")
    return det.attach_memory_bank(ShardedMemoryBank(det.memory_bank, parts, address=address, num_cpus=num_cpus))


def load_sharded(path: str | Path, parts: int | None = None, *, address: str | None = None,
                 num_cpus: int | None = None, device: str = "cpu"):
    """A memory-bank model file (patchcore, sa_patchcore) whose bank is read by ``parts`` actors,
    never by this process; ``parts`` defaults to as many as keep each within the model's
    memory_budget_mb. Scores equal those of pyanom.load(path) to float32 rounding."""
    import pyanom
    from safetensors import safe_open

    from pyanom.memory import MemoryBankDetector

    det = pyanom.load(path, device=device, skip=(MemoryBankDetector.MEMORY_BANK,))
    if not isinstance(det, MemoryBankDetector):
        raise ValueError(f"{path}: a {det.name} model has no memory bank to shard (memory-bank detectors such as "
                         "patchcore and sa_patchcore have)")
    if parts is None:
        with safe_open(str(path), framework="pt") as f:
            n, dim = f.get_slice(det.MEMORY_BANK).get_shape()
        parts = parts_for(n * dim * 4, det.config.memory_budget_mb << 20)
    return det.attach_memory_bank(ShardedMemoryBank.from_archive(path, det.MEMORY_BANK, parts, address=address,
                                                                 num_cpus=num_cpus))


def _bounds(n: int, parts: int) -> np.ndarray:
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return np.unique(np.linspace(0, n, min(parts, n) + 1).astype(int))


def parts_for(bank_bytes: int, budget_bytes: int) -> int:
    """Actors needed for each to hold at most ``budget_bytes`` of a ``bank_bytes`` bank."""
    return max(1, math.ceil(bank_bytes / max(1, budget_bytes)))
