"""CPU instruction-set levels: which module loads, the PYANOM_CPU_ISA override, and every level's
kernels against their pure-PyTorch twins.

Also a script: `python tests/ops/test_cpu_isa.py` compares the loaded level's kernels with the
twins and prints the level (used under qemu-user, where pytest over the whole suite is too slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pyanom import _build, build_info
from pyanom.ops import concentrated_loss, greedy_coreset, knn_scores, reference, self_attention

LEVELS = list(_build.ISA_MODULES)


def random(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def compare_with_twins() -> None:
    """Assert each op's native CPU kernel (at the loaded level) agrees with its reference."""
    queries, bank = random(64, 48, seed=1), random(300, 48, seed=2)
    dist, index = knn_scores(queries, bank, 5, backend="native")
    ref_dist, ref_index = reference.knn_scores(queries, bank, 5)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-10, atol=1e-10)
    assert torch.equal(index, ref_index), "knn_scores: indices differ from the reference"

    features = random(400, 64, seed=3)
    assert torch.equal(greedy_coreset(features, 40, projection_dim=32, seed=4, backend="native"),
                       reference.greedy_coreset(features, 40, projection_dim=32, seed=4))

    for shape in [(2, 16, 6, 7), (1, 8, 24, 24)]:
        x = random(*shape, seed=5, dtype=torch.float32)
        torch.testing.assert_close(self_attention(x, backend="native"), reference.self_attention(x),
                                   rtol=1e-4, atol=1e-5)

    # an error raised inside the level's module reaches Python as the same ValueError
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        self_attention(torch.full((1, 8, 6, 6), float("nan")), backend="native")

    logits, target = random(3, 40, 50, seed=6), (random(3, 40, 50, seed=7) > 0.8).double()
    grads = []
    for fn in (lambda z: concentrated_loss(z, target, backend="native"),
               lambda z: reference.concentrated_loss(z, target)):
        z = logits.clone().requires_grad_(True)
        loss = fn(z)
        loss.backward()
        grads.append((loss.detach(), z.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-8, atol=1e-12)


def test_loads_the_requested_or_the_highest_supported_level():
    info = build_info()
    assert info["cpu_isa"] in info["cpu_isa_built"]
    assert info["cpu_isa_supported"][0] == "generic"
    requested = os.environ.get("PYANOM_CPU_ISA", "").strip().lower()
    if requested not in ("", "auto"):
        assert info["cpu_isa"] == requested
    elif info["cpu_isa_built"] != [info["cpu_isa"]]:  # a dispatching build, not a -march one
        assert info["cpu_isa"] == [lv for lv in info["cpu_isa_built"] if lv in info["cpu_isa_supported"]][-1]


def test_choose_level_picks_the_best_and_refuses_what_the_cpu_lacks():
    built, choose = ["generic", "avx2", "avx512"], _build._choose_level
    assert choose(built, ["generic", "avx2"], "") == "avx2"
    assert choose(built, ["generic", "avx2", "avx512"], "auto") == "avx512"
    assert choose(built, ["generic", "avx2", "avx512"], "generic") == "generic"
    assert choose(["generic"], ["generic", "avx2"], "") == "generic"  # a non-x86 build
    assert choose(["native"], ["generic"], "") == "native"  # PYANOM_CPU_ARCH=native
    with pytest.raises(RuntimeError, match="PYANOM_CPU_ISA=avx512: this CPU lacks it"):
        choose(built, ["generic", "avx2"], "avx512")
    with pytest.raises(RuntimeError, match="this build has no such module"):
        choose(["generic"], ["generic", "avx2"], "avx2")
    with pytest.raises(ValueError, match="PYANOM_CPU_ISA must be"):
        choose(built, ["generic"], "sse4")


V3_FLAGS = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"}
V4_FLAGS = V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


@pytest.mark.skipif(not (sys.platform.startswith("linux") and os.path.exists("/proc/cpuinfo")
                         and "avx512" in build_info().get("cpu_isa_built", [])),
                    reason="an x86-64 dispatching build on Linux (the kernel's view of the CPU)")
def test_supported_levels_match_the_kernels_view_of_the_cpu():
    """The module's cpuid check against the flags Linux reports (which it clears when the OS does
    not save the registers): a check that said too little would leave a fast CPU on slow code."""
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    expected = ["generic"] + (["avx2"] if V3_FLAGS <= flags else []) + (["avx512"] if V4_FLAGS <= flags else [])
    assert build_info()["cpu_isa_supported"] == expected


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_agrees_with_the_twins(level, monkeypatch):
    info = build_info()
    if level not in info["cpu_isa_built"] or level not in info["cpu_isa_supported"]:
        pytest.skip(f"{level}: built {info['cpu_isa_built']}, this CPU runs {info['cpu_isa_supported']}")
    kernels = _build.kernels_for(level)
    assert kernels.build_info()["cpu_isa"] == level
    monkeypatch.setattr(_build, "_KERNELS", kernels)
    compare_with_twins()


def test_environment_forces_a_level_and_rejects_a_bad_one():
    level = build_info()["cpu_isa_supported"][0]
    code = "import pyanom; print(pyanom.build_info()['cpu_isa'])"
    env = {**os.environ, "PYANOM_CPU_ISA": level}
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True)
    if "generic" in build_info()["cpu_isa_built"]:
        assert done.stdout.strip() == level, done.stderr
    env["PYANOM_CPU_ISA"] = "sse4"
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "PYANOM_CPU_ISA must be auto, generic, avx2 or avx512" in done.stderr


def test_list_and_version_say_which_level_runs(capsys):
    from pyanom.cli import main

    level = build_info()["cpu_isa"]
    assert main(["list"]) == 0
    assert f"kernels: CPU {level} (built: " in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_isa"] == level


if __name__ == "__main__":
    compare_with_twins()
    print(f"pyanom kernels at level {build_info()['cpu_isa']} agree with their twins")
