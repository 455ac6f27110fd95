"""greedy_coreset at PatchCore scale: N = 214,016 patch features (MVTec bottle: 209 images x
32 x 32 patches), D = 1536, coresets of 1% (2,140) and 10% (21,401) rows.

Compared on the same features in one run:
  - native: pyanom's whole op (Gaussian projection to 128 dims + the pruned C++ loop);
  - torch_loop: pyanom's torch backend (the reference loop: float64 squared distances,
    minimum, argmax per iteration);
  - anomalib_loop: a faithful re-implementation of anomalib's KCenterGreedy (sparse random
    projection to johnson_lindenstrauss_min_dim(N, eps=0.9) = 303 dims, then per iteration
    torch.linalg.norm(features - center, dim=1, keepdim=True), torch.minimum, torch.argmax).
The first call of any pyanom op in a process imports torch._dynamo (torch.library custom ops
do; about 1.7 s here, once per process, whatever the op): both entry points warm up on a tiny
input first so that the figures measure the selection. The torch loops cost ~0.1 s per iteration here, so they run LOOP_ITERATIONS iterations; their
totals are EXTRAPOLATED: projection time + k x the measured per-iteration time.

The features are synthetic (no 1536-dim real features in CI): a Gaussian mixture shaped like
CNN patch features (see patch_features), which matters because pruning depends on the data.

On a CUDA device the same comparison runs on the GPU too (native: the persistent kernel;
torch_loop: the reference loop on CUDA tensors), timed with a synchronize after each run.

    PYTHONPATH=$PWD python3 -P -m pytest benchmarks/bench_coreset.py --benchmark-columns=min,rounds
    PYTHONPATH=$PWD python3 -P benchmarks/bench_coreset.py    # one table, all figures of one run
"""

import math
import time

import numpy as np
import pytest
import torch
from sklearn.utils.random import sample_without_replacement

from pyanom.ops import _checks, greedy_coreset, reference

N, D = 214_016, 1536
RATIOS = (0.01, 0.1)
LOOP_ITERATIONS = 50
SEED = 0
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def patch_features(n=N, d=D, latent=96, clusters=256, spread=0.35, noise=0.01, seed=SEED):
    """Gaussian mixture shaped like CNN patch features (EfficientNet-Lite0 features of MVTec
    bottle: top 8 / 32 principal components hold 80% / 97% of the variance): cluster means and
    spreads in a low-dimensional latent space with a power-law spectrum, heavy-headed cluster
    sizes (backgrounds repeat), and 1% isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, latent, generator=gen))
    std = torch.arange(1, latent + 1, dtype=torch.float32).pow(-0.8)
    means = torch.randn(clusters, latent, generator=gen) * std
    weights = 1.0 / (torch.arange(clusters, dtype=torch.float32) + 5)
    labels = torch.multinomial(weights, n, replacement=True, generator=gen)
    z = means[labels] + spread * torch.randn(n, latent, generator=gen) * std
    eta = math.sqrt(noise * float(std.pow(2).sum()) * (1 + spread**2) / d)
    return (z @ basis.T).add_(torch.randn(n, d, generator=gen), alpha=eta).mul_(10)


def anomalib_projection(embedding, eps=0.9, seed=SEED):
    """anomalib's SparseRandomProjection(eps).fit(embedding).transform(embedding)."""
    n, d = embedding.shape
    components = int(4 * np.log(n) / (eps**2 / 2 - eps**3 / 3))
    density = 1 / np.sqrt(d)
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.zeros(components, d)
    for i in range(components):
        nnz = int(torch.binomial(torch.tensor(float(d)), torch.tensor(float(density)), generator=gen))
        cols = torch.tensor(sample_without_replacement(d, nnz, random_state=seed + i), dtype=torch.int64)
        matrix[i, cols] = torch.randint(0, 2, (len(cols),), generator=gen).float() * 2 - 1
    matrix *= np.sqrt(1 / density) / np.sqrt(components)
    return embedding @ matrix.T


def anomalib_loop(features, iterations, start):
    """anomalib's KCenterGreedy.select_coreset_idxs loop on projected features."""
    min_distances = None
    idx, chosen = start, []
    for _ in range(iterations):
        distance = torch.linalg.norm(features - features[[idx]], ord=2, dim=1, keepdim=True)
        min_distances = distance if min_distances is None else torch.minimum(min_distances, distance)
        idx = int(torch.argmax(min_distances).item())
        min_distances[idx] = 0
        chosen.append(idx)
    return chosen


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def loop_costs(features, start):
    """(projection s, per-iteration s) of the torch reference loop and of anomalib's loop."""
    proj_t, points = timed(lambda: reference.random_projection(features, 128, SEED))
    loop_t, chosen = timed(lambda: reference.greedy_select(points, LOOP_ITERATIONS + 1, start))
    anom_proj_t, anom = timed(lambda: anomalib_projection(features))
    anom_loop_t, _ = timed(lambda: anomalib_loop(anom, LOOP_ITERATIONS, start))
    return {"torch_loop": (proj_t, loop_t / (LOOP_ITERATIONS + 1)), "anomalib_loop": (anom_proj_t, anom_loop_t / LOOP_ITERATIONS)}, chosen


def warm_up():
    """Pay the once-per-process custom-op set-up (see the module docstring) outside the timing."""
    greedy_coreset(torch.randn(64, 8), 4, backend="native")


@pytest.fixture(scope="module")
def features():
    warm_up()
    return patch_features()


