"""greedy_coreset (stem coreset): the native kernel (pruned) must select exactly what the reference loop selects."""

import pytest
import torch

from pyanom._build import native_module
from pyanom.ops import greedy_coreset, reference


def clustered(n, d, clusters, spread, gen, dtype=torch.float32):
    """Tight clusters far apart (plus a few outliers): the case where pruning skips most work."""
    centers = torch.randn(clusters, d, generator=gen, dtype=torch.float64) * 10
    labels = torch.randint(clusters, (n,), generator=gen)
    x = centers[labels] + spread * torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[:3] *= 5
    return x.to(dtype)


def cases():
    gen = torch.Generator().manual_seed(1234)
    out = []
    for n, d, k in [(1, 1, 1), (2, 1, 1), (2, 3, 2), (3, 1, 2), (7, 5, 6), (50, 1, 49), (64, 3, 64),
                    (200, 127, 60), (300, 128, 150), (257, 129, 100), (400, 300, 120), (1000, 17, 999)]:
        out.append((f"randn-{n}x{d}-k{k}", torch.randn(n, d, generator=gen), k))
    out.append(("float64", torch.randn(500, 40, generator=gen, dtype=torch.float64), 300))
    out.append(("float64-projected", torch.randn(300, 200, generator=gen, dtype=torch.float64), 80))
    # Many exact ties: small integers make every distance exact in any summation order.
    out.append(("integer-ties", torch.randint(-2, 3, (600, 6), generator=gen).float(), 500))
    base = torch.randn(40, 9, generator=gen)
    out.append(("duplicates", base[torch.randint(40, (500,), generator=gen)], 60))
    out.append(("all-equal", torch.ones(30, 4), 10))
    # More centers than the kernel's 1024 anchors, so its cell search runs too.
    out.append(("clustered-cells", clustered(3000, 24, 12, 0.3, gen), 2000))
    out.append(("clustered-projected", clustered(1500, 160, 6, 0.5, gen), 1300))
    out.append(("lines", torch.linspace(0, 1, 800).unsqueeze(1).repeat(1, 3) + 1e-3 * torch.randn(800, 3, generator=gen), 700))
    out.append(("tiny-scale", torch.randn(300, 8, generator=gen) * 1e-20, 200))
    out.append(("huge-scale", torch.randn(300, 8, generator=gen) * 1e18, 200))
    # Squared distances overflow to inf: nothing may be pruned on an infinite bound.
    out.append(("overflow-float64", torch.randn(300, 8, generator=gen, dtype=torch.float64) * 1e160, 100))
    out.append(("far-from-origin", torch.randn(400, 16, generator=gen) + 1e4, 300))
    return out


CASES = cases()


@pytest.mark.parametrize("name, x, k", CASES, ids=[c[0] for c in CASES])
def test_native_equals_reference(name, x, k):
    for seed in (0, 7):
        want = reference.greedy_coreset(x, k, seed=seed)
        got = greedy_coreset(x, k, seed=seed, backend="native")
        assert got.dtype == torch.int64 and got.shape == want.shape
        assert torch.equal(got, want), f"first difference at {int((got != want).nonzero()[0])}"


def test_native_equals_reference_non_contiguous_and_projection_dims():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(96, 300, generator=gen)
    for view in (x.t()[:150].t(), x[::2], x.t().contiguous().t()):
        for projection_dim in (1, 16, 128, 400):
            want = reference.greedy_coreset(view, 40, projection_dim=projection_dim, seed=3)
            assert torch.equal(greedy_coreset(view, 40, projection_dim=projection_dim, seed=3, backend="native"), want)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_contract(backend):
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0]])
    assert greedy_coreset(x, 3, start=0, backend=backend).tolist() == [0, 2, 3]
    assert greedy_coreset(x, 3, start=2, backend=backend).tolist() == [2, 0, 3]
    dup = torch.tensor([[0.0], [2.0], [2.0], [1.0]])
    assert greedy_coreset(dup, 3, start=0, backend=backend).tolist() == [0, 1, 3]
    # k >= N: every index in order, whatever the start.
    assert greedy_coreset(torch.randn(5, 3), 5, backend=backend).tolist() == [0, 1, 2, 3, 4]
    assert greedy_coreset(torch.randn(5, 3), 9, start=4, backend=backend).tolist() == [0, 1, 2, 3, 4]
    # Once every point sits on a center the farthest distance is 0: argmax returns index 0.
    same = torch.tensor([[1.0, 1.0], [3.0, 3.0], [1.0, 1.0], [3.0, 3.0]])
    assert greedy_coreset(same, 3, start=3, backend=backend).tolist() == [3, 0, 0]


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_any_int_k_and_projection_dim(backend):
    """k past N selects every row and projection_dim past D does not project, up to any int
    (found by tests/ops/test_fuzz.py: values past int64 failed in torch.library's argument cast)."""
    x = torch.randn(30, 5)
    assert greedy_coreset(x, 2**63, backend=backend).tolist() == list(range(30))
    assert torch.equal(greedy_coreset(x, 10, projection_dim=2**64, backend=backend),
                       reference.greedy_coreset(x, 10, projection_dim=5))


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_meta_tensors_give_meta_results(backend):
    """Shapes only, as any torch op (found by tests/ops/test_fuzz.py: "Tensor.item() cannot be
    called on meta tensors")."""
    out = greedy_coreset(torch.empty(30, 200, device="meta"), 7, backend=backend)
    assert out.device.type == "meta" and out.shape == (7,) and out.dtype == torch.int64


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_seed_and_start(backend):
    x = torch.randn(300, 200)
    a = greedy_coreset(x, 20, seed=3, backend=backend)
    assert torch.equal(a, greedy_coreset(x, 20, seed=3, backend=backend))
    assert not torch.equal(a, greedy_coreset(x, 20, seed=4, backend=backend))
    assert a[0] == reference.coreset_start(300, 3)
    b = greedy_coreset(x, 20, seed=3, start=17, backend=backend)
    assert b[0] == 17 and torch.equal(b, reference.greedy_coreset(x, 20, seed=3, start=17))
    assert len(set(b.tolist())) == 20


