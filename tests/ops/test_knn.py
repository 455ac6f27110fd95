"""knn_scores (stem knn) against the exact float64 ranking, on both backends (the torch one is
the twin, pyanom.ops.reference.knn_scores) and CUDA where present.

Tolerance: the op computes d^2 = ||q||^2 - 2 q.b + ||b||^2 in the inputs' dtype, so a returned
distance d must satisfy |d^2 - d_ref^2| <= RTOL * (||q||^2 + max ||b||^2) with RTOL = 2e-5 in
float32 and 1e-12 in float64 (near 0 that allows |d - d_ref| ~ sqrt(RTOL) * ||q||). Indices must
equal the reference's wherever its squared distances are more than twice that apart from their
neighbours in the ranking; inside closer groups any index whose exact distance fits is accepted.
Exact ties (duplicate rows) are checked separately, on data where the arithmetic is exact.
"""

from __future__ import annotations

import pytest
import torch

from pyanom.ops import knn_scores

RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}
BACKENDS = ["native", "torch"]


def ranked(queries, bank, k):
    """The exact oracle: float64 distances of every pair, sorted stably (ties to the lowest
    index). Holds the Q x N matrix that the op and its twin never do."""
    dist = torch.cdist(queries.double(), bank.double(), compute_mode="donot_use_mm_for_euclid_dist")
    values, index = torch.sort(dist, dim=1, stable=True)
    return values[:, :k].to(queries.dtype), index[:, :k]


