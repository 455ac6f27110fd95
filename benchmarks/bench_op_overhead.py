"""The fixed cost of one op call (argument checks, backend choice, torch.library dispatch, launch) on
inputs too small for the kernels to matter: what every op pays through pyanom.ops._backend.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 -P -m pytest benchmarks/bench_op_overhead.py \
        --benchmark-columns=min,median,rounds

Run as a script, it prints one core's CPU time per call (min of 7 x 300 calls), which a loaded
machine disturbs far less than pytest-benchmark's wall time:

    OMP_NUM_THREADS=1 python3 -P benchmarks/bench_op_overhead.py
"""

import time
import timeit

import pytest
import torch

from pyanom.ops import (channel_self_attention, concentrated_loss, greedy_coreset, knn_scores,
                        self_attention)

gen = torch.Generator().manual_seed(0)
MAPS = torch.randn(1, 8, 4, 4, generator=gen)
POINTS = torch.randn(200, 16, generator=gen)
QUERIES = torch.randn(64, 16, generator=gen)
LOGITS = torch.randn(2, 8, 8, generator=gen)
TARGET = (torch.rand(2, 8, 8, generator=gen) > 0.7).float()

CALLS = {
    "self_attention 1x8x4x4": lambda b: self_attention(MAPS, backend=b),
    "channel_self_attention 1x8x4x4": lambda b: channel_self_attention(MAPS, backend=b),
    "knn_scores 64x64x16 k=3": lambda b: knn_scores(QUERIES, QUERIES, 3, backend=b),
    "greedy_coreset 200x16 k=20": lambda b: greedy_coreset(POINTS, 20, backend=b),
    "concentrated_loss 2x8x8 forward": lambda b: concentrated_loss(LOGITS, TARGET, backend=b),
}


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("name", list(CALLS))
def test_call(benchmark, name, backend):
    benchmark.group = name
    benchmark(CALLS[name], backend)


if __name__ == "__main__":
    print("| call | native us | torch us | torch / native |\n|---|---|---|---|")
    for name, call in CALLS.items():
        us = {}
        for backend in ("native", "torch"):
            call(backend)
            timer = timeit.Timer(lambda: call(backend), timer=time.process_time)
            us[backend] = min(timer.repeat(repeat=7, number=300)) / 300 * 1e6
        print(f"| {name} | {us['native']:.1f} | {us['torch']:.1f} | {us['torch'] / us['native']:.2f} |")
