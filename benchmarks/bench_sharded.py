"""Memory banks past one machine's memory: peak RSS and fit time against the number of training
images, exact vs sharded (pyanom.memory); and bottle fitted locally vs on 1 and 2 Ray workers.

    PYANOM_DATA=../shared/data python3 -P benchmarks/bench_sharded.py scale 200 1000 3000 [--json]
    PYANOM_DATA=../shared/data python3 -P benchmarks/bench_sharded.py ray
    PYANOM_DATA=../shared/data python3 -P benchmarks/bench_sharded.py bank

`scale`: good images made by augmenting bottle's 209 training images (random crop of 60-100 %,
flips, quarter turns; seeded), decoded once and held as uint8 at 64 px (an 8 x 8 patch grid), so
the bank, not the images, is what grows: 39 KB of features per image. Each (mode, N) runs in a
fresh process; sharded runs with a 32 MB budget (shards of 420 images). Coreset ratio 0.01.
`ray`: the whole bottle fit (features, coreset, threshold) and its test AUROC, in one run.
`bank`: bottle's test set scored with the memory bank here and on 1, 2 and 4 actors of a local
cluster of 2 CPUs (pyanom.distributed.shard_memory_bank), in one process: predict time and the largest
relative difference of the image scores from the local ones.
`--json` (scale only) records the rows in benchmarks/results/memory.json, which the docs plot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

SCALE = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
import pyanom
from pyanom.data import open_dataset
from pyanom.data.files import read_image

n, mode, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sources = [read_image(s.image) for s in open_dataset(root, "train", image_size=64).normal().samples]

class Augmented(torch.utils.data.Dataset):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = []
        for i in range(n):  # uint8 [3, 64, 64]: 12 KB each
            img = sources[i % len(sources)]
            side = int(img.width * rng.uniform(0.6, 1.0))
            x, y = rng.integers(0, img.width - side + 1, 2)
            crop = img.crop((x, y, x + side, y + side)).resize((64, 64), Image.Resampling.BILINEAR)
            a = np.rot90(np.asarray(crop), rng.integers(4))
            a = a[:, ::-1] if rng.integers(2) else a
            self.images.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).clone())
    def __len__(self):
        return n
    def __getitem__(self, i):
        return {"image": self.images[i].float() / 255}

data = Augmented()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
det = pyanom.create("patchcore", image_size=64, coreset_ratio=0.01, coreset_mode=mode, memory_budget_mb=32)
start = time.perf_counter()
det._fit(data, progress=False)
print(json.dumps({"n": n, "mode": det.memory_plan.mode, "shards": len(det.memory_plan.shards),
                  "fit_s": time.perf_counter() - start, "bank": len(det.memory_bank),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_fit_mb": before / 1024}))
"""

RAY = r"""
import json, sys, time
import pyanom
from pyanom.data import open_dataset
from pyanom.metrics import evaluate

root, workers = sys.argv[1], int(sys.argv[2])
train, test = open_dataset(root, "train").normal(), open_dataset(root, "test")
det = pyanom.create("patchcore", coreset_ratio=0.01, coreset_mode="sharded", shard_images=24)
if workers:
    from pyanom.distributed import connect, use_ray
    connect(None, num_cpus=workers)
    use_ray(det)
start = time.perf_counter()
det.fit(train, progress=False)
fit_s = time.perf_counter() - start
pred = det.predict(test, map_size="model")  # at image_size, as test.masks()
r = evaluate(test.labels, pred.image_scores, masks=test.masks(), maps=pred.anomaly_maps)
print(json.dumps({"workers": workers, "fit_s": fit_s, "image_auroc": r["image_auroc"],
                  "pixel_auroc": r["pixel_auroc"], "shards": len(det.memory_plan.shards)}))
"""

BANK = r"""
import json, sys, time
import torch
import pyanom
from pyanom.data import open_dataset
from pyanom.distributed import connect, shard_memory_bank

root = sys.argv[1]
train, test = open_dataset(root, "train").normal(), open_dataset(root, "test")
det = pyanom.create("patchcore", coreset_ratio=0.01).fit(train, progress=False)
bank = det.memory_bank
connect(None, num_cpus=2)
for parts in (0, 1, 2, 4):
    det.attach_memory_bank(bank)
    if parts:
        shard_memory_bank(det, parts)
    start = time.perf_counter()
    scores = det.predict(test).image_scores
    seconds = time.perf_counter() - start
    if not parts:
        local = scores
    print(json.dumps({"parts": parts, "predict_s": seconds, "images": len(test), "bank": len(bank),
                      "max_rel_diff": float(((scores - local).abs() / local.abs()).max())}), flush=True)
"""


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-P", "-c", script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    bottle = str(DATA / "mvtec" / "bottle")
    to_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if argv[:1] == ["scale"]:
        print("| images | mode | shards | fit s | peak RSS MB | RSS before fit MB | bank rows |\n|---|---|---|---|---|---|---|")
        rows = []
        for n in map(int, argv[1:] or ["200", "2000", "10000"]):
            for mode in ("exact", "sharded"):
                r = run(SCALE, str(n), mode, bottle)
                rows.append({"case": f"{n} {mode}", "images": n, **r})
                print(f"| {n} | {r['mode']} | {r['shards']} | {r['fit_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                      f"{r['rss_before_fit_mb']:.0f} | {r['bank']} |", flush=True)
        if to_json:
            sys.path.insert(0, str(Path(__file__).resolve().parent))  # -P leaves the script's folder out
            from results import record

            print(record("memory", "PatchCore fit's peak RSS against the number of training images (64 px, "
                         "coreset ratio 0.01), exact vs sharded with a 32 MB budget.", rows))
    elif argv[:1] == ["ray"]:
        print("| path | fit s | image AUROC | pixel AUROC | shards |\n|---|---|---|---|---|")
        for workers in (0, 1, 2):
            r = run(RAY, bottle, str(workers))
            name = "local" if not workers else f"ray, {workers} worker(s)"
            print(f"| {name} | {r['fit_s']:.1f} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['shards']} |",
                  flush=True)
    elif argv[:1] == ["bank"]:
        out = subprocess.run([sys.executable, "-P", "-c", BANK, bottle], capture_output=True, text=True, check=True)
        print("| memory bank | predict s | images | bank rows | max relative score difference |\n|---|---|---|---|---|")
        for line in out.stdout.strip().splitlines():
            r = json.loads(line)
            where = "here" if not r["parts"] else f"{r['parts']} actor(s)"
            print(f"| {where} | {r['predict_s']:.1f} | {r['images']} | {r['bank']} | {r['max_rel_diff']:.1e} |")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    start = time.perf_counter()
    main(sys.argv[1:])
    print(f"({time.perf_counter() - start:.0f} s)")
