"""concentrated_loss (stem concentrated): fused native kernels against autograd through the reference."""

import pytest
import torch

from pyanom._build import native_module
from pyanom.ops import concentrated_loss, reference


# [B, H, W], [B, 1, H, W], B = 1, 1x1 images, odd sizes, channels, and images of more than
# one kernel block (8192 pixels) so that the partial sums of several blocks are combined.
SHAPES = [(4, 16, 16), (3, 1, 9, 13), (1, 7, 5), (5, 1, 1), (1, 1, 1), (2, 2, 3, 5), (2, 97, 91),
          (1, 1, 129, 131)]


def make(shape, dtype, device="cpu", target="binary", scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if target == "binary":
        y = (torch.rand(shape, generator=gen) > 0.7).double()
    elif target == "soft":
        y = torch.rand(shape, generator=gen, dtype=torch.float64)
    elif target == "zeros":
        y = torch.zeros(shape, dtype=torch.float64)
    elif target == "ones":
        y = torch.ones(shape, dtype=torch.float64)
    return logits.to(device, dtype), y.to(device, dtype)


def oracle(logits, target, **kw):
    """Loss and gradient of autograd through the reference, in float64."""
    z = logits.detach().double().requires_grad_()
    loss = reference.concentrated_loss(z, target.double(), **kw)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def native(logits, target, **kw):
    z = logits.detach().clone().requires_grad_()
    loss = concentrated_loss(z, target, backend="native", **kw)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


# float64 agrees with the float64 oracle to rounding; float32 (sigmoid, sums and the
# gradient's coefficients rounded to float) within 1e-5 of the loss and of the largest
# gradient element (measured: about 2e-7).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def assert_matches(logits, target, **kw):
    loss, grad = native(logits, target, **kw)
    want_loss, want_grad = oracle(logits, target, **kw)
    tol = TOL[logits.dtype]
    assert loss.dtype == logits.dtype and loss.shape == ()
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), want_loss, rtol=tol, atol=tol * 1e-3)
    scale = want_grad.abs().max().item()
    torch.testing.assert_close(grad.double(), want_grad, rtol=tol, atol=tol * max(scale, 1e-12))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("detach_factor", [True, False])
def test_matches_reference(shape, dtype, detach_factor, device):
    logits, target = make(shape, dtype, device, seed=len(shape) + shape[-1])
    assert_matches(logits, target, detach_factor=detach_factor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["soft", "zeros", "ones"])
@pytest.mark.parametrize("detach_factor", [True, False])
def test_targets(kind, dtype, detach_factor, device):
    logits, target = make((3, 1, 11, 6), dtype, device, target=kind)
    assert_matches(logits, target, detach_factor=detach_factor)


