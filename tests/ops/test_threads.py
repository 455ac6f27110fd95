"""The native CPU ops give the same bytes at 1, 2 and 3 OpenMP threads, forward and backward.

Each thread count runs in a process of its own, set by torch.set_num_threads (torch and the
kernels share one OpenMP runtime, so it sets both: the test checks that the kernels report it;
torch caps OMP_NUM_THREADS at the number of cores), on inputs large enough for every kernel to use
all the threads it is given (each kernel wakes one thread per so much work; the sizes below say
how many it would use). Run as a script with the thread count as its argument, the file prints
one hash per case.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import torch

import pyanom
import pyanom.ops.attention as attention_module
from pyanom.ops import (channel_self_attention, concentrated_loss, greedy_coreset, knn_scores,
                        self_attention)

THREADS = (1, 2, 3)


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def random(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def knn_case(q, n, d, k, dtype):
    queries = random(q, d, seed=1, dtype=dtype).requires_grad_()
    bank = random(n, d, seed=2, dtype=dtype).requires_grad_()
    dist, index = knn_scores(queries, bank, k, backend="native")
    grads = torch.autograd.grad(dist.sum(), (queries, bank))  # the closed-form backward
    return digest(dist, index, *grads)


def attention_case(shape, full_limit, dtype):
    saved = attention_module.FULL_SCORES_MAX_POSITIONS
    attention_module.FULL_SCORES_MAX_POSITIONS = full_limit
    try:
        return digest(self_attention(random(*shape, seed=3, dtype=dtype), backend="native"))
    finally:
        attention_module.FULL_SCORES_MAX_POSITIONS = saved


def concentrated_case(shape, dtype):
    logits = (random(*shape, seed=4, dtype=dtype) * 3).requires_grad_()
    target = (random(*shape, seed=5) > 0.8).to(dtype)
    loss = concentrated_loss(logits, target, detach_factor=False, backend="native")
    return digest(loss, torch.autograd.grad(loss, logits)[0])


CASES = {
    # q n d >> 20 multiply-adds per thread: 15 threads' worth; 8 queries: the bank is split
    # between threads (each split keeps its own top-k, merged at the end).
    "knn 256 x 1000 x 64, k=9": lambda dtype: knn_case(256, 1000, 64, 9, dtype),
    "knn 8 x 20000 x 32, k=40 (bank splits)": lambda dtype: knn_case(8, 20000, 32, 40, dtype),
    # Projected to 128 dims (a torch matmul), then the first pass over 9000 x 128 >= 2^20 in parallel.
    "greedy_coreset 9000 x 160, k=200": lambda dtype: digest(
        greedy_coreset(random(9000, 160, seed=6, dtype=dtype), 200, backend="native")),
    # B L^2 C >> 22: 4 threads' worth, whole scores (full mode) and blocks of keys (flash mode).
    "self_attention 2x128x16x16": lambda dtype: attention_case((2, 128, 16, 16), 4096, dtype),
    "self_attention 1x128x20x20 flash": lambda dtype: attention_case((1, 128, 20, 20), 64, dtype),
    # C L^2 >> 20: 4 threads' worth.
    "channel_self_attention 2x32x16x16": lambda dtype: digest(
        channel_self_attention(random(2, 32, 16, 16, seed=7, dtype=dtype), backend="native")),
    # 27,000 pixels in blocks of 8192 (two per image): parallel above 16,384.
    "concentrated_loss 3x100x90 fwd+bwd": lambda dtype: concentrated_case((3, 100, 90), dtype),
}


def hashes() -> dict:
    """Every case in both dtypes, with the thread counts torch and the kernels report."""
    out = {"torch_threads": torch.get_num_threads(), "kernel_threads": pyanom.build_info()["openmp_threads"]}
    for name, case in CASES.items():
        for dtype in (torch.float32, torch.float64):
            out[f"{name} {str(dtype).replace('torch.', '')}"] = case(dtype)
    return out


def run_with_threads(threads: int) -> dict:
    done = subprocess.run([sys.executable, "-P", __file__, str(threads)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_same_bytes_at_1_2_and_3_threads():
    results = {n: run_with_threads(n) for n in THREADS}
    for n, result in results.items():
        assert result.pop("torch_threads") == n and result.pop("kernel_threads") == n, result
    first = results[THREADS[0]]
    for n in THREADS[1:]:
        differ = [case for case in first if results[n][case] != first[case]]
        assert not differ, f"{n} threads differ from {THREADS[0]} in: {differ}"


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]))
    print(json.dumps(hashes()))
