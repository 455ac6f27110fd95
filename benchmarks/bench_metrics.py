"""Pixel metrics at evaluation scale: pyanom's sort-and-count pixel AUROC and pixel AP against
sklearn's roc_auc_score and average_precision_score, on the same inputs in one run.

The masks are MVTec AD bottle's 83 test masks at 256 px (5.4 M pixels, 5.8 % of them defect);
the maps are seeded noise with the defect pixels raised, so the scores overlap as a real map's do.

    PYANOM_DATA=../shared/data python3 -P -m pytest benchmarks/bench_metrics.py --benchmark-columns=min,median,rounds

As a script it alternates the implementations within every round and prints min-of-rounds ratios:

    PYANOM_DATA=../shared/data python3 -P benchmarks/bench_metrics.py [rounds]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pyanom import metrics
from pyanom.data import open_dataset

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
IMPLS = {
    ("pixel_auroc", "pyanom"): metrics.pixel_auroc,
    ("pixel_auroc", "sklearn"): lambda m, a: roc_auc_score(m.ravel(), a.ravel()),
    ("pixel_ap", "pyanom"): metrics.pixel_ap,
    ("pixel_ap", "sklearn"): lambda m, a: average_precision_score(m.ravel(), a.ravel()),
}


def make_inputs(root: Path) -> tuple[np.ndarray, np.ndarray]:
    masks = open_dataset(root / "mvtec" / "bottle", "test", image_size=256).masks().numpy().astype(bool)
    maps = np.random.default_rng(0).random(masks.shape, dtype=np.float32) + 0.5 * masks
    return masks, maps


@pytest.fixture(scope="module")
def inputs(shared_data):
    return make_inputs(shared_data)


@pytest.mark.parametrize("metric,impl", list(IMPLS), ids=lambda x: x)
def test_pixel_metric(benchmark, inputs, metric, impl):
    benchmark.group = f"{metric}, {inputs[0].size} pixels"
    value = benchmark.pedantic(IMPLS[metric, impl], args=inputs, rounds=3, warmup_rounds=1, iterations=1)
    assert value == pytest.approx(IMPLS[metric, "sklearn"](*inputs), abs=1e-9)


def interleaved(rounds: int) -> None:
    masks, maps = make_inputs(DATA)
    print(f"{masks.size} pixels, {masks.mean():.1%} defect")
    print("| metric | pyanom s | sklearn s | sklearn / pyanom |")
    print("|---|---|---|---|")
    for metric in ("pixel_auroc", "pixel_ap"):
        best = {}
        for _ in range(rounds):
            for impl in ("pyanom", "sklearn"):
                start = time.perf_counter()
                IMPLS[metric, impl](masks, maps)
                best[impl] = min(best.get(impl, float("inf")), time.perf_counter() - start)
        print(f"| {metric} | {best['pyanom']:.3f} | {best['sklearn']:.3f} | {best['sklearn'] / best['pyanom']:.1f} |",
              flush=True)


if __name__ == "__main__":
    interleaved(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
