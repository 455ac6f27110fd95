"""SA-PatchCore vs PatchCore inference on MVTec AD bottle (default backbone, 256 px, coreset
ratio 0.01 for all): predict() on 32 decoded images, in one run. Target (issue 17): sa_patchcore
within 1.2x of patchcore at batch 32 (paper: 25.0 vs 24.0 ms).

    OMP_NUM_THREADS=2 python3 -P -m pytest benchmarks/bench_sa_patchcore.py --benchmark-columns=min,median,max
"""

from __future__ import annotations

import pytest
import torch

import pyanom
from pyanom.data import open_dataset

DETECTORS = {"patchcore": ("patchcore", {}), "sa_patchcore channel": ("sa_patchcore", {"attention": "channel"}),
             "sa_patchcore spatial": ("sa_patchcore", {"attention": "spatial"})}


@pytest.fixture(scope="module")
def bottle(shared_data):
    root = shared_data / "mvtec" / "bottle"
    test = open_dataset(root, "test")
    return open_dataset(root, "train").normal(), torch.stack([test[i]["image"] for i in range(32)])


@pytest.mark.parametrize("label", list(DETECTORS))
def test_predict_batch32(benchmark, bottle, label):
    train, images = bottle
    name, config = DETECTORS[label]
    det = pyanom.create(name, coreset_ratio=0.01, **config).fit(train, progress=False)
    benchmark.group = "predict, batch 32"
    benchmark.pedantic(det.predict, args=(images,), kwargs={"batch_size": 32}, rounds=5, warmup_rounds=1)
