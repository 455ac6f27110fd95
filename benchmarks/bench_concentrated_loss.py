"""concentrated_loss forward + backward: fused native kernels vs autograd through the reference.

    PYTHONPATH=$PWD python3 -P -m pytest benchmarks/bench_concentrated_loss.py -q

Both backends run on the same inputs in one run (float32 logits, binary targets); each round
is the public call with its input checks plus torch.autograd.grad. Targets: native >= 3x
on the CPU (B = 8 at 232x640, B = 32 at 256x256), >= 5x on CUDA (B = 32 at 512x512).
"""

import functools

import pytest
import torch

from pyanom.ops import concentrated_loss

CASES = [("cpu", 8, 232, 640), ("cpu", 32, 256, 256)]
if torch.cuda.is_available():
    CASES.append(("cuda", 32, 512, 512))


@functools.lru_cache(maxsize=None)
def inputs(device, b, h, w):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(b, h, w, generator=gen) * 3).to(device).requires_grad_()
    target = (torch.rand(b, h, w, generator=gen) > 0.9).float().to(device)
    return logits, target


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}-{c[2]}x{c[3]}")
def test_forward_backward(benchmark, case, backend):
    device = case[0]
    logits, target = inputs(*case)
    benchmark.group = "concentrated_loss fwd+bwd {}: B={} {}x{}".format(*case)

    def step():
        loss = concentrated_loss(logits, target, backend=backend)
        grad = torch.autograd.grad(loss, logits)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return grad

    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
