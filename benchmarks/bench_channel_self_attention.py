r"""channel_self_attention: the native CPU kernel vs its plain-torch twin (pyanom.ops.reference),
on the same inputs in one run. Target: native >= 5x the twin at B = 8, C = 112, 16x16 (the
Lite0 stride-16 map of 8 images at 256 px); 8x8 x 192 channels is what sa_patchcore feeds it.

    OMP_NUM_THREADS=1 python3 -P -m pytest benchmarks/bench_channel_self_attention.py \
        --benchmark-columns=min,median,max,rounds
"""

import pytest
import torch

from pyanom.ops import channel_self_attention, reference

SIZES = [(8, 112, 16), (8, 192, 8)]


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"B{s[0]}-C{s[1]}-{s[2]}x{s[2]}")
def maps(request):
    b, c, side = request.param
    gen = torch.Generator().manual_seed(side)
    return torch.relu(torch.randn(b, c, side, side, generator=gen)) * 4  # as the detector feeds it


IMPLS = {
    "native": lambda x: channel_self_attention(x, backend="native"),
    "reference": reference.channel_self_attention,
}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_channel_self_attention(benchmark, maps, impl):
    b, c, side = maps.shape[0], maps.shape[1], maps.shape[-1]
    benchmark.group = f"channel_self_attention B={b} C={c} {side}x{side}"
    with torch.no_grad():
        out = benchmark.pedantic(IMPLS[impl], args=(maps,), rounds=7, warmup_rounds=1, iterations=1)
    torch.testing.assert_close(out, reference.channel_self_attention(maps.double()).float(),
                               rtol=1e-4, atol=1e-4)
