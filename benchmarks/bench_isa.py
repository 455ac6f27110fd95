"""The CPU kernels at every instruction-set level of the dispatching build (generic x86-64-v2,
avx2 x86-64-v3, avx512 x86-64-v4: what the wheel loads on this machine) against another build of
the same sources, in one process: the four ops and PatchCore predict. The other build is either a
-march=native build (the old default) or another dispatching build, taken at the level this
process loads: e.g. the installed wheel of packaging/build_wheel.sh (zig's clang, libomp) against
the system compiler's build of `pip install -e .` (GCC, libgomp), run from the wheel's venv.

Build the native comparison first (the module lands in build/native, outside the package):

    cmake -S . -B build/native -G Ninja -DSKBUILD=ON -DPYANOM_CPU_ARCH=native -DPYANOM_CUDA=OFF \
        -Dpybind11_DIR=$(python3 -m pybind11 --cmakedir) && cmake --build build/native
    python3 -P benchmarks/bench_isa.py build/native [rounds] [case,words]   # e.g. 30 self_attention
    WHEEL_VENV/bin/python -P benchmarks/bench_isa.py build/dev [rounds] [case,words]

Every round runs each case once per level, in turn, so that load changes on a shared machine hit
all levels alike; the table gives the minimum over rounds and each level's ratio to the other build.

Without another build (folder "-") it times the levels alone, e.g. to compare two checkouts, run in
each (one core's CPU time, which a loaded machine disturbs far less than wall time):

    OMP_NUM_THREADS=1 PYANOM_BENCH_TIMER=process_time python3 -P benchmarks/bench_isa.py - 3 \
        greedy,knn,self,channel,concentrated
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

import pyanom
from pyanom import _build
from pyanom.data import open_dataset
from pyanom.ops import (channel_self_attention, concentrated_loss, greedy_coreset, knn_scores,
                        self_attention)


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"pyanom_other_build.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def other_build(folder: str, level: str):
    """(label, kernels) of the build in `folder`: its -march=native module, or the kernels of its
    dispatching build at `level`, loaded beside the package's own."""
    base = _load_module(next(Path(folder).glob("_C.*.so")), "_C")
    if base.build_info()["cpu_isa"] == "native":
        return "native", base
    label = f"{level} of {Path(folder).name}"
    if _build.ISA_MODULES[level] == "_C":
        return label, base
    cpu = _load_module(next(Path(folder).glob(f"{_build.ISA_MODULES[level]}.*.so")), _build.ISA_MODULES[level])
    return label, _build.merged_kernels(base, cpu, level)


def cases():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(40_000, 1536, generator=gen) @ torch.randn(1536, 96, generator=gen)
    features = features @ torch.randn(96, 1536, generator=gen) / 40  # low-rank, like patch features
    queries, bank = torch.randn(2048, 1536, generator=gen), torch.randn(2140, 1536, generator=gen)
    maps = torch.randn(4, 512, 28, 28, generator=gen)
    channel_maps = torch.relu(torch.randn(8, 112, 16, 16, generator=gen)) * 4
    logits = torch.randn(8, 232, 640, generator=gen)
    target = (torch.rand(8, 232, 640, generator=gen) > 0.9).float()

    def loss_step():
        z = logits.clone().requires_grad_(True)
        concentrated_loss(z, target, backend="native").backward()

    def patchcore_predict():
        """Fitted on first use (the fit is not timed) and kept."""
        if not fitted:
            root = os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
            data = Path(root) / "mvtec" / "bottle"
            det = pyanom.create("patchcore", coreset_ratio=0.01)
            det.fit(open_dataset(data, "train").normal(), progress=False)
            test = open_dataset(data, "test")
            fitted.append((det, torch.stack([test[i]["image"] for i in range(8)])))
            return None
        det, images = fitted[0]
        return det.predict(images, batch_size=8)

    fitted = []
    return {
        "greedy_coreset 40000x1536, k=400": lambda: greedy_coreset(features, 400, backend="native"),
        "knn_scores 2048 x 2140 x 1536, k=9": lambda: knn_scores(queries, bank, 9, backend="native"),
        "self_attention 4x512x28x28": lambda: self_attention(maps, backend="native"),
        "channel_self_attention 8x112x16x16": lambda: channel_self_attention(channel_maps, backend="native"),
        "concentrated_loss fwd+bwd 8x232x640": loss_step,
        "PatchCore predict, 8 bottle images": patchcore_predict,
    }


def main(other_folder: str, rounds: int, only: str = "") -> None:
    info = pyanom.build_info()
    levels = {level: _build.kernels_for(level) for level in info["cpu_isa_built"]
              if level in info["cpu_isa_supported"]}
    dispatched = info["cpu_isa"]
    other = None
    if other_folder != "-":
        other, kernels = other_build(other_folder, dispatched)
        levels[other] = kernels
    work = {case: fn for case, fn in cases().items() if any(word in case for word in only.split(","))}
    timer = getattr(time, os.environ.get("PYANOM_BENCH_TIMER", "perf_counter"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dispatched level: {dispatched}, "
          f"{rounds} rounds, min seconds of {timer.__name__}\n")
    names = list(levels)
    compared = names[:-1] if other else []
    print("| case | " + " | ".join(names) + "".join(f" | {n} / {other}" for n in compared) + " |")
    print("|---" * (len(names) + len(compared) + 1) + "|")
    for case, fn in work.items():
        best = dict.fromkeys(levels, float("inf"))
        for r in range(rounds + 1):  # round 0 warms up
            for name, kernels in levels.items():
                _build._KERNELS = kernels
                start = timer()
                with torch.no_grad() if "loss" not in case else torch.enable_grad():
                    fn()
                if r:
                    best[name] = min(best[name], timer() - start)
        ratios = "".join(f" | {best[n] / best[other]:.3f}" for n in compared)
        print(f"| {case} | " + " | ".join(f"{best[n]:.4f}" for n in names) + f"{ratios} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5, sys.argv[3] if len(sys.argv) > 3 else "")
