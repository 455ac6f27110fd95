"""PatchCore and SA-PatchCore on MVTec AD bottle (EfficientNet-Lite0, 256 px, coreset 1%): per-image
predict time at batch 1 and 32 for pyanom (native kernels; the backbone in float32 and, a
model fitted of its own, in bfloat16), onnxruntime CPU and OpenVINO CPU, interleaved in one
process; file sizes; then each runner alone in a fresh process for its peak RSS and image AUROC
on the whole test set; last, per detector, the fastest path at batch 32 against the issue's target.

    python3 -P benchmarks/bench_export.py [--data ../shared/data] [--threads 2] [--rounds 5]
        [--detectors patchcore sa_patchcore] [--model NAME=M.pyanom ...] [--json out.json]
    python3 -P benchmarks/bench_export.py --quick   # smoke test: small fits, 1 round; times meaningless
    python3 -P benchmarks/bench_export.py --backbone   # the backbone alone: what each speed-up gives
    python3 -P benchmarks/bench_export.py --parts [--model patchcore=M.pyanom]   # where predict's time goes
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNERS = ("native", "native_bf16", "onnxruntime", "openvino")
TARGET_MS = 10.0  # issue 20: the fastest CPU path at batch 32, per image, on 2 cores

# One runner in a fresh process: load, decode the test set (every `every`-th image), score at batch 32.
ALONE = """
import json, sys
import numpy as np
runner, model, folder, root, threads, every = sys.argv[1:7]  # model: that runner's own .pyanom
threads, every = int(threads), int(every)
from pyanom.data.files import list_images
paths = sorted(p for d in sorted(__import__("pathlib").Path(root, "test").iterdir()) for p in list_images(d))[::every]
labels = np.array([p.parent.name != "good" for p in paths])
if runner.startswith("native"):
    import torch, pyanom
    from pyanom.data import open_images
    torch.set_num_threads(threads)
    det = pyanom.load(model)
    scores = det.predict(open_images(*paths, image_size=det.image_size)).image_scores.numpy()
else:
    from pyanom.export.runtime import load
    scores = load(folder, backend=runner, threads=threads).predict_files(paths).image_scores
