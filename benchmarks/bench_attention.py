r"""self_attention on SA-PatchCore-sized feature maps: B = 32, C = 1024, 16x16 and 32x32.

native (pyanom's CPU kernel) vs torch scaled_dot_product_attention (the bare call on the
[B, 1, H*W, C] view, and pyanom's torch backend, which adds the layout copies) vs the reference
formula, on the same inputs in one run. Target: native within 1.25x of SDPA or faster.

    PYTHONPATH=$PWD python3 -P -m pytest benchmarks/bench_attention.py \
        --benchmark-columns=min,median,mean,stddev,rounds

(add OMP_NUM_THREADS=1 and --benchmark-timer=time.process_time for one core's CPU time, which
a busy shared machine disturbs far less than wall time).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pyanom.ops import reference, self_attention

SIDES = [16, 32]


@pytest.fixture(scope="module", params=SIDES, ids=lambda s: f"{s}x{s}")
def maps(request):
    side = request.param
    gen = torch.Generator().manual_seed(side)
    return torch.randn(32, 1024, side, side, generator=gen)


def sdpa(x):
    b, c, h, w = x.shape
    tokens = x.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)
    return F.scaled_dot_product_attention(tokens, tokens, tokens, scale=1.0 / math.sqrt(c))


IMPLS = {
    "native": lambda x: self_attention(x, backend="native"),
    "torch_sdpa": sdpa,
    "torch_backend": lambda x: self_attention(x, backend="torch"),
    "reference": reference.self_attention,
}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_self_attention(benchmark, maps, impl):
    side = maps.shape[-1]
    benchmark.group = f"self_attention B=32 C=1024 {side}x{side}"
    fn = IMPLS[impl]
    with torch.no_grad():
        out = benchmark.pedantic(fn, args=(maps,), rounds=5, warmup_rounds=1, iterations=1)
    if impl == "torch_sdpa":
        out = out.squeeze(1).transpose(1, 2).reshape(maps.shape)
    torch.testing.assert_close(out, reference.self_attention(maps), rtol=1e-3, atol=1e-4)
