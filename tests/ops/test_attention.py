"""self_attention (stem attention), and what both attention ops share (parametrised over
self_attention and channel_self_attention): native and torch backends against the twin in
pyanom.ops.reference evaluated in float64.

Tolerances: float32 rtol 1e-4 / atol 1e-5 (scaled by the input magnitude), float64 rtol 1e-10 /
atol 1e-12, both against the twin evaluated in float64 on the same values.
"""

import math

import numpy as np
import pytest
import torch

from pyanom.ops import attention, channel_self_attention, reference, self_attention

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}

COMMON_SHAPES = [
    (1, 1, 1, 1),      # one position: the output is the input
    (1, 3, 1, 1),
    (2, 1, 4, 4),      # C = 1
    (3, 5, 7, 9),      # odd H, W; L = 63 is not a whole number of vectors
]
SHAPES = {  # per op, on the CPU; on CUDA these and CUDA_SHAPES
    "self_attention": COMMON_SHAPES + [
        (2, 16, 16, 16),
        (1, 64, 13, 17),
        (2, 1024, 4, 4),   # wide channels, few positions
        (1, 7, 32, 32),    # L = 1024
        (1, 33, 31, 33),   # L = 1023: partial query block, partial key tile
        (1, 256, 16, 16),  # the SA-PatchCore size class
    ],
    "channel_self_attention": COMMON_SHAPES + [
        (1, 2, 1, 7),      # fewer positions than one vector
        (2, 4, 1, 65),     # one past a whole number of query blocks
        (8, 112, 16, 16),  # the benchmark size
        (2, 192, 8, 8),    # the detector's size (Lite0 stride 32 at 256 px)
        (1, 3, 64, 64),    # L = 4096
    ],
}
CUDA_SHAPES = {
    # C up to 2048 and H*W up to 4096 (the range), and past both.
    "self_attention": [(2, 2048, 8, 8), (1, 64, 64, 64), (2, 9, 23, 29), (1, 2100, 5, 5),
                       (1, 3, 65, 65)],
    "channel_self_attention": [(2, 1024, 16, 16), (1, 2, 80, 80)],  # L = 6400: several key tiles
}


# Each op with its twin, for the tests both share.
OPS = {"self_attention": (self_attention, reference.self_attention),
       "channel_self_attention": (channel_self_attention, reference.channel_self_attention)}


@pytest.fixture(params=list(OPS))
def op(request):
    return OPS[request.param]


def expected(x, twin=reference.self_attention):
    return twin(x.double())


def check(out, x, scale=1.0, twin=reference.self_attention):
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    tol = TOL[x.dtype]
    torch.testing.assert_close(out.double(), expected(x, twin), rtol=tol["rtol"],
                               atol=tol["atol"] * scale)


def test_twin_is_the_formula():
    """The twin (scaled_dot_product_attention) against eq. 4 written out, with its L x L weights."""
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    tokens = x.reshape(2, 6, 35).transpose(1, 2)
    weights = torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(6), dim=-1)
    want = (weights @ tokens).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(reference.self_attention(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, shape", [(n, s) for n in OPS for s in SHAPES[n]], ids=str)
def test_matches_reference(name, shape, dtype, backend):
    fn, twin = OPS[name]
    x = torch.randn(shape, dtype=dtype)
    check(fn(x, backend=backend), x, twin=twin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 9, 23, 29), (1, 20, 33, 33), (3, 5, 7, 9), (1, 1, 1, 1)],
                         ids=str)