@pytest.mark.parametrize("gamma,lam", [(0.0, 0.95), (0.5, 0.0), (0.5, 1.0), (2.0, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("detach_factor", [True, False])
def test_hyper_parameters(gamma, lam, detach_factor, device):
    logits, target = make((2, 12, 10), torch.float64, device)
    assert_matches(logits, target, gamma=gamma, lam=lam, detach_factor=detach_factor, eps=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("detach_factor", [True, False])
def test_perfect_prediction(dtype, detach_factor, device):
    # IoU -> 1: the factor's base is clamped at eps and its gradient stays finite.
    _, target = make((2, 9, 8), dtype, device)
    logits = (target * 2 - 1) * 100
    loss, grad = native(logits, target, detach_factor=detach_factor)
    assert loss.item() < 1e-4
    assert torch.isfinite(grad).all()
    assert_matches(logits, target, detach_factor=detach_factor)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("detach_factor", [True, False])
def test_extreme_logits(dtype, detach_factor, device):
    logits, target = make((3, 10, 7), dtype, device)
    logits = torch.where(logits > 0, 100.0, -100.0).to(dtype)  # saturated, half of them wrong
    loss, grad = native(logits, target, detach_factor=detach_factor)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert_matches(logits, target, detach_factor=detach_factor)
    huge = torch.full_like(logits, 1e30)
    loss, grad = native(huge, target, detach_factor=detach_factor)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_gradcheck(device):
    # Only detach_factor=False is the true derivative of the loss (True drops the factor's part).
    logits, target = make((2, 3, 4), torch.float64, device, target="soft", scale=1.0)
    for gamma in (0.5, 2.0):
        assert torch.autograd.gradcheck(
            lambda z: concentrated_loss(z, target, gamma=gamma, detach_factor=False, backend="native"),
            (logits.requires_grad_(),))


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_non_contiguous(backend, device):
    logits, target = make((3, 14, 2, 9), torch.float32, device)
    z, y = logits[:, ::2].transpose(1, 3), target[:, ::2].transpose(1, 3)
    assert not z.is_contiguous() and not y.is_contiguous()
    z = z.requires_grad_()
    loss = concentrated_loss(z, y, backend=backend)
    (grad,) = torch.autograd.grad(loss, z)
    want_loss, want_grad = oracle(z, y)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_mask_targets_and_no_target_gradient(backend, device):
    logits, target = make((2, 6, 5), torch.float32, device)
    want = concentrated_loss(logits, target, backend=backend)
    for mask in (target.bool(), target.to(torch.uint8), target.double()):
        assert torch.equal(concentrated_loss(logits, mask, backend=backend), want)
    target.requires_grad_()
    z = logits.clone().requires_grad_()
    concentrated_loss(z, target, backend=backend).backward()
    assert z.grad is not None and target.grad is None


def test_deterministic(device):
    # Partial sums are added in a fixed order: the same bits on every call.
    logits, target = make((4, 150, 160), torch.float32, device)
    first = native(logits, target)
    second = native(logits, target)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


BAD = [
    (lambda z, y: (z.masked_fill(z > 1, float("nan")), y), {}, ValueError, "logits contains NaN"),
    (lambda z, y: (z.masked_fill(z > 1, float("inf")), y), {}, ValueError, "logits contains NaN or Inf"),
    (lambda z, y: (z, y.masked_fill(y > 0, float("nan"))), {}, ValueError, "target contains NaN"),
    (lambda z, y: (z, y[:, :-1]), {}, ValueError, "target must have the shape of logits"),
    (lambda z, y: (z, y - 0.5), {}, ValueError, r"target must lie in \[0, 1\]"),
    (lambda z, y: (z, y * 1.5), {}, ValueError, r"target must lie in \[0, 1\]"),
    (lambda z, y: (z, (y * 255).to(torch.uint8)), {}, ValueError, r"target must lie in \[0, 1\]"),
    (lambda z, y: (z, y.long()), {}, TypeError, "target must have dtype"),
    (lambda z, y: (z, y), {"gamma": -0.5}, ValueError, "gamma must be >= 0"),
    (lambda z, y: (z, y), {"lam": -0.1}, ValueError, "lam must be >= 0"),
    (lambda z, y: (z, y), {"lam": 1.5}, ValueError, "lam must be <= 1"),
    (lambda z, y: (z, y), {"eps": 0.0}, ValueError, "eps must be > 0"),
    (lambda z, y: (z, y), {"eps": -1e-6}, ValueError, "eps must be > 0"),
    # Found by tests/ops/test_fuzz.py: the torch path overflowed ("value cannot be converted to
    # type float") where the native one returned a loss, and their gradients differed.
    (lambda z, y: (z, y), {"eps": 2.0}, ValueError, "eps must be <= 1"),
    (lambda z, y: (z, y), {"eps": 1e308}, ValueError, "eps must be <= 1"),
    (lambda z, y: (z, y), {"gamma": float("nan")}, ValueError, "gamma must be finite"),
    (lambda z, y: (z, y), {"detach_factor": 1}, TypeError, "detach_factor must be a bool"),
    (lambda z, y: (z.long(), y), {}, TypeError, "logits must have dtype"),
    (lambda z, y: (z.half(), y), {}, TypeError, "logits must have dtype"),
    (lambda z, y: (z[0, 0], y[0, 0]), {}, ValueError, "logits must have shape"),
    (lambda z, y: (z[:, :0], y[:, :0]), {}, ValueError, "logits is empty"),
    (lambda z, y: (z.cpu().numpy(), y), {}, TypeError, "logits must be a torch.Tensor"),
    (lambda z, y: (z, y.tolist()), {}, TypeError, "target must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_inputs(case, backend, device):
    change, kwargs, error, message = BAD[case]
    logits, target = change(*make((2, 4, 5), torch.float32, device))
    with pytest.raises(error, match=message):
        concentrated_loss(logits, target, backend=backend, **kwargs)


def test_kernel_rechecks_sizes():
    c = native_module()
    with pytest.raises(ValueError, match="batch"):
        c.concentrated_workspace_bytes_cpu(0, 5, "float32")
    logits, target = make((1, 3), torch.float32)
    out = torch.empty(()), torch.empty(1, 4, dtype=torch.float64), torch.empty(4, dtype=torch.float64)
    ptrs = (logits.data_ptr(), target.data_ptr())
    with pytest.raises(ValueError, match="workspace too small"):
        c.concentrated_cpu(*ptrs, 1, 3, 0.5, 0.95, 1e-6, out[0].data_ptr(),
                                        out[1].data_ptr(), out[2].data_ptr(), 8, "float32")
    with pytest.raises(ValueError, match="dtype"):
        c.concentrated_cpu(*ptrs, 1, 3, 0.5, 0.95, 1e-6, out[0].data_ptr(),
                                        out[1].data_ptr(), out[2].data_ptr(), 32, "int32")


def test_kernel_rejects_eps_past_1():
    c = native_module()
    logits, target = make((1, 3), torch.float32)
    out = torch.empty(()), torch.empty(1, 4, dtype=torch.float64), torch.empty(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\]"):
        c.concentrated_cpu(logits.data_ptr(), target.data_ptr(), 1, 3, 0.5, 0.95, 2.0, out[0].data_ptr(),
                           out[1].data_ptr(), out[2].data_ptr(), 32, "float32")


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_meta_tensors_give_meta_results(backend):
    """Forward and backward on shapes only (found by tests/ops/test_fuzz.py: "Cannot copy out of
    meta tensor", and with grad, the native path's "no native kernel for device meta")."""
    logits = torch.empty(2, 5, 5, device="meta", requires_grad=True)
    loss = concentrated_loss(logits, torch.empty(2, 5, 5, device="meta"), backend=backend)
    assert loss.device.type == "meta" and loss.shape == ()
    grad, = torch.autograd.grad(loss, logits)
    assert grad.device.type == "meta" and grad.shape == logits.shape


def test_torch_compile(device):
    # fullgraph: the op and its backward are traced through register_fake / register_autograd.
    logits, target = make((2, 1, 10, 12), torch.float32, device)

    def loss_fn(z, y):
        return concentrated_loss(z, y, detach_factor=False, backend="native")

    def loss_and_grad(fn):
        z = logits.clone().requires_grad_()
        loss = fn(z, target)
        loss.backward()
        return loss.detach(), z.grad

    torch._dynamo.reset()
    got = loss_and_grad(torch.compile(loss_fn, fullgraph=True))
    want = loss_and_grad(loss_fn)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.cuda
def test_cuda_device_mismatch_and_stream():
    logits, target = make((3, 40, 30), torch.float32, "cuda")
    with pytest.raises(ValueError, match="one device"):
        concentrated_loss(logits, target.cpu(), backend="native")
    want = native(logits, target)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = native(logits, target)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
