"""Property-based tests of the ops' argument checks: whatever is passed (shapes, dtypes, devices,
NaN and Inf, k at and past its bounds, odd strides, values near the float range), both backends
raise the same clear TypeError or ValueError, or both return and the native answer is the torch
twin's (the reference). A crash of the interpreter fails the run.

Each example is a valid call (random sizes, layouts, scales and grad) with, now and then, one
tensor made wrong and, about as often, an argument out of its range or of the wrong type. The
examples derive from each test's name (hypothesis' derandomize), so CI sees the same ones every
run; PYANOM_FUZZ_EXAMPLES sets how many per test (default 40), e.g.
    PYANOM_FUZZ_EXAMPLES=2000 python3 -P -m pytest tests/ops/test_fuzz.py
Cases the fuzzing found are kept as plain tests in the test_<stem>.py files.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyanom.ops import (channel_self_attention, concentrated_loss, greedy_coreset, knn_scores,
                        self_attention)

FUZZ = settings(max_examples=int(os.environ.get("PYANOM_FUZZ_EXAMPLES", "40")), derandomize=True,
                deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FLOATS = (torch.float32, torch.float64)
OTHER_DTYPES = (torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool, torch.complex64)
INT64_MAX = 2**63 - 1
NOT_INTS = (2.0, "3", None, torch.tensor(2), 2**64, -(2**64))


def sometimes(good: list, bad: list):
    """One of good three times in four, else one of bad."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good),
                     st.sampled_from(bad))


@st.composite
def arrays(draw, shape, dtype, device: str) -> torch.Tensor:
    """A valid tensor of this shape and dtype: random values at a random scale (tiny to near where
    squares overflow float32), contiguous, transposed, strided or expanded, sometimes needing grad."""
    layout = draw(st.sampled_from(["contiguous", "contiguous", "transposed", "strided", "expanded"]))
    base = list(shape)
    if layout == "transposed" and len(shape) >= 2:
        base[-1], base[-2] = shape[-2], shape[-1]
    elif layout == "strided" and shape:
        base[-1] = 2 * shape[-1]
    elif layout == "expanded" and shape:
        base[0] = 1
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-3, 1e3, 1e-20, 1e15]))
    x = (torch.randn(base, generator=gen, dtype=torch.float64) * scale).to(dtype)
    if layout == "transposed" and len(shape) >= 2:
        x = x.transpose(-1, -2)
    elif layout == "strided" and shape:
        x = x[..., ::2]
    elif layout == "expanded" and shape:
        x = x.expand(shape)
    x = x.to(device)
    if draw(st.integers(0, 5)) == 0:
        x = x.detach().requires_grad_()
    return x


@st.composite
def spoiled(draw, x: torch.Tensor) -> torch.Tensor:
    """x with one thing wrong: a dtype the ops do not take, a rank too many or too few, an empty
    dimension, a NaN or Inf, or the meta device (which the ops take: shapes only)."""
    how = draw(st.sampled_from(["dtype", "rank+", "rank-", "empty", "nan", "meta"]))
    x = x.detach()
    if how == "dtype":
        dtype = draw(st.sampled_from(OTHER_DTYPES))
        return (x > 0) if dtype == torch.bool else x.clamp(-100, 100).to(dtype)
    if how == "rank+":
        return x.unsqueeze(0)
    if how == "rank-":
        return x.reshape(-1)[0] if x.numel() else x.sum()
    if how == "empty":
        return x.narrow(draw(st.integers(0, x.dim() - 1)), 0, 0)
    if how == "nan":
        x = x.clone()  # keeps the layout
        at = np.unravel_index(draw(st.integers(0, x.numel() - 1)), x.shape)
        x[tuple(int(i) for i in at)] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return x
    return x.to("meta")


def wrong_by_chance(draw, tensors: dict) -> dict:
    """Now and then, one of the tensors spoiled."""
    if draw(st.sampled_from([False, False, True])):
        name = draw(st.sampled_from(sorted(tensors)))
        tensors = {**tensors, name: draw(spoiled(tensors[name]))}
    return tensors


def counts(bound: int):
    """k-like arguments: mostly in range, also at and past the bounds, huge, or not ints at all."""
    return st.one_of(st.integers(1, bound), st.integers(1, bound), st.integers(1, bound),
                     st.integers(-2, bound + 2),
                     st.sampled_from([0, -1, INT64_MAX, INT64_MAX + 1, True, np.int64(2), *NOT_INTS]))


def outcome(call, backend: str):
    """("ok", result) or ("error", type, message); any other exception propagates (a failure)."""
    try:
        return ("ok", call(backend))
    except (TypeError, ValueError) as error:
        assert str(error), f"{type(error).__name__} without a message"
        return ("error", type(error), str(error))


def both(call):
    """(native result, torch result) where both return; None where both raise the same error."""
    native, twin = outcome(call, "native"), outcome(call, "torch")
    if native[0] == "error" or twin[0] == "error":
        assert native == twin, (f"native: {native[1:] if native[0] == 'error' else 'returned'}, "
                                f"torch: {twin[1:] if twin[0] == 'error' else 'returned'}")
        return None
    return native[1], twin[1]