def test_flash_path_matches_reference(shape, dtype, monkeypatch):
    """Maps above the full-scores limit go block by block (L = 667 and 1089: several key blocks)."""
    monkeypatch.setattr(attention, "FULL_SCORES_MAX_POSITIONS", 0)
    x = torch.randn(shape, dtype=dtype)
    check(self_attention(x, backend="native"), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_more_images_than_one_group(dtype):
    """The CPU kernel packs (and scores) a group of images at a time: 3 in fp32, 1 in fp64 here."""
    x = torch.randn(7, 3, 32, 32, dtype=dtype)
    check(self_attention(x, backend="native"), x)


@pytest.mark.parametrize("magnitude", [30.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_large_magnitude_is_stable(magnitude, dtype, backend):
    """Logits in the thousands to millions: exp must not overflow (the max is subtracted).

    In float32 a logit s carries a rounding error of about |s| * 6e-8 (here up to 0.1), which
    moves the weights by as much, so float32 is held to rtol 1e-3 / atol 1e-4 * magnitude here
    (an overflow would be off by the magnitude itself); float64 to the usual.
    """
    x = (torch.randn(2, 16, 9, 11, dtype=torch.float64) * magnitude).to(dtype)
    out = self_attention(x, backend=backend)
    assert torch.isfinite(out).all()
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected(x), rtol=1e-3, atol=1e-4 * magnitude)
    else:
        check(out, x, scale=magnitude)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, shape", [(n, s) for n in OPS for s in SHAPES[n] + CUDA_SHAPES[n]],
                         ids=str)
def test_cuda_matches_reference(name, shape, dtype):
    fn, twin = OPS[name]
    x = torch.randn(shape, dtype=dtype, device="cuda")
    out = fn(x, backend="native")
    assert out.device == x.device
    check(out.cpu(), x.cpu(), twin=twin)


@pytest.mark.cuda
@pytest.mark.parametrize("magnitude", [30.0, 1e3])
def test_cuda_large_magnitude_is_stable(magnitude):
    x = torch.randn(2, 16, 9, 11, device="cuda") * magnitude
    out = self_attention(x, backend="native").cpu()
    assert torch.isfinite(out).all()
    check(out, x.cpu(), scale=magnitude)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_constant_map_is_a_fixed_point(op, backend):
    """All positions equal: every weight row averages copies of the same vector (or value)."""
    fn, _ = op
    x = torch.randn(2, 12, 1, 1).expand(2, 12, 6, 5)
    torch.testing.assert_close(fn(x, backend=backend), x.contiguous(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("layout", ["channels_last", "slice", "transposed"])
def test_non_contiguous_input(op, layout, backend):
    fn, twin = op
    base = torch.randn(2, 24, 10, 12, dtype=torch.float64)
    x = {"channels_last": base.to(memory_format=torch.channels_last),
         "slice": base[:, ::2, 1:, :7],
         "transposed": base.transpose(2, 3)}[layout]
    assert not x.is_contiguous()
    check(fn(x, backend=backend), x, twin=twin)


@pytest.mark.parametrize("name, shape", [("self_attention", (4, 128, 12, 12)),
                                         ("channel_self_attention", (4, 64, 12, 12))])
def test_backends_agree_float32(name, shape):
    fn, _ = OPS[name]
    x = torch.randn(shape)
    torch.testing.assert_close(fn(x, backend="native"), fn(x, backend="torch"), rtol=1e-4, atol=1e-5)


def test_native_is_deterministic(op):
    fn, _ = op
    x = torch.randn(3, 40, 9, 9)
    assert torch.equal(fn(x, backend="native"), fn(x, backend="native"))


BAD = [
    (lambda: torch.full((1, 2, 3, 3), float("nan")), ValueError, "x contains NaN or Inf"),
    (lambda: torch.tensor([[[[1.0, float("inf")]]]]), ValueError, "x contains NaN or Inf"),
    (lambda: torch.randn(2, 3, 4), ValueError, "x must have 4 dimensions"),
    (lambda: torch.randn(1, 2, 3, 4, 5), ValueError, "x must have 4 dimensions"),
    (lambda: torch.ones(1, 2, 3, 3, dtype=torch.int64), TypeError,
     "x must have dtype float32, float64"),
    (lambda: torch.randn(1, 2, 3, 3).half(), TypeError, "x must have dtype float32, float64"),
    (lambda: torch.randn(0, 2, 3, 3), ValueError, "x is empty"),
    (lambda: torch.randn(1, 0, 3, 3), ValueError, "x is empty"),
    (lambda: torch.randn(1, 2, 0, 3), ValueError, "x is empty"),
    (lambda: [[[[1.0]]]], TypeError, "x must be a torch.Tensor"),
    (lambda: np.ones((1, 2, 3, 3), dtype=np.float32), TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["native", "torch", "auto"])
@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_input_rejected_alike(op, make, error, message, backend):
    with pytest.raises(error, match=message):
        op[0](make(), backend=backend)


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (9, 2, 31, 30), (4, 1, 17, 5)])
def test_one_non_finite_value_anywhere(op, where, value, backend):
    """Also in the last image (of the last group), in the last (partial) vector of positions."""
    x = torch.randn(10, 3, 32, 31, dtype=torch.float64)
    x[where] = value
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        op[0](x, backend=backend)


def test_grad_auto_takes_differentiable_torch_path(op):
    fn, twin = op
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    (fn(x) * weight).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (twin(x_ref) * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


def test_grad_auto_wins_over_env_native(op, monkeypatch):
    monkeypatch.setenv("PYANOM_BACKEND", "native")
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    op[0](x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_grad_native_raises(op):
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="backend='native' has no backward pass"):
        op[0](x, backend="native")


def test_no_grad_mode_allows_native_on_grad_tensors(op):
    fn, twin = op
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        out = fn(x, backend="native")
    assert out.grad_fn is None
    check(out, x.detach(), twin=twin)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_torch_compile_fullgraph(op, backend):
    fn, twin = op
    x = torch.randn(2, 8, 5, 7)
    compiled = torch.compile(lambda t: fn(t * 2.0, backend=backend) + 1.0, fullgraph=True)
    check(compiled(x) - 1.0, x * 2.0, twin=twin)


@pytest.mark.cuda
def test_cuda_non_contiguous_and_side_stream(op):
    fn, twin = op
    x = torch.randn(2, 24, 10, 12, device="cuda").to(memory_format=torch.channels_last)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = fn(x, backend="native")
    torch.cuda.current_stream().wait_stream(stream)
    check(out.cpu(), x.cpu(), twin=twin)


@pytest.mark.cuda
@pytest.mark.parametrize("stem", ["attention", "channel_attention"])
def test_cuda_kernel_runs_on_the_current_stream(stem):
    """Graph capture fails for work launched on any stream but the capturing one."""
    twin = {"attention": reference.self_attention, "channel_attention": reference.channel_self_attention}[stem]
    library_op = getattr(torch.ops.pyanom, stem)
    x = torch.randn(2, 16, 6, 6, device="cuda")
    library_op(x, "native")  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = library_op(x, "native")
    graph.replay()
    torch.cuda.synchronize()
    check(out.cpu(), x.cpu(), twin=twin)


@pytest.mark.cuda
@pytest.mark.parametrize("make, error, message", BAD[:9])
def test_cuda_bad_input_rejected(op, make, error, message):
    with pytest.raises(error, match=message):
        op[0](make().cuda(), backend="native")


@pytest.mark.cuda
def test_cuda_torch_compile_fullgraph(op):
    fn, twin = op
    x = torch.randn(2, 8, 5, 7, device="cuda")
    compiled = torch.compile(lambda t: fn(t, backend="native"), fullgraph=True)
    check(compiled(x).cpu(), x.cpu(), twin=twin)
