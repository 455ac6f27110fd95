"""From file to verdict against the model alone, in one run on one machine (issue 31's line benchmark).

    OMP_NUM_THREADS=2 python3 -P benchmarks/bench_line.py [--rounds 3] [--json F]

The figures go to benchmarks/results/line.json (or F), one entry per case (`benchmarks/results.py`).

PatchCore on MVTec bottle (Lite0, 256 px, coreset 1%), the 83 test images (900 x 900 PNG):
- model alone: tensors in, scores out, at batch 32 and batch 1 (ms per image);
- `pyanom predict` on the folder, in this process (start-up excluded), with --write-heatmaps all and
  none (ms per image, and the ratio to the model's batch-32 time);
- the serial work of predict's parts, each timed alone on the same images: decoding, the model,
  drawing heatmaps, writing them (PNG), as shares of their sum;
- `pyanom serve` (a real uvicorn process on loopback) with 1 and 8 clients posting one file per
  request: images per second against the model's batch-32 rate, latency p50 / p99.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

import pyanom
from pyanom import runs
from pyanom.data import open_dataset
from pyanom.data.files import find_images, read_image
from pyanom.data.transforms import Preprocess
from pyanom.visualize import PNG_LEVEL, draw_heatmap, heatmap_scale

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def model_alone(det, batch: torch.Tensor, rounds: int) -> dict:
    det.predict(batch[:32], map_size="model")  # warm-up
    b32 = best(lambda: [det.predict(batch[i:i + 32], map_size="model") for i in range(0, len(batch), 32)], rounds)
    b1 = best(lambda: [det.predict(batch[i:i + 1], map_size="model") for i in range(len(batch))], rounds)
    return {"batch32_ms": 1000 * b32 / len(batch), "batch1_ms": 1000 * b1 / len(batch)}


def predict_folder(model: Path, folder: Path, out: Path, heatmaps: str, rounds: int) -> float:
    run = lambda: runs.predict_folder(model, [folder], out, write_heatmaps=heatmaps, say=None)  # noqa: E731
    run()  # warm-up (imports, first calls)
    return 1000 * best(run, rounds) / len(find_images(folder, recursive=True))


def parts(det, paths: list[Path], rounds: int) -> dict:
    """Each part of predict alone, serially, on the same images (ms per image)."""
    pre = Preprocess(det.image_size)
    pictures = [read_image(p) for p in paths]
    decode = best(lambda: [pre.array(read_image(p)) for p in paths], rounds)
    batch = torch.from_numpy(np.stack([pre.array(p) for p in pictures]))
    model = best(lambda: [det.predict(batch[i:i + 32], map_size="model") for i in range(0, len(batch), 32)], rounds)
    maps = det.predict(batch, map_size="model").anomaly_maps
    scale = heatmap_scale(det.threshold, float(maps.min()))
    drawn = [draw_heatmap(p, m, vmin=scale[0], vmax=scale[1]) for p, m in zip(pictures, maps)]
    draw = best(lambda: [draw_heatmap(p, m, vmin=scale[0], vmax=scale[1]) for p, m in zip(pictures, maps)], rounds)
    write = best(lambda: [d.save(io.BytesIO(), format="PNG", compress_level=PNG_LEVEL) for d in drawn], rounds)
    ms = {"decode": decode, "model": model, "draw_heatmaps": draw, "write_heatmaps": write}
    total = sum(ms.values())
    return {k: {"ms_per_image": 1000 * v / len(paths), "share": v / total} for k, v in ms.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, paths: list[Path], clients: int, seconds: float) -> dict:
    """Throughput and latency of `pyanom serve` with ``clients`` posting one file per request."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pyanom.cli", "serve", f"m={model}", "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"pyanom serve did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        bodies = [(p.name, p.read_bytes()) for p in paths]
        latencies, lock, stop = [], threading.Lock(), time.time() + seconds

        def client(k: int):
            i = k
            while time.time() < stop:
                _, body = bodies[i % len(bodies)]
                request = urllib.request.Request(f"{base}/v1/models/m/predict", data=body, method="POST",
                                                 headers={"Content-Type": "image/png"})
                start = time.perf_counter()
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                with lock:
                    latencies.append(time.perf_counter() - start)
                i += clients

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "images": len(ms), "images_per_s": len(ms) / elapsed,
            "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


ABOUT = ("PatchCore on MVTec AD bottle (Lite0, 256 px, coreset 1%), the 83 test images: the model alone "
         "against file to verdict (pyanom predict, pyanom serve), ms per image and ratios in one run")


def entries_of(result: dict) -> list[dict]:
    """The run's figures as results-file entries, one per case."""
    b32 = result["model_alone"]["batch32_ms"]
    entries = [{"case": "model alone, batch 32", "ms_per_image": b32},
               {"case": "model alone, batch 1", "ms_per_image": result["model_alone"]["batch1_ms"],
                "vs_batch32": result["model_alone"]["batch1_ms"] / b32}]
    for kind in ("all", "none"):
        ms = result[f"predict_heatmaps_{kind}_ms"]
        entries.append({"case": f"pyanom predict, --write-heatmaps {kind}", "ms_per_image": ms, "vs_model_b32": ms / b32})
    for part, figures in result["parts"].items():
        entries.append({"case": f"part: {part}", **figures})
    for s in result["serve"]:
        entries.append({"case": f"pyanom serve, {s['clients']} clients", **{k: v for k, v in s.items() if k != "clients"},
                        "vs_model_b32_throughput": s["images_per_s"] * b32 / 1000})
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    root = DATA / "mvtec" / "bottle"
    work = Path(tempfile.mkdtemp(prefix="pyanom-line-"))
    try:
        model = work / "bottle.pyanom"
        det = pyanom.create("patchcore", coreset_ratio=0.01)
        det.fit(open_dataset(root, "train"), progress=False)
        det.save(model)
        det = pyanom.load(model)
        folder = root / "test"
        paths = find_images(folder, recursive=True)
        pre = Preprocess(det.image_size)
        batch = torch.from_numpy(np.stack([pre.array(read_image(p)) for p in paths]))
        say = lambda what: print(f"bench_line: {what}", file=sys.stderr, flush=True)  # noqa: E731
        say("the model alone")
        alone = model_alone(det, batch, args.rounds)
        say("pyanom predict, then the parts, then pyanom serve")
        result = {
            "torch_threads": threads, "images": len(paths), "model_alone": alone,
            "predict_heatmaps_all_ms": predict_folder(model, folder, work / "all", "all", args.rounds),
            "predict_heatmaps_none_ms": predict_folder(model, folder, work / "none", "none", args.rounds),
            "parts": parts(det, paths, args.rounds),
            "serve": [serve(model, paths, c, args.serve_seconds) for c in (1, 8)],
        }
        b32 = alone["batch32_ms"]
        result["ratios"] = {
            "predict_all_vs_model_b32": result["predict_heatmaps_all_ms"] / b32,
            "predict_none_vs_model_b32": result["predict_heatmaps_none_ms"] / b32,
            "model_b1_vs_b32": alone["batch1_ms"] / b32,
            "serve8_vs_model_b32_throughput": result["serve"][1]["images_per_s"] / (1000 / b32),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import record

    print("wrote", record("line", ABOUT, entries_of(result), path=args.json))


if __name__ == "__main__":
    main()
