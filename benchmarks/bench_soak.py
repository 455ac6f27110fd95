"""`pyanom serve` soak: 8 clients for 10 minutes on loopback; the server's memory must stay flat.

    PYANOM_DATA=../shared/data OMP_NUM_THREADS=1 python3 -P benchmarks/bench_soak.py
    python3 -P benchmarks/bench_soak.py --minutes 1 --json /tmp/soak.json      # a short try

Bounded: ``--minutes`` of load (and at most ``--max-requests``), a timeout on every request, the
server on 127.0.0.1 only. Each client sends, in a fixed cycle, what a line sends: bottle test images
as raw PNG bodies; one request in 8 asks for its heatmap at the image's own size (900 x 900); one
in 16 is a multipart of three files, one of them not an image (per-file results); one in 32 is a
body that is not an image (415). The server's resident memory (RSS) is sampled every second.

Figures (printed, and written to ``--json``, default benchmarks/results/soak.json): RSS when ready,
after the first minute of load (allocator and caches warm), at the end and at most, and its slope
over the second half of the run (MB per minute, least squares), and at each minute; requests by status; unexpected
answers (a transport error, or any status other than the one expected for that request); requests
and images per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import fit_model, rss_mb, serving, test_images  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PREDICT = "/v1/models/bench/predict"
NOT_AN_IMAGE = b"this is a text file, not a picture\n" * 20


def request_for(n: int, bodies: list[bytes]) -> tuple[dict, int, int]:
    """The n-th request of the cycle: (httpx post arguments, the status expected, images in it)."""
    body = bodies[n % len(bodies)]
    if n % 32 == 31:
        return {"content": NOT_AN_IMAGE, "headers": {"content-type": "image/png"}}, 415, 0
    if n % 16 == 15:
        files = [("files", ("a.png", body, "image/png")), ("files", ("notes.txt", NOT_AN_IMAGE, "image/png")),
                 ("files", ("b.png", bodies[(n + 1) % len(bodies)], "image/png"))]
        return {"files": files}, 200, 2
    query = {"params": {"heatmap": "png"}} if n % 8 == 7 else {}
    return {"content": body, "headers": {"content-type": "image/png"}, **query}, 200, 1


async def soak(url: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    by_status: dict[str, int] = {}
    unexpected: list[str] = []
    sent = images = 0
    deadline = time.monotonic() + seconds

    async def client(session: httpx.AsyncClient):
        nonlocal sent, images
        while time.monotonic() < deadline and sent < max_requests:
            n, sent = sent, sent + 1
            kwargs, expected, count = request_for(n, bodies)
            try:
                response = await session.post(PREDICT, **kwargs)
                status = str(response.status_code)
                if response.status_code != expected:
                    unexpected.append(f"request {n}: {status} {response.text[:200]}")
                else:
                    images += count
            except httpx.HTTPError as err:
                status = type(err).__name__
                unexpected.append(f"request {n}: {status} {err}")
            by_status[status] = by_status.get(status, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as session:
        start = time.monotonic()
        await asyncio.gather(*[client(session) for _ in range(clients)])
        wall = time.monotonic() - start
    return {"requests": sent, "by_status": by_status, "unexpected": len(unexpected), "unexpected_first": unexpected[:5],
            "seconds": wall, "requests_per_s": sent / wall, "images_per_s": images / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model to serve (default: fit PatchCore on bottle)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json", help="where the figures go "
                        "(default benchmarks/results/soak.json)")
    args = parser.parse_args()

    model = args.model or fit_model(Path(tempfile.mkdtemp(prefix="bench_soak_")) / "bench.pyanom", args.image_size)
    bodies = [p.read_bytes() for p in test_images()]
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    load_start = os.getloadavg()[0]
    with serving(model) as (url, server):
        start = time.monotonic()

        def sample():
            while True:
                samples.append((time.monotonic() - start, rss_mb(server.pid)))
                if stop.wait(1.0):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = asyncio.run(soak(url, bodies, args.clients, args.minutes * 60, args.max_requests))
        scored = httpx.get(f"{url}/v1/models").json()[0]["scored"]
        stop.set()
        sampler.join()
    status = server.returncode

    t, rss = np.array(samples).T
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half] / 60, rss[half], 1)[0]) if half.sum() > 2 else float("nan")
    figures = {
        "command": "python3 -P " + " ".join(shlex.quote(a) for a in sys.argv),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cores": os.cpu_count(),
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "minutes": args.minutes, "clients": args.clients, **result,
        "server": {"images_scored": scored["images"], "batches": scored["batches"], "exit_status": status},
        "rss_mb": {"ready": float(rss[0]), "after_1_min": float(np.interp(60, t, rss)), "end": float(rss[-1]),
                   "max": float(rss.max()), "slope_second_half_mb_per_min": slope, "samples": len(rss),
                   "each_minute": [round(float(np.interp(60 * m, t, rss)), 1) for m in range(int(t[-1] // 60) + 1)]},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    r = figures["rss_mb"]
    print(f"{result['requests']} requests in {result['seconds']:.0f} s ({result['requests_per_s']:.1f}/s, "
          f"{result['images_per_s']:.1f} images/s) from {args.clients} clients; by status {result['by_status']}; "
          f"{result['unexpected']} unexpected")
    print(f"server RSS: {r['ready']:.0f} MB ready, {r['after_1_min']:.0f} MB after 1 min, {r['end']:.0f} MB at the end, "
          f"{r['max']:.0f} MB at most; second half slope {r['slope_second_half_mb_per_min']:+.2f} MB/min; "
          f"server exit status {status}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
