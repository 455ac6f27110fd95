"""A memory-bank detector's fit on a Ray cluster: each shard's patch features are extracted and
reduced to the shard's coreset picks on a worker (the backbone loaded once per worker process),
the driver takes the final coreset over the picks, in shard order."""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache, partial

import numpy as np
import torch
from tqdm.auto import tqdm

from pyanom.distributed.cluster import connect
from pyanom.memory import MemoryBankPlan, merge_picks, shard_picks


@lru_cache(maxsize=4)
def _worker_detector(name: str, config_json: str):
    """One detector (and so one backbone) per worker process and configuration."""
    import pyanom

    return pyanom.create(name, **json.loads(config_json))


def _shard_rows(name: str, config_json: str, paths: list[str], keep: str) -> np.ndarray:
    """A shard's patch features reduced to its coreset picks (keep="picks") or all of them."""
    from pyanom.data import ImageList

    torch.set_num_threads(1)  # one shard per CPU the cluster gives the task
    det = _worker_detector(name, config_json)
    cfg = det.config
    images = ImageList(paths, image_size=cfg.image_size, validate=False)
    rows = torch.cat([r for _, r in det.memory_features(images)])
    if keep == "picks":
        rows = shard_picks(rows, cfg.coreset_ratio, oversample=cfg.shard_oversample,
                           projection_dim=cfg.projection_dim, seed=cfg.seed)
    return rows.numpy()


def use_ray(det, address: str | None = None, *, num_cpus: int | None = None):
    """Make ``det`` (a pyanom.memory.MemoryBankDetector) fit its memory bank on a Ray cluster: the
    shards' features and coreset picks on the workers, the final coreset here; the same bank as
    the same plan on one machine. Returns det."""
    det.bank_builder = partial(fit_memory_bank_on_ray, address=address, num_cpus=num_cpus)
    return det


def fit_memory_bank_on_ray(det, train, progress: bool = True, *, address: str | None = None,
                           num_cpus: int | None = None, rows=None, n_images=None):
    """Build the memory bank of ``det`` (a pyanom.memory.MemoryBankDetector) from the images of
    ``train`` on a Ray cluster; returns (bank, plan).

    Sharded plans send each shard to a worker and keep its picks; an exact plan (the whole bank
    fits the budget) only spreads the feature extraction and selects once on the driver.
    """
    ray = connect(address, num_cpus=num_cpus)
    cfg = det.config
    paths = [str(s.image) for s in train.samples]
    config = dataclasses.asdict(cfg)
    config_json = json.dumps(config, sort_keys=True)
    probe = _worker_detector(det.name, config_json)  # the bytes a shard takes decide the plan
    from pyanom.data import ImageList

    _, rows = next(probe.memory_features(ImageList(paths[:1], image_size=cfg.image_size, validate=False)))
    plan = MemoryBankPlan(n_images=len(paths), bytes_per_image=rows.numel() * rows.element_size(),
                          mode=cfg.coreset_mode, budget_bytes=cfg.memory_budget_mb << 20,
                          shard_images=cfg.shard_images)
    units = plan.shards if not plan.exact else _even_ranges(len(paths), 4 * _cluster_cpus(ray))
    keep = "features" if plan.exact else "picks"
    task = ray.remote(num_cpus=1, max_retries=3)(_shard_rows)
    pending = {task.remote(det.name, config_json, paths[u.start:u.stop], keep): i for i, u in enumerate(units)}
    results: dict[int, np.ndarray] = {}
    with tqdm(total=len(units), desc=f"{det.name}: shards on ray ({plan.mode})", disable=not progress) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
            bar.update()
    parts = [torch.from_numpy(np.array(results[i])) for i in range(len(units))]  # writable copies
    if plan.exact:
        bank = torch.cat(parts)
        return merge_picks([bank], len(bank), cfg.coreset_ratio, projection_dim=cfg.projection_dim,
                           seed=cfg.seed), plan
    total_rows = len(paths) * (rows.shape[0])
    return merge_picks(parts, total_rows, cfg.coreset_ratio, projection_dim=cfg.projection_dim, seed=cfg.seed), plan


def _cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _even_ranges(n: int, parts: int) -> list[range]:
    size = max(1, math.ceil(n / parts))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]