def same_meta(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and got.dtype == want.dtype and got.device == want.device


def matches_twin(results, tol: float) -> bool:
    """Asserts the native result close to the twin's (relative tol, absolute tol times the
    largest value); False where nothing more is to be compared: both raised, or meta results."""
    if results is None:
        return False
    got, want = results
    if got.device.type == "meta":
        assert same_meta(got, want)
        return False
    torch.testing.assert_close(got.detach().cpu(), want.detach().cpu(), rtol=tol, atol=tol * largest(want),
                               equal_nan=True)
    return True


def largest(*tensors) -> float:
    """The largest magnitude of the inputs (at least 1), for tolerances that scale with them."""
    return max([1.0] + [float(t.detach().abs().max()) for t in tensors if t.numel()])


@FUZZ
@given(data=st.data())
def test_knn_scores(device, data):
    q, n, d = (data.draw(st.integers(1, 12)) for _ in range(3))
    dtype = data.draw(st.sampled_from(FLOATS))
    t = wrong_by_chance(data.draw, {"queries": data.draw(arrays((q, d), dtype, device)),
                                    "bank": data.draw(arrays((n, d), dtype, device))})
    if data.draw(st.integers(0, 7)) == 0:  # another feature count
        t["bank"] = data.draw(arrays((n, d + 1), dtype, device))
    k = data.draw(counts(n))
    chunk = data.draw(sometimes([None, 1, 7, 1000, INT64_MAX], [INT64_MAX + 1, 0, 2.0]))
    with torch.no_grad():
        results = both(lambda b: knn_scores(t["queries"], t["bank"], k, chunk_size=chunk, backend=b))
    if results is None:
        return
    (dist, index), (want_dist, want_index) = results
    assert index.dtype == torch.int64 and index.shape == want_index.shape
    if dist.device.type == "meta":
        assert same_meta(dist, want_dist)
        return
    # The expansion ||q||^2 - 2 q.b + ||b||^2 loses about eps D scale^2 in a squared distance, so
    # a distance is good to about sqrt(eps D) scale; either index may win a near tie, but each
    # must sit at its reported distance.
    queries, bank = t["queries"].detach(), t["bank"].detach()
    err = 4 * math.sqrt(torch.finfo(dtype).eps * d) * largest(queries, bank)
    torch.testing.assert_close(dist.cpu(), want_dist.cpu(), rtol=0, atol=err)
    exact = (queries.double()[:, None, :] - bank.double()[index]).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(exact.cpu(), dist.double().cpu(), rtol=0, atol=2 * err)


@FUZZ
@given(data=st.data())
def test_greedy_coreset(device, data):
    n, d = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 12))
    t = wrong_by_chance(data.draw, {"features": data.draw(arrays((n, d), data.draw(st.sampled_from(FLOATS)), device))})
    k = data.draw(counts(n))
    projection_dim = data.draw(sometimes([128, 1, 2, 5, INT64_MAX, INT64_MAX + 1], [0, -3, 2.0]))
    seed = data.draw(sometimes([0, 1, -1, INT64_MAX, -INT64_MAX - 1], [INT64_MAX + 1, "0"]))
    start = data.draw(st.sampled_from([None, None, None]) | counts(n).map(lambda s: s - 1 if isinstance(s, int) else s))
    results = both(lambda b: greedy_coreset(t["features"], k, projection_dim=projection_dim, seed=seed,
                                            start=start, backend=b))
    if results is None:
        return
    got, want = results
    assert same_meta(got, want) if got.device.type == "meta" else torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("op", [self_attention, channel_self_attention], ids=lambda f: f.__name__)
@FUZZ
@given(data=st.data())
def test_attention(op, device, data):
    shape = [data.draw(st.integers(1, 5)) for _ in range(4)]
    x = wrong_by_chance(data.draw, {"x": data.draw(arrays(shape, data.draw(st.sampled_from(FLOATS)), device))})["x"]
    if data.draw(st.booleans()):
        with torch.no_grad():
            results = both(lambda b: op(x, backend=b))
    else:
        native, twin = outcome(lambda b: op(x, backend=b), "native"), outcome(lambda b: op(x, backend=b), "torch")
        if x.requires_grad and twin[0] == "ok":  # the native kernels have no backward: said at once
            assert native[:2] == ("error", ValueError) and "has no backward pass" in native[2]
            return
        results = both(lambda b: op(x, backend=b))
    matches_twin(results, 1e-4 if x.dtype == torch.float32 else 1e-9)


@FUZZ
@given(data=st.data())
def test_concentrated_loss(device, data):
    shape = [data.draw(st.integers(1, 4)) for _ in range(data.draw(st.integers(2, 4)))]
    dtype = data.draw(st.sampled_from(FLOATS))
    logits = data.draw(arrays(shape, dtype, device))
    target = data.draw(st.sampled_from(["mask", "soft", "bool", "uint8", "float32"]))
    target = {"mask": lambda: (logits.detach() > 0).to(dtype), "soft": lambda: logits.detach().sigmoid(),
              "bool": lambda: logits.detach() > 0, "uint8": lambda: (logits.detach() > 0).to(torch.uint8),
              "float32": lambda: (logits.detach() > 0).float()}[target]()
    t = wrong_by_chance(data.draw, {"logits": logits, "target": target})
    params = dict(gamma=data.draw(sometimes([0.5, 0.0, 2.0, 1e300], [-1.0, math.nan, "1"])),
                  lam=data.draw(sometimes([0.95, 0.0, 1.0], [1.5, -0.1, math.inf])),
                  eps=data.draw(sometimes([1e-6, 1e-3, 1.0, 1e-300], [0.0, -1e-6, math.nan, 2.0, 1e308])),
                  detach_factor=data.draw(sometimes([True, False], [1, None])))
    losses = both(lambda b: concentrated_loss(t["logits"], t["target"], **params, backend=b))
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    if matches_twin(losses, tol) and t["logits"].requires_grad:
        matches_twin([torch.autograd.grad(loss, t["logits"])[0] for loss in losses], tol)
