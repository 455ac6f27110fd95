"""PatchCore on MVTec AD bottle (default backbone, 256 px): fit time, predict latency, peak RSS.

    python3 -P -m pytest benchmarks/bench_patchcore.py --benchmark-columns=min,median,max -s
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import pyanom
from pyanom.data import open_dataset

PEAK_RSS = """
import json, resource, sys, time
import pyanom
from pyanom.data import open_dataset
det = pyanom.create(sys.argv[2], coreset_ratio=float(sys.argv[3]))
start = time.perf_counter()
det.fit(open_dataset(sys.argv[1], "train").normal(), progress=False)
print(json.dumps({"fit_s": time.perf_counter() - start,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


@pytest.fixture(scope="module")
def bottle(shared_data):
    return shared_data / "mvtec" / "bottle"


@pytest.mark.parametrize("name, ratio", [("patchcore", 0.01), ("patchcore", 0.1), ("sa_patchcore", 0.01)])
def test_fit(benchmark, bottle, name, ratio):
    """Whole fit (features, coreset, threshold) in a fresh process; also its peak RSS."""
    def run():
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(bottle), name, str(ratio)],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{name} ratio {ratio}: {result}")


@pytest.fixture(scope="module")
def fitted(bottle):
    det = pyanom.create("patchcore", coreset_ratio=0.01)
    det.fit(open_dataset(bottle, "train").normal(), progress=False)
    return det


@pytest.mark.parametrize("batch", [1, 32])
def test_predict(benchmark, fitted, bottle, batch):
    """Scoring only (images already decoded and resized): per batch; divide by the batch for ms/image."""
    test = open_dataset(bottle, "test")
    images = torch.stack([test[i]["image"] for i in range(batch)])
    benchmark.extra_info["batch"] = batch
    benchmark.pedantic(fitted.predict, args=(images,), kwargs={"batch_size": batch}, rounds=5, warmup_rounds=1)