BAD = [
    ((torch.tensor([[float("nan")]]), 1), {}, ValueError, "features contains NaN or Inf"),
    ((torch.tensor([[1.0], [float("inf")]]), 1), {}, ValueError, "features contains NaN or Inf"),
    ((torch.ones(3), 1), {}, ValueError, "features must have 2 dimensions"),
    ((torch.ones(2, 3, 2), 1), {}, ValueError, "features must have 2 dimensions"),
    ((torch.ones(0, 2), 1), {}, ValueError, "features is empty"),
    ((torch.ones(3, 2, dtype=torch.int64), 1), {}, TypeError, "features must have dtype"),
    ((torch.ones(3, 2, dtype=torch.float16), 1), {}, TypeError, "features must have dtype"),
    (([[1.0]], 1), {}, TypeError, "features must be a torch.Tensor"),
    ((torch.ones(3, 2), 0), {}, ValueError, "k must be >= 1"),
    ((torch.ones(3, 2), 2.5), {}, TypeError, "k must be an int"),
    ((torch.ones(3, 2), 1), {"start": 3}, ValueError, "start must be <= 2"),
    ((torch.ones(3, 2), 1), {"start": -1}, ValueError, "start must be >= 0"),
    ((torch.ones(3, 2), 1), {"start": 1.0}, TypeError, "start must be an int"),
    ((torch.ones(3, 2), 1), {"projection_dim": 0}, ValueError, "projection_dim must be >= 1"),
    ((torch.ones(3, 2), 1), {"seed": "0"}, TypeError, "seed must be an int"),
    ((torch.ones(3, 2), 1), {"seed": 2**63}, ValueError, "seed must be <="),
    ((torch.ones(3, 2), 1), {"backend": "gpu"}, ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("args, kwargs, error, match", BAD, ids=[b[3] for b in BAD])
def test_bad_input(args, kwargs, error, match, backend):
    with pytest.raises(error, match=match):
        greedy_coreset(*args, **{"backend": backend, **kwargs})


def test_kernel_rechecks_its_arguments():
    c = native_module()
    with pytest.raises(ValueError, match="k must be in"):
        c.coreset_workspace_bytes_cpu(3, 2, 4, "float32")
    x = torch.ones(3, 2)
    out = torch.empty(2, dtype=torch.int64)
    size = c.coreset_workspace_bytes_cpu(3, 2, 2, "float32")
    ws = torch.empty(size, dtype=torch.uint8)
    with pytest.raises(ValueError, match="start must be in"):
        c.coreset_cpu(x.data_ptr(), 3, 2, 2, 3, out.data_ptr(), ws.data_ptr(), size, "float32")
    with pytest.raises(ValueError, match="workspace too small"):
        c.coreset_cpu(x.data_ptr(), 3, 2, 2, 0, out.data_ptr(), ws.data_ptr(), size - 1, "float32")


def test_both_paths_select_the_reference(monkeypatch):
    """The torch path is the twin's loop; the native one never runs it (which path runs for
    which backend and environment: tests/ops/test_backend.py)."""
    x = torch.randn(50, 4)
    want = reference.greedy_coreset(x, 10)
    calls = []
    real = reference.greedy_select
    monkeypatch.setattr(reference, "greedy_select", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(greedy_coreset(x, 10, backend="native"), want) and not calls
    assert torch.equal(greedy_coreset(x, 10, backend="torch"), want) and len(calls) == 1


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x = torch.randn(64, 200)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def pick(features):
        return features[greedy_coreset(features, 8, seed=2, backend=backend)] * 2

    assert torch.equal(pick(x), x[reference.greedy_coreset(x, 8, seed=2)] * 2)
    # The fake kernel gives the output shape [min(k, N)] to the tracer.
    small = torch.randn(5, 3)
    assert torch.compile(lambda f: greedy_coreset(f, 9, backend=backend), fullgraph=True,
                         backend="aot_eager")(small).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.cuda
@pytest.mark.parametrize("name, x, k", CASES, ids=[c[0] for c in CASES])
def test_cuda_equals_reference(name, x, k):
    # Same device for both, so that both project with the same (CUDA) matmul.
    want = reference.greedy_coreset(x.cuda(), k, seed=1)
    got = greedy_coreset(x.cuda(), k, seed=1, backend="native")
    assert got.device.type == "cuda" and got.dtype == torch.int64
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("args, kwargs, error, match", BAD, ids=[b[3] for b in BAD])
def test_cuda_bad_input(args, kwargs, error, match):
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(error, match=match):
        greedy_coreset(*args, **{"backend": "native", **kwargs})


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream():
    x = torch.randn(5000, 64, device="cuda")
    want = greedy_coreset(x, 300, backend="native")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = greedy_coreset(x, 300, backend="native")
    stream.synchronize()
    assert torch.equal(got, want)
    assert torch.equal(got.cpu(), reference.greedy_coreset(x.cpu(), 300))  # D <= 128: no projection
