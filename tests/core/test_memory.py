"""Memory banks by shards: the exact path is today's single coreset, the sharded path is the
composable coreset it claims to be, and its memory does not grow with the number of images."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from pyanom.memory import MemoryBankPlan, build_memory_bank, covering_radius, merge_picks, shard_picks
from pyanom.ops import greedy_coreset

ROWS, DIM = 16, 24  # rows per image, feature width


def features(n_images: int, seed: int = 0, clusters: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_images * ROWS, DIM, generator=g)
    if clusters:  # clustered data, where a coreset's radius means something
        centres = 6 * torch.randn(clusters, DIM, generator=g)
        x = 0.5 * x + centres[torch.randint(clusters, (len(x),), generator=g)]
    return x


def batches(x: torch.Tensor, per_batch: int):
    for i in range(0, len(x) // ROWS, per_batch):
        rows = x[i * ROWS:(i + per_batch) * ROWS]
        yield len(rows) // ROWS, rows


def test_exact_is_one_coreset_over_every_row():
    x = features(20)
    bank, plan = build_memory_bank(batches(x, 3), n_images=20, ratio=0.1, projection_dim=8, seed=3,
                                   mode="auto", budget_bytes=x.numel() * 4)
    assert plan.exact
    k = math.ceil(0.1 * len(x))
    assert torch.equal(bank, x[greedy_coreset(x, k, projection_dim=8, seed=3)])


@pytest.mark.parametrize("per_batch, shard_images", [(3, 5), (8, 4), (1, 20), (7, 7)])
def test_sharded_is_the_union_of_shard_picks_reduced_once(per_batch, shard_images):
    x = features(23, seed=1)
    bank, plan = build_memory_bank(batches(x, per_batch), n_images=23, ratio=0.1, projection_dim=8, seed=2,
                                   mode="sharded", budget_bytes=1, shard_images=shard_images, oversample=2.0)
    assert not plan.exact and [len(s) for s in plan.shards][0] == min(shard_images, 23)
    picks = [shard_picks(x[s.start * ROWS:s.stop * ROWS], 0.1, oversample=2.0, projection_dim=8, seed=2)
             for s in plan.shards]
    assert torch.equal(bank, merge_picks(picks, len(x), 0.1, projection_dim=8, seed=2))
    assert len(bank) == math.ceil(0.1 * len(x))


def test_plan_auto_switches_at_the_budget():
    assert MemoryBankPlan(n_images=100, bytes_per_image=10, mode="auto", budget_bytes=1000).exact
    plan = MemoryBankPlan(n_images=101, bytes_per_image=10, mode="auto", budget_bytes=1000)
    assert not plan.exact and plan.shard_images == 50 and len(plan.shards) == 3
    assert MemoryBankPlan(n_images=5, bytes_per_image=10, mode="sharded", budget_bytes=10**9).mode == "sharded"
    with pytest.raises(ValueError, match="coreset_mode"):
        MemoryBankPlan(n_images=5, bytes_per_image=10, mode="fast", budget_bytes=10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sharded_covering_radius_within_the_stated_factor(seed):
    """Within 4x of the exact coreset's radius where each shard keeps at least k picks (module
    docstring); measured here on the projected features the selection runs on."""
    x = features(60, seed=seed, clusters=40)
    ratio, n_shards = 0.05, 4
    k = math.ceil(ratio * len(x))
    exact, _ = build_memory_bank(batches(x, 4), n_images=60, ratio=ratio, projection_dim=DIM, seed=seed,
                                 mode="exact", budget_bytes=1)
    sharded, _ = build_memory_bank(batches(x, 4), n_images=60, ratio=ratio, projection_dim=DIM, seed=seed,
                                   mode="sharded", budget_bytes=1, shard_images=60 // n_shards,
                                   oversample=n_shards)  # each shard keeps k picks
    r_exact, r_sharded = covering_radius(x, exact), covering_radius(x, sharded)
    print(f"seed {seed}: covering radius exact {r_exact:.3f}, sharded {r_sharded:.3f} "
          f"({r_sharded / r_exact:.2f}x), k {k}")
    assert r_sharded <= 4 * r_exact
    assert len(sharded) == len(exact) == k


PEAK = """
import sys, torch
from pyanom.memory import build_memory_bank
n, mode = int(sys.argv[1]), sys.argv[2]
def batches():  # 64 rows of 152 values per image, as Lite0 gives at 64 px; made on the fly
    g = torch.Generator().manual_seed(0)
    for i in range(0, n, 8):
        yield 8, torch.randn(8 * 64, 152, generator=g)
build_memory_bank(batches(), n_images=n, ratio=0.01, projection_dim=32, seed=0, mode=mode,
                  budget_bytes=8 << 20)
# VmHWM, the peak of this process's own memory: ru_maxrss would carry the parent's over fork + exec
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024)
"""


def _peak_mb(n: int, mode: str) -> float:
    """Peak RSS of a fresh process that builds a bank of n images (imports included: the same
    for every n, so differences between n are the bank's)."""
    out = subprocess.run([sys.executable, "-P", "-c", PEAK, str(n), mode], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return float(out.stdout.split()[-1])


def test_sharded_peak_memory_does_not_grow_with_the_number_of_images():
    """The bound: one shard (half the budget, 4 MB here) plus the picks (2 % of the features);
    the exact path holds every feature (39 KB per image)."""
    small, large = _peak_mb(200, "sharded"), _peak_mb(3000, "sharded")
    exact_small, exact_large = _peak_mb(200, "exact"), _peak_mb(3000, "exact")
    print(f"peak RSS MB: sharded {small:.1f} -> {large:.1f}, exact {exact_small:.1f} -> {exact_large:.1f}")
    assert exact_large - exact_small > 60  # the measurement sees a growing bank (109 MB more features)
    assert large - small < 12  # 2800 more images: only their 2 % of picks (2.2 MB) may add up
