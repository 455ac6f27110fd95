"""PatchCore on full-resolution MVTec AD bottle (900 x 900) with tiling, against the 256 px default.

Each configuration runs in a fresh process (its peak RSS is its own): fit on the first --train
good training images (sorted by name), predict the test images (--per-type of each type, good
included, sorted by name) one at a time, then image and pixel AUROC. The default's maps and masks
are at 256 px (as `pyanom evaluate` scores it); the tiled model's at 900 px.

    OMP_NUM_THREADS=2 python3 -P benchmarks/bench_tiling.py --train 40 --per-type 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "256 px (default)": dict(coreset_ratio=0.01),
    "tiled, 900 px, tile 256, overlap 32": dict(image_size=None, tile_size=256, tile_overlap=32, coreset_ratio=0.01),
}

RUN = """
import json, resource, sys, time
import pyanom
from pyanom.data import open_dataset
from pyanom.metrics import evaluate
data, n_train, per_type, config = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
size = config.get("image_size", 256)
train = open_dataset(data, "train", image_size=size)
train = train.subset(range(min(n_train, len(train))))
test = open_dataset(data, "test", image_size=size)
seen = {}
keep = [i for i, t in enumerate(test.defect_types) if seen.setdefault(t, []).append(i) or len(seen[t]) <= per_type]
test = test.subset(keep)
det = pyanom.create("patchcore", **config)
start = time.perf_counter()
det.fit(train, progress=False)
fit_s = time.perf_counter() - start
start = time.perf_counter()
pred = det.predict(test, batch_size=1, map_size="model")  # as test.masks()
ms = 1000 * (time.perf_counter() - start) / len(test)
report = evaluate(test.labels, pred.image_scores, test.masks(), pred.anomaly_maps, test.defect_types)
print(json.dumps({"fit_s": fit_s, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "ms_per_image": ms, "image_auroc": report["image_auroc"], "pixel_auroc": report["pixel_auroc"],
                  "n_train": len(train), "n_test": len(test), "bank": len(det.memory_bank)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mvtec" / "bottle")
    parser.add_argument("--train", type=int, default=209, help="good training images used (first N by name)")
    parser.add_argument("--per-type", type=int, default=1000, help="test images per type (first K by name)")
    args = parser.parse_args()
    print("| configuration | train / test images | fit | peak RSS | predict | image AUROC | pixel AUROC | bank |")
    print("|---|---|---|---|---|---|---|---|")
    for name, config in CONFIGS.items():
        done = subprocess.run([sys.executable, "-P", "-c", RUN, str(args.data), str(args.train), str(args.per_type),
                               json.dumps(config)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['n_train']} / {r['n_test']} | {r['fit_s']:.1f} s | {r['peak_rss_gb']:.2f} GB | "
              f"{r['ms_per_image']:.0f} ms/image | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['bank']} |",
              flush=True)


if __name__ == "__main__":
    main()
