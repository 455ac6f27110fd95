"""PatchCore on MVTec AD bottle (EfficientNet-Lite0, 256 px, coreset 1%): per-image predict time
at batch 1 and 32 for pyanom (native kernels; images channels_last and, for comparison, the
contiguous layout), onnxruntime CPU and OpenVINO CPU, interleaved in one process; then each
runner alone in a fresh process for its peak RSS and image AUROC on the whole test set.

    python3 -P benchmarks/bench_export.py [--data ../shared/data] [--threads 2] [--rounds 3] [--model M.pyanom]
    python3 -P benchmarks/bench_export.py --backbone   # the backbone alone: contiguous vs channels_last
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNERS = ("native", "native_contiguous", "onnxruntime", "openvino")

# One runner in a fresh process: load, decode the test set, one pass at batch 32.
ALONE = """
import json, sys
import numpy as np
runner, model, folders, root, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5])
from pyanom.data.files import list_images
paths = sorted(p for d in sorted(__import__("pathlib").Path(root, "test").iterdir()) for p in list_images(d))
labels = np.array([p.parent.name != "good" for p in paths])
if runner.startswith("native"):
    import torch, pyanom
    from pyanom.data import open_images
    torch.set_num_threads(threads)
    det = pyanom.load(model)
    scores = det.predict(open_images(*paths, image_size=det.image_size)).image_scores.numpy()
else:
    from pyanom.export.runtime import load
    scores = load(folders[runner], backend=runner, threads=threads).predict_files(paths).image_scores
order = np.argsort(scores)
ranks = np.empty(len(scores)); ranks[order] = np.arange(1, len(scores) + 1)
pos = labels.sum(); auroc = (ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos))
# VmHWM, not ru_maxrss: Linux carries the parent's maxrss across fork + exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": round(hwm / 1024), "image_auroc": auroc}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch1-images", type=int, default=8)
    parser.add_argument("--model", type=Path, help="a fitted .pyanom to use instead of fitting one")
    parser.add_argument("--backbone", action="store_true", help="time only the backbone's memory formats")
    args = parser.parse_args()
    if args.backbone:
        return backbone_layouts(args.threads, args.rounds)

    import numpy as np
    import torch

    import pyanom
    from pyanom.data import open_dataset
    from pyanom.export import export, load

    torch.set_num_threads(args.threads)
    bottle = args.data / "mvtec" / "bottle"
    work = Path(tempfile.mkdtemp(prefix="pyanom-bench-export-"))
    if args.model:
        det, model = pyanom.load(args.model), args.model
    else:
        det = pyanom.create("patchcore", coreset_ratio=0.01)
        start = time.perf_counter()
        det.fit(open_dataset(bottle, "train").normal(), progress=False)
        print(f"fit {time.perf_counter() - start:.1f} s")
        model = det.save(work / "bottle.pyanom")
    print(f"memory bank {tuple(det.memory_bank.shape)}")
    folders = {}
    for fmt, runner in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        start = time.perf_counter()
        folders[runner] = str(export(model, work / fmt, format=fmt))
        size = sum(p.stat().st_size for p in Path(folders[runner]).iterdir() if p.name.startswith("model"))
        print(f"export {fmt}: {time.perf_counter() - start:.1f} s, model files {size / 2**20:.2f} MiB")
    print(f"memory bank {det.memory_bank.numel() * 4 / 2**20:.2f} MiB; .pyanom {model.stat().st_size / 2**20:.2f} MiB")

    test = open_dataset(bottle, "test")
    images = torch.stack([test[i]["image"] for i in range(32)])
    batch1 = images[:args.batch1_images]
    runtimes = {r: load(folders[r], backend=r, threads=args.threads) for r in ("onnxruntime", "openvino")}
    contiguous = pyanom.load(model)
    contiguous.backbone.memory_format = torch.contiguous_format

    def predict(runner, x, batch_size):
        if runner == "native":
            return det.predict(x, batch_size=batch_size).image_scores.numpy()
        if runner == "native_contiguous":
            return contiguous.predict(x, batch_size=batch_size).image_scores.numpy()
        return runtimes[runner].predict(x.numpy(), batch_size=batch_size).image_scores

    reference = predict("native", images, 32)
    times = {(r, b): [] for r in RUNNERS for b in (1, 32)}
    for r in RUNNERS:  # warm-up, and every runner gives pyanom's scores
        np.testing.assert_allclose(predict(r, images, 32), reference, rtol=1e-4)
    for _ in range(args.rounds):
        for r in RUNNERS:
            for b, x in ((32, images), (1, batch1)):
                start = time.perf_counter()
                predict(r, x, b)
                times[r, b].append((time.perf_counter() - start) / len(x) * 1000)
    print(f"\nms per image, min / median of {args.rounds} rounds, {args.threads} threads "
          f"(batch 32: 32 images, batch 1: {len(batch1)} images)")
    for (r, b), ts in times.items():
        print(f"{r:<18} batch {b:>2}: {min(ts):7.1f} / {sorted(ts)[len(ts) // 2]:7.1f}")
    for b in (1, 32):
        base = min(times["native", b])
        print(f"batch {b}: " + ", ".join(f"{r} {base / min(times[r, b]):.2f}x" for r in RUNNERS) + " (speed vs native)")

    print("\nalone in a fresh process, the whole test set at batch 32:")
    for r in ("native", "onnxruntime", "openvino"):
        out = subprocess.run([sys.executable, "-P", "-c", ALONE, r, str(model), json.dumps(folders), str(bottle),
                              str(args.threads)], capture_output=True, text=True, check=True).stdout
        print(f"{r:<18} {out.strip().splitlines()[-1]}")


def backbone_layouts(threads: int, rounds: int) -> None:
    """EfficientNet-Lite0 on 32 random 256 px images: contiguous input, channels_last input
    (pyanom's default), channels_last input and weights; interleaved rounds, ms per image."""
    import torch

    from pyanom.features import create_backbone

    torch.set_num_threads(threads)
    backbone = create_backbone("efficientnet_lite0")
    x = torch.rand(32, 3, 256, 256)
    layouts = {"contiguous": (torch.contiguous_format, torch.contiguous_format),
               "channels_last input": (torch.channels_last, torch.contiguous_format),
               "channels_last input + weights": (torch.channels_last, torch.channels_last)}
    times, maps = {k: [] for k in layouts}, {}
    for _ in range(rounds):
        for name, (images, weights) in layouts.items():
            backbone.memory_format = images
            backbone.network.to(memory_format=weights)
            start = time.perf_counter()
            maps[name] = backbone(x)
            times[name].append((time.perf_counter() - start) / len(x) * 1000)
    backbone.network.to(memory_format=torch.contiguous_format)
    for name, ts in times.items():
        diff = max(float((maps[name][k] - maps["contiguous"][k]).abs().max()) for k in maps[name])
        print(f"{name:<30} {' '.join(f'{t:6.1f}' for t in ts)} ms/image; "
              f"{sum(times['contiguous']) / sum(ts):.2f}x by the sum; max difference {diff:.2g}")


if __name__ == "__main__":
    main()
