"""Accuracy of PatchCore with its backbone in float32 and in bfloat16 (`precision`), each fitted
on its own features, on bottle and magnetic tile, over coreset seeds: whether bfloat16's speed
comes at equal AUROC, and how its difference compares with the spread between seeds.

    python3 -P benchmarks/bench_precision.py [--data ../shared/data] [--sets bottle magnetic_tile]
        [--seeds 0 1 2] [--detector patchcore] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = {"bottle": ("mvtec", "bottle"), "magnetic_tile": ("magnetic_tile",)}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--detector", default="patchcore", choices=["patchcore", "sa_patchcore"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    import pyanom
    from pyanom.data import open_dataset
    from pyanom.metrics import evaluate

    torch.set_num_threads(args.threads)
    rows = []
    for set_name in args.sets:
        root = args.data.joinpath(*SETS[set_name])
        train, test = open_dataset(root, "train").normal(), open_dataset(root, "test")
        masks = test.masks()
        for seed in args.seeds:
            for precision in ("float32", "bfloat16"):
                det = pyanom.create(args.detector, coreset_ratio=0.01, seed=seed, precision=precision)
                start = time.perf_counter()
                det.fit(train, progress=False)
                fit_s = time.perf_counter() - start
                pred = det.predict(test, map_size="model")
                m = evaluate(test.labels, pred.image_scores, masks, pred.anomaly_maps)
                row = {"set": set_name, "seed": seed, "precision": precision, "fit_s": round(fit_s, 1),
                       **{k: m[k] for k in METRICS}}
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(f"\n{args.detector}, coreset 0.01, 256 px; mean over seeds {args.seeds} (min - max)")
    print("| set | precision | " + " | ".join(METRICS) + " |\n|---|---|" + "---|" * len(METRICS))
    for set_name in args.sets:
        for precision in ("float32", "bfloat16"):
            got = [r for r in rows if r["set"] == set_name and r["precision"] == precision]
            cells = []
            for k in METRICS:
                values = [r[k] for r in got]
                cells.append(f"{sum(values) / len(values):.4f} ({min(values):.4f} - {max(values):.4f})")
            print(f"| {set_name} | {precision} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
