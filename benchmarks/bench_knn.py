"""knn_scores at PatchCore scale: 32 images x 1024 patches = 32,768 queries against memory banks
of 2,140 and 21,401 rows (1% and 10% coresets of MVTec bottle), D = 152 and 1536, k = 1 and 9.

native (pyanom's fused GEMM + top-k CPU kernel) vs pyanom's torch backend (chunked addmm +
topk) vs faiss-cpu IndexFlatL2.search, on the same inputs in one run. faiss returns squared
distances; its timing excludes index.add (a copy) and the square root. Target: native at least
as fast as the torch backend and no slower than 1.25x faiss.

    PYTHONPATH=$PWD python3 -P -m pytest benchmarks/bench_knn.py --benchmark-columns=min,median,mean,rounds

pytest-benchmark times each implementation's rounds back to back; on a shared machine whose
load changes over minutes that can favour whichever ran in a quiet spell. Run as a script, the
file alternates the implementations within every round and prints min-of-rounds ratios:

    PYTHONPATH=$PWD python3 -P benchmarks/bench_knn.py [rounds]
"""

import sys
import time

import faiss
import pytest
import torch

from pyanom.ops import knn_scores

QUERIES = 32 * 1024
CONFIGS = [(n, d) for n in (2140, 21401) for d in (152, 1536)]
CHECKED = 256  # leading queries compared against native's answer


def make_inputs(n, d):
    gen = torch.Generator().manual_seed(n + d)
    queries = torch.randn(QUERIES, d, generator=gen)
    bank = torch.randn(n, d, generator=gen)
    index = faiss.IndexFlatL2(d)
    index.add(bank.numpy())
    return queries, bank, index


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"N={c[0]}-D={c[1]}")
def inputs(request):
    return make_inputs(*request.param)


def faiss_search(queries, bank, index, k):
    return index.search(queries.numpy(), k)


IMPLS = {
    "native": lambda q, b, index, k: knn_scores(q, b, k, backend="native"),
    "torch_backend": lambda q, b, index, k: knn_scores(q, b, k, backend="torch"),
    "faiss_flat_l2": faiss_search,
}


@pytest.mark.parametrize("k", [1, 9])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_knn_scores(benchmark, inputs, impl, k):
    queries, bank, index = inputs
    n, d = bank.shape
    benchmark.group = f"knn_scores Q={QUERIES} N={n} D={d} k={k}"
    big = QUERIES * n * d > 2e11  # ~10 s a call on 2 cores: one round is enough
    with torch.no_grad():
        out = benchmark.pedantic(IMPLS[impl], args=(queries, bank, index, k),
                                 rounds=1 if big else 3, warmup_rounds=0 if big else 1, iterations=1)
    expected = knn_scores(queries[:CHECKED], bank, k, backend="native")[0]
    got = torch.from_numpy(out[0][:CHECKED]).sqrt() if impl == "faiss_flat_l2" else out[0][:CHECKED]
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def interleaved(rounds):
    print("| Q | N | D | k | native s | torch backend s | faiss s | torch / native | faiss / native |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d in CONFIGS:
        inputs = make_inputs(n, d)
        for k in (1, 9):
            best = dict.fromkeys(IMPLS, float("inf"))
            for _ in range(rounds):
                for name, fn in IMPLS.items():
                    start = time.perf_counter()
                    fn(*inputs, k)
                    best[name] = min(best[name], time.perf_counter() - start)
            native, torch_s, faiss_s = best["native"], best["torch_backend"], best["faiss_flat_l2"]
            print(f"| {QUERIES} | {n} | {d} | {k} | {native:.2f} | {torch_s:.2f} | {faiss_s:.2f} "
                  f"| {torch_s / native:.2f} | {faiss_s / native:.2f} |", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        interleaved(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