@pytest.mark.parametrize("ratio", RATIOS)
def test_native(benchmark, features, ratio):
    k = int(N * ratio)
    out = benchmark.pedantic(lambda: greedy_coreset(features, k, seed=SEED, backend="native"), rounds=1, iterations=1)
    head = reference.greedy_coreset(features, 11, seed=SEED)
    assert torch.equal(out[:11], head)
    benchmark.extra_info.update(k=k)


@pytest.mark.parametrize("impl", ["torch_loop", "anomalib_loop"])
def test_loop_iterations(benchmark, features, impl):
    """LOOP_ITERATIONS iterations of a torch loop (projection excluded; see extra_info)."""
    start = reference.coreset_start(N, SEED)
    if impl == "torch_loop":
        proj_t, points = timed(lambda: reference.random_projection(features, 128, SEED))
        benchmark.pedantic(lambda: reference.greedy_select(points, LOOP_ITERATIONS + 1, start), rounds=1, iterations=1)
    else:
        proj_t, points = timed(lambda: anomalib_projection(features))
        benchmark.pedantic(lambda: anomalib_loop(points, LOOP_ITERATIONS, start), rounds=1, iterations=1)
    per_iter = benchmark.stats.stats.min / LOOP_ITERATIONS
    benchmark.extra_info.update(projection_s=proj_t, per_iteration_s=per_iter,
                                **{f"extrapolated_total_s_k{int(N * r)}": proj_t + int(N * r) * per_iter for r in RATIOS})


@needs_cuda
@pytest.mark.parametrize("ratio", RATIOS)
def test_native_cuda(benchmark, features, ratio):
    x = features.cuda()
    k = int(N * ratio)
    timed(lambda: greedy_coreset(x[:4096], 64, backend="native"))  # warm-up: module, context
    out = benchmark.pedantic(lambda: timed(lambda: greedy_coreset(x, k, seed=SEED, backend="native"))[1],
                             rounds=3, iterations=1)
    assert torch.equal(out[:11], reference.greedy_coreset(x, 11, seed=SEED))
    benchmark.extra_info.update(k=k, device=torch.cuda.get_device_name())


@needs_cuda
def test_torch_loop_cuda_iterations(benchmark, features):
    """LOOP_ITERATIONS iterations of the reference loop on the GPU (projection excluded)."""
    x = features.cuda()
    start = reference.coreset_start(N, SEED)
    proj_t, points = timed(lambda: reference.random_projection(x, 128, SEED))
    benchmark.pedantic(lambda: timed(lambda: reference.greedy_select(points, LOOP_ITERATIONS + 1, start)),
                       rounds=1, iterations=1)
    per_iter = benchmark.stats.stats.min / LOOP_ITERATIONS
    benchmark.extra_info.update(projection_s=proj_t, per_iteration_s=per_iter,
                                **{f"extrapolated_total_s_k{int(N * r)}": proj_t + int(N * r) * per_iter for r in RATIOS})


def main():
    torch.manual_seed(0)
    setup_t, _ = timed(warm_up)
    x = patch_features()
    start = reference.coreset_start(N, SEED)
    costs, chosen = loop_costs(x, start)
    rows = []
    for ratio in RATIOS:
        k = int(N * ratio)
        native_t, out = timed(lambda: greedy_coreset(x, k, seed=SEED, backend="native"))
        assert torch.equal(out[:LOOP_ITERATIONS + 1], chosen), "native and torch loop disagree"
        rows.append((ratio, k, native_t))
    print(f"N={N} D={D} torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"torch loops timed over {LOOP_ITERATIONS} iterations")
    print(f"  first op call of the process (warm-up, not in the figures): {setup_t:.2f} s")
    for name, (proj_t, per_iter) in costs.items():
        print(f"  {name}: projection {proj_t:.2f} s, {per_iter * 1e3:.1f} ms per iteration")
    check_t, _ = timed(lambda: _checks.tensor("features", x, ndim=2))
    print(f"  native includes the input check (NaN/Inf scan of features): {check_t:.2f} s alone")
    print("| ratio | k | native (measured) | torch loop (extrapolated) | anomalib loop (extrapolated) |"
          " vs torch | vs anomalib |")
    print("|---|---|---|---|---|---|---|")
    for ratio, k, native_t in rows:
        torch_t = costs["torch_loop"][0] + k * costs["torch_loop"][1]
        anom_t = costs["anomalib_loop"][0] + k * costs["anomalib_loop"][1]
        print(f"| {ratio:.0%} | {k} | {native_t:.2f} s | {torch_t:.0f} s | {anom_t:.0f} s |"
              f" {torch_t / native_t:.0f}x | {anom_t / native_t:.0f}x |")
    if torch.cuda.is_available():
        xc = x.cuda()
        timed(lambda: greedy_coreset(xc[:4096], 64, backend="native"))
        proj_t, points = timed(lambda: reference.random_projection(xc, 128, SEED))
        loop_t, _ = timed(lambda: reference.greedy_select(points, LOOP_ITERATIONS + 1, start))
        per_iter = loop_t / LOOP_ITERATIONS
        print(f"{torch.cuda.get_device_name()}: torch loop {per_iter * 1e3:.2f} ms per iteration")
        print("| ratio | k | native CUDA (best of 3) | torch loop CUDA (extrapolated) | speed-up |")
        print("|---|---|---|---|---|")
        for ratio in RATIOS:
            k = int(N * ratio)
            native_t = min(timed(lambda: greedy_coreset(xc, k, seed=SEED, backend="native"))[0] for _ in range(3))
            torch_t = proj_t + k * per_iter
            print(f"| {ratio:.0%} | {k} | {native_t * 1e3:.0f} ms | {torch_t:.1f} s | {torch_t / native_t:.0f}x |")


if __name__ == "__main__":
    main()