def random(*shape, seed, dtype=torch.float32, device="cpu", scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def check_knn(queries, bank, k, distances, indices):
    """Assert (distances, indices) is a correct k-NN answer within the stated tolerance."""
    q, n = queries.shape[0], bank.shape[0]
    assert distances.shape == (q, k) and indices.shape == (q, k)
    assert distances.dtype == queries.dtype and indices.dtype == torch.int64
    assert distances.device == queries.device and indices.device == queries.device
    qd, bd = queries.double().cpu(), bank.double().cpu()
    d, i = distances.double().cpu(), indices.cpu()
    ref_d, ref_i = ranked(qd, bd, n)  # every bank row, ranked
    exact = torch.cdist(qd, bd, compute_mode="donot_use_mm_for_euclid_dist")
    tol = RTOL[queries.dtype] * (qd.pow(2).sum(1, keepdim=True) + bd.pow(2).sum(1).max())
    assert not torch.isnan(d).any()
    assert torch.all(d[:, 1:] >= d[:, :-1]), "distances not ascending"
    assert torch.all((d.pow(2) - ref_d[:, :k].pow(2)).abs() <= tol), "distances off"
    assert torch.all((i >= 0) & (i < n))
    assert all(len(set(row)) == k for row in i.tolist()), "an index repeats"
    own = exact.gather(1, i)  # each returned index's true distance must fit its returned distance
    assert torch.all((d.pow(2) - own.pow(2)).abs() <= tol), "index does not fit its distance"
    sq = ref_d.pow(2)
    inf = torch.full((q, 1), float("inf"), dtype=torch.float64)
    gap_before = sq[:, :k] - torch.cat([-inf, sq[:, :k - 1]], 1)
    gap_after = torch.cat([sq[:, 1:], inf], 1)[:, :k] - sq[:, :k]
    separated = (gap_before > 2 * tol) & (gap_after > 2 * tol)
    assert torch.equal(i[separated], ref_i[:, :k][separated]), "wrong neighbour"


SHAPES = [  # Q, N, D, k
    (1, 1, 1, 1),
    (1, 7, 3, 7),
    (5, 1, 4, 1),
    (17, 33, 1, 9),
    (13, 100, 5, 1),
    (64, 257, 31, 9),
    (40, 70, 152, 70),
    (3, 500, 7, 33),
    (2, 2000, 4, 50),
    (100, 200, 300, 9),
    (29, 1000, 16, 1),
    (1, 3000, 8, 5),
    (3, 20000, 64, 5),  # few queries, enough work for threads: bank blocks split between them
    (2, 20000, 64, 40),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(device, backend, shape):
    q, n, d, k = shape
    queries = random(q, d, seed=q * 7 + d, device=device)
    bank = random(n, d, seed=n * 3 + k, device=device)
    check_knn(queries, bank, k, *knn_scores(queries, bank, k, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(9, 60, 3, 9), (31, 300, 200, 4), (2, 900, 11, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_float64(device, backend, shape):
    q, n, d, k = shape
    queries = random(q, d, seed=1, dtype=torch.float64, device=device)
    bank = random(n, d, seed=2, dtype=torch.float64, device=device)
    check_knn(queries, bank, k, *knn_scores(queries, bank, k, backend=backend))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_result_independent_of_chunk_size(device, dtype):
    queries = random(45, 37, seed=3, dtype=dtype, device=device)
    bank = random(301, 37, seed=4, dtype=dtype, device=device)
    for k in (9, 40):
        expected = knn_scores(queries, bank, k, backend="native")
        for chunk in (1, 100, 5000, 10**8):
            got = knn_scores(queries, bank, k, chunk_size=chunk, backend="native")
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), chunk


@pytest.mark.parametrize("chunk", [1, 7, 500, 4096])
def test_torch_backend_small_chunks(device, chunk):
    queries, bank = random(11, 6, seed=5, device=device), random(60, 6, seed=6, device=device)
    for k in (1, 9, 60):
        check_knn(queries, bank, k, *knn_scores(queries, bank, k, chunk_size=chunk, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [None, 3])
def test_duplicate_rows_tie_to_lowest_index(device, backend, chunk):
    # Small integers: every product and sum is exact in float32, so duplicates tie exactly in
    # any evaluation order and the reference's stable order (lowest index first) is the answer.
    gen = torch.Generator().manual_seed(7)
    points = torch.randint(-4, 5, (6, 5), generator=gen).float()
    bank = points[torch.randint(0, 6, (40,), generator=gen)]  # each point about 7 times
    queries = torch.randint(-4, 5, (25, 5), generator=gen).float()
    for k in (1, 4, 9, 40):
        d, i = knn_scores(queries.to(device), bank.to(device), k, chunk_size=chunk, backend=backend)
        ref_d, ref_i = ranked(queries, bank, k)
        assert torch.equal(i.cpu(), ref_i), k
        torch.testing.assert_close(d.cpu(), ref_d, rtol=1e-6, atol=0)  # torch's float32 sqrt: 1 ulp


def test_native_duplicate_float_rows_tie_exactly(device):
    # Arbitrary floats: the native kernels sum every row in the same order, so duplicates still
    # get bit-identical distances and keep index order.
    bank = random(50, 19, seed=8)
    bank = bank[torch.tensor([0, 1, 2, 1, 3, 0, 4, 2, 1] + list(range(5, 50)))]
    queries = torch.cat([random(10, 19, seed=9), bank[:3] + 1e-3])
    d, i = knn_scores(queries.to(device), bank.to(device), 6, backend="native")
    d, i = d.cpu(), i.cpu()
    assert torch.equal(i, ranked(queries, bank, 6)[1])
    for row_d, row_i in zip(d.tolist(), i.tolist()):
        for (d0, i0), (d1, i1) in zip(zip(row_d, row_i), zip(row_d[1:], row_i[1:])):
            if torch.equal(bank[i0], bank[i1]):
                assert d0 == d1 and i0 < i1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_query_equal_to_bank_row(device, backend, dtype):
    bank = random(200, 64, seed=10, dtype=dtype, device=device, scale=100.0)  # worst cancellation
    rows = torch.tensor([0, 17, 101, 199], device=device)
    queries = torch.cat([bank[rows], random(3, 64, seed=11, dtype=dtype, device=device, scale=100.0)])
    d, i = knn_scores(queries, bank, 3, backend=backend)
    assert not torch.isnan(d).any() and torch.all(d >= 0)
    assert torch.equal(i[:4, 0], rows)
    if backend == "native":
        assert torch.all(d[:4, 0] == 0)  # same summation order for the dot product and the norms
    else:
        limit = (RTOL[dtype] * 2 * queries[:4].double().pow(2).sum(1)).sqrt()
        assert torch.all(d[:4, 0].double() <= limit)
    check_knn(queries, bank, 3, d, i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(device, backend):
    queries = random(12, 30, seed=12, device=device).T  # [30, 12], transposed strides
    bank = random(400, 24, seed=13, device=device)[::2, ::2]  # [200, 12], every other row, column
    assert not queries.is_contiguous() and not bank.is_contiguous()
    got = knn_scores(queries, bank, 5, backend=backend)
    check_knn(queries, bank, 5, *got)
    if backend == "native":  # the same kernel on the same values (torch's GEMM may differ by strides)
        expected = knn_scores(queries.contiguous(), bank.contiguous(), 5, backend=backend)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def _bad_inputs(device="cpu"):
    q, b = random(4, 3, seed=14, device=device), random(6, 3, seed=15, device=device)
    nan_q = q.clone()
    nan_q[1, 2] = float("nan")
    inf_b = b.clone()
    inf_b[0, 0] = float("inf")
    # the last value of a bank that spans many panels and blocks, and of the last query
    wide_b = random(300, 3, seed=17, device=device)
    wide_b[-1, -1] = float("nan")
    inf_q = q.clone()
    inf_q[-1, -1] = -float("inf")
    return [  # (queries, bank, k, keywords, error, message fragment)
        (nan_q, b, 2, {}, ValueError, "queries contains NaN or Inf"),
        (q, inf_b, 2, {}, ValueError, "bank contains NaN or Inf"),
        (q, wide_b, 2, {}, ValueError, "bank contains NaN or Inf"),
        (q, wide_b, 2, {"chunk_size": 1}, ValueError, "bank contains NaN or Inf"),
        (inf_q, b, 2, {}, ValueError, "queries contains NaN or Inf"),
        (q, b, 0, {}, ValueError, "k must be >= 1"),
        (q, b, 7, {}, ValueError, "k must be <= 6"),
        (q, b, 2.0, {}, TypeError, "k must be an int"),
        (q, random(6, 4, seed=16, device=device), 2, {}, ValueError, "same number of features"),
        (q, b.double(), 2, {}, TypeError, "tensors must share a dtype"),
        (q.int(), b.int(), 2, {}, TypeError, "queries must have dtype float32, float64"),
        (q[0], b, 2, {}, ValueError, "queries must have 2 dimensions"),
        (q, b[None], 2, {}, ValueError, "bank must have 2 dimensions"),
        (q[:0], b, 2, {}, ValueError, "queries is empty"),
        (q, b[:, :0], 2, {}, ValueError, "bank is empty"),
        (q.tolist(), b, 2, {}, TypeError, "queries must be a torch.Tensor"),
        (q, b, 2, {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        (q, b, 2, {"chunk_size": 1.5}, TypeError, "chunk_size must be an int"),
        # Found by tests/ops/test_fuzz.py: torch.library's "Expected a value of type 'int'" before.
        (q, b, 2, {"chunk_size": 2**63}, ValueError, "chunk_size must be <= 9223372036854775807"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_rejected_identically(device, case):
    queries, bank, k, keywords, error, fragment = _bad_inputs(device)[case]
    messages = []
    for backend in BACKENDS:
        with pytest.raises(error, match=fragment) as info:
            knn_scores(queries, bank, k, backend=backend, **keywords)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_tensors_give_meta_results(backend):
    """Shapes only, as any torch op (found by tests/ops/test_fuzz.py: the finiteness check read
    the values of meta tensors and raised "Tensor.item() cannot be called on meta tensors")."""
    dist, index = knn_scores(torch.empty(5, 3, device="meta"), torch.empty(8, 3, device="meta"), 4,
                             backend=backend)
    assert dist.device.type == index.device.type == "meta"
    assert dist.shape == index.shape == (5, 4) and index.dtype == torch.int64


def test_torch_compile_fullgraph(device):
    queries, bank = random(20, 8, seed=19, device=device), random(90, 8, seed=20, device=device)

    def score(x, y):
        d, i = knn_scores(x, y, 3)
        return d[:, 0] * 2, i

    # aot_eager traces exactly what inductor would (the fake kernel, no graph break) without
    # spending seconds compiling C++ for the surrounding arithmetic.
    compiled = torch.compile(score, fullgraph=True, backend="aot_eager")
    got, expected = compiled(queries, bank), score(queries, bank)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_reference(device, backend):
    queries = random(6, 4, seed=21, dtype=torch.float64, device=device).requires_grad_()
    bank = random(15, 4, seed=22, dtype=torch.float64, device=device).requires_grad_()
    weights = random(6, 3, seed=23, dtype=torch.float64, device=device)
    d, _ = knn_scores(queries, bank, 3, backend=backend)
    grads = torch.autograd.grad((d * weights).sum(), (queries, bank))
    ref_d, _ = ranked(queries, bank, 3)
    ref_grads = torch.autograd.grad((ref_d * weights).sum(), (queries, bank))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x, y: knn_scores(x, y, 3, backend=backend)[0],
                                    (queries, bank))


@pytest.mark.cuda
def test_cuda_rejects_mixed_devices():
    q = random(4, 3, seed=26)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="tensors must be on one device"):
            knn_scores(q, q.cuda(), 1, backend=backend)