order = np.argsort(scores)
ranks = np.empty(len(scores)); ranks[order] = np.arange(1, len(scores) + 1)
pos = labels.sum(); auroc = (ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos))
# VmHWM, not ru_maxrss: Linux carries the parent's maxrss across fork + exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": round(hwm / 1024), "image_auroc": auroc, "images": len(paths)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch1-images", type=int, default=8)
    parser.add_argument("--detectors", nargs="+", default=["patchcore", "sa_patchcore"],
                        choices=["patchcore", "sa_patchcore"])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a fitted .pyanom to use for detector NAME instead of fitting one")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 20 training images, 8-image batches, 1 round, every 4th test image alone")
    parser.add_argument("--backbone", action="store_true",
                        help="time only the backbone: BatchNorm kept or folded, float32 or bfloat16")
    parser.add_argument("--parts", action="store_true", help="time the parts of PatchCore's float32 predict")
    args = parser.parse_args()
    if args.backbone:
        return backbone_variants(args.threads, args.rounds)
    if args.parts:
        return predict_parts(args)
    if args.quick:
        args.rounds, args.batch1_images = 1, 2
    models = dict(spec.split("=", 1) for spec in args.model)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="pyanom-bench-export-"))
    results = {name: bench(name, models.get(name), work / name, args) for name in args.detectors}

    print(f"\nsummary: ms per image at batch 32 (min of {args.rounds} rounds), {args.threads} threads; "
          f"target <= {TARGET_MS:g} ms")
    for name, res in results.items():
        b32 = {r: res["ms_per_image"][r]["32"]["min"] for r in RUNNERS}
        best = min(b32, key=b32.get)
        verdict = "meets" if b32[best] <= TARGET_MS else "misses"
        auroc = ", ".join(f"{r} {a['image_auroc']:.4f}" for r, a in res["alone"].items())
        print(f"{name:<13} " + ", ".join(f"{r} {t:.1f}" for r, t in b32.items())
              + f"; fastest: {best} ({verdict} the target); image AUROC {auroc}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


def bench(name: str, model: str | None, work: Path, args) -> dict:
    """Every figure for one detector (see the module docstring)."""
    import numpy as np
    import torch

    import pyanom
    from pyanom.data import open_dataset
    from pyanom.export import export, load

    print(f"\n== {name}")
    bottle = args.data / "mvtec" / "bottle"
    work.mkdir(parents=True)
    res = {"detector": name, "threads": args.threads, "rounds": args.rounds}
    if model:
        det, model = pyanom.load(model), Path(model)
    else:
        det, model = fit(name, "float32", bottle, work, args, res)
    half, half_model = fit(name, "bfloat16", bottle, work, args, res)
    banks = {k: tuple(t.shape) for k, t in det.state_tensors().items() if t is not None and t.ndim == 2}
    print("memories " + ", ".join(f"{k} {v}" for k, v in banks.items()))
    folders, sizes = {}, {".pyanom": model.stat().st_size}
    for fmt, runner in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        start = time.perf_counter()
        folders[runner] = str(export(model, work / fmt, format=fmt))
        res[f"export_{fmt}_s"] = time.perf_counter() - start
        sizes[fmt] = sum(p.stat().st_size for p in Path(folders[runner]).iterdir() if p.name.startswith("model"))
        print(f"export {fmt}: {res[f'export_{fmt}_s']:.1f} s")
    res["file_mib"] = {k: v / 2**20 for k, v in sizes.items()}
    print("files: " + ", ".join(f"{k} {v:.2f} MiB" for k, v in res["file_mib"].items()))

    test = open_dataset(bottle, "test")
    images = torch.stack([test[i]["image"] for i in range(0, len(test), max(1, len(test) // 32))][:32])
    if args.quick:
        images = images[:8]
    batch1 = images[:args.batch1_images]
    runtimes = {r: load(folders[r], backend=r, threads=args.threads) for r in ("onnxruntime", "openvino")}
    def predict(runner, x, batch_size):
        if runner.startswith("native"):
            return (half if runner == "native_bf16" else det).predict(x, batch_size=batch_size).image_scores.numpy()
        return runtimes[runner].predict(x.numpy(), batch_size=batch_size).image_scores

    reference = predict("native", images, 32)
    times = {(r, b): [] for r in RUNNERS for b in (1, 32)}
    for r in RUNNERS:  # warm-up, and every export gives pyanom's scores (bfloat16 has a memory of its own)
        scores = predict(r, images, 32)
        if r != "native_bf16":
            np.testing.assert_allclose(scores, reference, rtol=1e-4, err_msg=f"{name} {r}")
    for _ in range(args.rounds):
        for r in RUNNERS:
            for b, x in ((32, images), (1, batch1)):
                start = time.perf_counter()
                predict(r, x, b)
                times[r, b].append((time.perf_counter() - start) / len(x) * 1000)
    res["ms_per_image"] = {r: {str(b): {"min": min(times[r, b]), "median": float(np.median(times[r, b])),
                                        "all": times[r, b]} for b in (1, 32)} for r in RUNNERS}
    print(f"ms per image, min / median of {args.rounds} rounds, {args.threads} threads "
          f"(batch 32: {len(images)} images, batch 1: {len(batch1)} images)")
    for (r, b), ts in times.items():
        print(f"{r:<18} batch {b:>2}: {min(ts):7.1f} / {float(np.median(ts)):7.1f}")
    for b in (1, 32):
        base = min(times["native", b])
        print(f"batch {b}: " + ", ".join(f"{r} {base / min(times[r, b]):.2f}x" for r in RUNNERS) + " (speed vs native)")

    print("alone in a fresh process, the test set at batch 32:")
    res["alone"] = {}
    for r in RUNNERS:
        own = half_model if r == "native_bf16" else model
        out = subprocess.run([sys.executable, "-P", "-c", ALONE, r, str(own), folders.get(r, ""), str(bottle),
                              str(args.threads), "4" if args.quick else "1"],
                             capture_output=True, text=True, check=True).stdout
        res["alone"][r] = json.loads(out.strip().splitlines()[-1])
        print(f"{r:<18} {res['alone'][r]}")
    return res


def fit(name: str, precision: str, bottle: Path, work: Path, args, res: dict):
    """The detector fitted on bottle's training set with its backbone at `precision`, and its file."""
    import pyanom
    from pyanom.data import open_dataset

    det = pyanom.create(name, coreset_ratio=0.01, precision=precision)
    train = open_dataset(bottle, "train").normal()
    if args.quick:
        train = train.subset(range(20))
    start = time.perf_counter()
    det.fit(train, progress=False)
    res[f"fit_{precision}_s"] = time.perf_counter() - start
    print(f"fit ({precision}) {res[f'fit_{precision}_s']:.1f} s")
    return det, det.save(work / f"{name}-{precision}.pyanom")


def interleaved(variants: dict, rounds: int, images: int) -> dict[str, list[float]]:
    """ms per image of each callable, over `rounds` rounds that run every variant in turn."""
    times = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / images * 1000)
    return times


def backbone_variants(threads: int, rounds: int) -> None:
    """EfficientNet-Lite0 to its stride-16 tap on 32 random 256 px images, 8 at a time (as
    PatchCore runs it), channels_last input, interleaved rounds: the network as its weights file
    has it (BatchNorm kept); pyanom's Backbone (BatchNorm folded), and the same without each of
    its other speed-ups (its own padding, padding before the expansion), or with channels_last
    weights (not taken);
    in bfloat16; and two alternatives not taken: two single-thread workers on 4-image chunks,
    and TorchScript (trace, freeze, optimize_for_inference)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from pyanom.allocator import retain_freed_memory
    from pyanom.features import create_backbone, create_network, efficientnet_lite

    retain_freed_memory()  # as Detector.predict does
    torch.set_num_threads(threads)
    x = torch.rand(32, 3, 256, 256)
    folded = create_backbone()
    kept = create_backbone()
    kept.network = create_network("efficientnet_lite0").eval()
    channels_last_weights = create_backbone()
    channels_last_weights.network.to(memory_format=torch.channels_last)
    half = create_backbone(precision="bfloat16")
    workers = ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,))

    class Taps(torch.nn.Module):  # the traceable form: normalised channels_last images in, two maps out
        def forward(self, images):
            maps = folded.network.features(images, {"blocks.2", "blocks.4"})
            return maps["blocks.2"], maps["blocks.4"]

    def normalised(chunk):
        return ((chunk - folded.mean) / folded.std).contiguous(memory_format=torch.channels_last)

    with torch.no_grad():
        script = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(Taps().eval(), normalised(x[:8]))))

    def without(name: str, backbone):
        """Run `backbone` with efficientnet_lite's `name` switched off for the call."""
        def run():
            owner = efficientnet_lite.MBConvBlock if name == "_pad_before_expanding" else efficientnet_lite
            saved = getattr(owner, name)
            setattr(owner, name, lambda *args: False)
            try:
                return [backbone(chunk) for chunk in x.split(8)]
            finally:
                setattr(owner, name, saved)
        return run

    def scripted():
        with torch.no_grad():
            return [dict(zip(("stride8", "stride16"), script(normalised(chunk)))) for chunk in x.split(8)]

    variants = {
        "BatchNorm kept": lambda: [kept(chunk) for chunk in x.split(8)],
        "folded, F.pad": without("_fast_pad", folded),
        "folded, pad after expanding": without("_pad_before_expanding", folded),
        "folded, weights channels_last": lambda: [channels_last_weights(chunk) for chunk in x.split(8)],
        "folded (pyanom)": lambda: [folded(chunk) for chunk in x.split(8)],
        "folded, bfloat16": lambda: [half(chunk) for chunk in x.split(8)],
        "two 1-thread workers": lambda: list(workers.map(folded, x.split(4))),
        "TorchScript": scripted,
    }
    maps = {name: {k: torch.cat([m[k] for m in fn()]) for k in ("stride8", "stride16")}
            for name, fn in variants.items()}
    times = interleaved(variants, rounds, len(x))
    base, reference = min(times["BatchNorm kept"]), maps["BatchNorm kept"]
    for name, ts in times.items():
        diff = max(float((maps[name][k] - reference[k]).abs().max() / reference[k].abs().max()) for k in reference)
        print(f"{name:<30} min {min(ts):6.2f} median {statistics.median(ts):6.2f} ms/image; {base / min(ts):.2f}x "
              f"by the minimum; largest difference {diff:.2g} of the map's range")


def predict_parts(args) -> None:
    """PatchCore float32 (bottle, coreset 0.01) on 32 test images at batch 32: the whole predict
    and its parts, interleaved: backbone (8 images per pass), patch embedding, kNN (pyanom's op,
    and the same distance product through torch.mm in float32 and bfloat16), the maps (pyanom's
    one-matrix-per-axis upsample_scores, and bilinear upsampling then gaussian_blur). Then the
    same parts at batch 1 against batch 32 (images one at a time against all 32 together),
    interleaved: where a single image pays more per image than the batch does."""
    import torch
    import torch.nn.functional as F

    import pyanom
    from pyanom.anomaly_map import gaussian_blur, upsample_scores
    from pyanom.data import open_dataset
    from pyanom.ops import knn_scores

    torch.set_num_threads(args.threads)
    bottle = args.data / "mvtec" / "bottle"
    models = dict(spec.split("=", 1) for spec in args.model)
    if "patchcore" in models:
        det = pyanom.load(models["patchcore"])
    else:
        det, _ = fit("patchcore", "float32", bottle, Path(tempfile.mkdtemp(prefix="pyanom-parts-")), args, {})
    test = open_dataset(bottle, "test")
    x = torch.stack([test[i]["image"] for i in range(0, len(test), max(1, len(test) // 32))][:32])
    bank = det.memory_bank
    with torch.inference_mode():
        features = [det.backbone(chunk) for chunk in x.split(8)]
        emb, (h, w) = det._embed(x)
        queries = emb.reshape(-1, emb.shape[-1]).contiguous()
        scores = knn_scores(queries, bank, 1)[0][:, 0].reshape(len(x), h, w)
        half_q, half_bank = queries.bfloat16(), bank.bfloat16()
        sigma = det.config.blur_sigma
        variants = {
            "predict": lambda: det.predict(x),
            "backbone": lambda: [det.backbone(chunk) for chunk in x.split(8)],
            "patch embedding": lambda: [det._patch_features(f) for f in features],
            "kNN (pyanom op)": lambda: knn_scores(queries, bank, 1),
            "q @ bank.T, torch.mm float32": lambda: queries @ bank.T,
            "q @ bank.T, torch.mm bfloat16": lambda: half_q @ half_bank.T,
            "maps (upsample_scores)": lambda: upsample_scores(scores, x.shape[-2:], sigma),
            "maps (upsample, then blur)": lambda: gaussian_blur(F.interpolate(
                scores[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0], sigma),
        }
        times = interleaved(variants, args.rounds, len(x))
    flop = 2 * queries.shape[0] * len(bank) * queries.shape[1] / len(x)  # of the distance product, per image
    print(f"PatchCore float32, memory bank {tuple(bank.shape)}, {len(x)} images, {args.threads} threads; "
          f"ms per image, min / median of {args.rounds} rounds")
    for name, ts in times.items():
        rate = f"; {flop / min(ts) / 1e6:.0f} GFLOP/s" if name.startswith(("kNN", "q @")) else ""
        print(f"{name:<30} {min(ts):7.3f} / {statistics.median(ts):7.3f}{rate}")
    batch_sizes(det, x, args.rounds)


def batch_sizes(det, x, rounds: int) -> None:
    """predict and its parts (those of PatchCore._score) at batch 1 and batch 32, interleaved,
    ms per image; the batch-1 scores checked equal to batch 32's."""
    import numpy as np
    import torch

    from pyanom.anomaly_map import upsample_scores

    one = np.concatenate([det.predict(image[None], batch_size=1).image_scores.numpy() for image in x])
    np.testing.assert_allclose(one, det.predict(x, batch_size=32).image_scores.numpy(), rtol=1e-5)
    with torch.inference_mode():
        emb = [det._embed(image[None])[0] for image in x]
        (h, w), size = det._embed(x[:1])[1], x.shape[-2:]
        queries = [e.reshape(-1, e.shape[-1]) for e in emb]
        all_queries = torch.cat(queries)
        nearest = [det._nearest(q, 1) for q in queries]
        scores = [d[:, 0].reshape(1, h, w) for d, _ in nearest]
        all_scores = torch.cat(scores)
        all_nearest = det._nearest(all_queries, 1)

    def rows(parts, n_patches):
        """The kNN's (queries, nearest) and the worst patch of each image, for _reweight."""
        queries, (dist, near) = parts
        patch = dist[:, 0].reshape(-1, n_patches)
        return queries, near[:, 0], patch.argmax(1), n_patches

    variants = {
        (name, b): fn for name, by_batch in {
            "predict": (lambda: [det.predict(image[None], batch_size=1) for image in x],
                        lambda: det.predict(x, batch_size=32)),
            "backbone + embedding (_embed)": (lambda: [det._embed(image[None]) for image in x],
                                              lambda: det._embed(x)),
            "kNN, k=1": (lambda: [det._nearest(q, 1) for q in queries], lambda: det._nearest(all_queries, 1)),
            "reweight": (lambda: [det._reweight(*rows((q, n), h * w)) for q, n in zip(queries, nearest)],
                         lambda: det._reweight(*rows((all_queries, all_nearest), h * w))),
            "maps": (lambda: [upsample_scores(s, size, det.config.blur_sigma) for s in scores],
                     lambda: upsample_scores(all_scores, size, det.config.blur_sigma)),
        }.items() for b, fn in zip((1, 32), by_batch)}
    with torch.inference_mode():
        times = interleaved(variants, rounds, len(x))
    print(f"\nbatch 1 against batch 32, {len(x)} images, ms per image, min / median of {rounds} rounds")
    for name in dict.fromkeys(name for name, _ in variants):
        one, all32 = min(times[name, 1]), min(times[name, 32])
        print(f"{name:<30} batch 1 {one:7.3f} / {statistics.median(times[name, 1]):7.3f}, "
              f"batch 32 {all32:7.3f} / {statistics.median(times[name, 32]):7.3f}; ratio {one / all32:.2f}")


if __name__ == "__main__":
    main()
