"""`pyanom serve` under load on loopback, beside in-process `predict` at the same batch sizes.

    python3 -P benchmarks/bench_serve.py                  # fits a small PatchCore on bottle first
    python3 -P benchmarks/bench_serve.py --model bottle.pyanom --requests 192
    OMP_NUM_THREADS=1 python3 -P benchmarks/bench_serve.py   # one scoring thread, server and in-process alike

Bounded: a fixed number of requests per level (1, 4 and 16 concurrent httpx clients, each
sending bottle test images as raw PNG bodies one after the other; as many untimed requests first
as there are clients, so the timing starts with every client busy), a timeout on every request,
the server on 127.0.0.1 only. Reports throughput (images/s), p50/p99 latency and the server's mean
batch size per level, the
in-process throughput of `predict` at batch sizes 1, 4 and 16 on already decoded tensors and on
the same PNG bytes decoded first (as the service must: 900x900 PNGs cost about as much to decode
as to score at 256 px), and the server's resident memory (RSS) sampled over the whole load test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

import pyanom
from pyanom.data import open_dataset, open_images
from pyanom.serve import ServeSettings
from pyanom.serve.images import Limits, decode

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
LEVELS = (1, 4, 16)
ROUNDS = (1, 4, 16, 16)
LIMITS = Limits(ServeSettings.max_bytes, ServeSettings.max_pixels)  # the last level twice: RSS after it should not move


def fit_model(out: Path, image_size: int) -> Path:
    train = open_dataset(DATA / "mvtec" / "bottle", "train", image_size=image_size)
    det = pyanom.create("patchcore", image_size=image_size, coreset_ratio=0.01)
    det.fit(train.subset(range(0, len(train), 5)), progress=False)
    return det.save(out)


class InProcess:
    """Images per second of det.predict on decoded tensors at a batch size (the bench process's own model)."""

    def __init__(self, model: Path, images: list[Path]):
        self.det = pyanom.load(model)
        data = open_images(*images, image_size=self.det.image_size)
        self.tensors = torch.stack([data[i]["image"] for i in range(len(data))])
        self.preprocess = data.preprocess
        for batch in LEVELS:  # the first calls of each shape are slow (allocation, kernel set-up)
            for _ in range(8):
                self.det.predict(self.tensors[:batch], batch_size=batch)

    def __call__(self, batch: int, images: int, bodies: list[bytes] | None = None) -> float:
        """With ``bodies``, each batch is decoded from the PNG bytes first, as the service must."""
        done, start = 0, time.perf_counter()
        while done < images:
            idx = [(done + k) % len(self.tensors) for k in range(batch)]
            if bodies is None:
                batch_images = self.tensors[idx]
            else:
                decoded = [decode(bodies[i], "bench", self.preprocess, LIMITS) for i in idx]
                batch_images = torch.from_numpy(np.stack([array for array, _ in decoded]))
            self.det.predict(batch_images, batch_size=batch)
            done += batch
        return done / (time.perf_counter() - start)


def test_images() -> list[Path]:
    """Eight bottle test images of each folder (good and every defect type)."""
    return [p for folder in sorted((DATA / "mvtec" / "bottle" / "test").iterdir())
            for p in sorted(folder.glob("*.png"))[:8]]


@contextlib.contextmanager
def serving(model: Path, *options: str, name: str = "bench"):
    """`pyanom serve` of ``model`` as ``name`` on a free loopback port, ready; yields (url, process);
    stopped by SIGTERM at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "pyanom.cli", "serve", f"{name}={model}", "--port", str(port),
                               "--log-level", "warning", *options])
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        yield url, server
    finally:
        server.terminate()
        server.wait(60)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def load(url: str, bodies: list[bytes], clients: int, requests: int) -> dict:
    latencies, failures, next_request = [], 0, 0

    async def client(session: httpx.AsyncClient):
        nonlocal failures, next_request
        while next_request < requests:
            body = bodies[next_request % len(bodies)]
            next_request += 1
            start = time.perf_counter()
            try:
                response = await session.post("/v1/models/bench/predict", content=body,
                                              headers={"content-type": "image/png"})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            failures += not ok

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as session:
        start = time.perf_counter()
        await asyncio.gather(*[client(session) for _ in range(clients)])
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "failed": failures, "images_per_s": requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model to serve (default: fit PatchCore on bottle)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=96, help="timed requests per level (default 96)")
    parser.add_argument("--max-batch", type=int, default=ServeSettings.max_batch)
    parser.add_argument("--max-wait-ms", type=float, default=ServeSettings.max_wait_ms)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    model = args.model or fit_model(tmp / "bench.pyanom", args.image_size)
    images = test_images()
    bodies = [p.read_bytes() for p in images]
    direct = InProcess(model, images)

    rss, stop = [], threading.Event()
    with serving(model, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                 "--max-queue", "256") as (url, server):
        def sample():
            while not stop.wait(0.1):
                rss.append(rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        rss_ready = rss_mb(server.pid)
        sampler.start()
        rows = []
        for clients in ROUNDS:  # in-process just before and after each level: the machine's load drifts
            before = direct(clients, args.requests), direct(clients, args.requests, bodies)
            asyncio.run(load(url, bodies, clients, clients))  # untimed: every client has sent once
            scored = httpx.get(f"{url}/v1/models").json()[0]["scored"]
            row = asyncio.run(load(url, bodies, clients, args.requests))
            after = httpx.get(f"{url}/v1/models").json()[0]["scored"]
            row["mean_batch"] = (after["images"] - scored["images"]) / max(1, after["batches"] - scored["batches"])
            row["rss_mb_after"] = rss_mb(server.pid)
            row["in_process_images_per_s"] = (before[0] + direct(clients, args.requests)) / 2
            row["in_process_with_decode_images_per_s"] = (before[1] + direct(clients, args.requests, bodies)) / 2
            rows.append(row)
        stop.set()
        sampler.join()

    print(f"\nmodel {model}, {args.requests} requests per level, server --max-batch {args.max_batch} "
          f"--max-wait-ms {args.max_wait_ms}, torch threads {torch.get_num_threads()}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| clients | served img/s | p50 ms | p99 ms | failed | in-process predict img/s (batch = clients) "
          "| served / in-process | in-process decode + predict img/s | served / that | server's mean batch "
          "| server RSS after, MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failed']} "
              f"| {r['in_process_images_per_s']:.1f} | {r['images_per_s'] / r['in_process_images_per_s']:.2f}x "
              f"| {r['in_process_with_decode_images_per_s']:.1f} "
              f"| {r['images_per_s'] / r['in_process_with_decode_images_per_s']:.2f}x | {r['mean_batch']:.1f} "
              f"| {r['rss_mb_after']:.0f} |")
    print(f"server RSS: {rss_ready:.0f} MB when ready, {min(rss):.0f}-{max(rss):.0f} MB over the load "
          f"({len(rss)} samples), {rss[-1]:.0f} MB at the end")
    if args.json:
        args.json.write_text(json.dumps({"levels": rows, "rss_mb": {"ready": rss_ready, "min": min(rss),
                                                                    "max": max(rss), "end": rss[-1]}}, indent=2))


if __name__ == "__main__":
    main()
