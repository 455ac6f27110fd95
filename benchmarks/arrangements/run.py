"""PatchCore vs SA-PatchCore on the arrangement sets and MVTec AD bottle, end to end, the figures
recorded in benchmarks/results/arrangements.json (benchmarks/results.py's shape: one entry per set,
training count, seed and detector; a new run of a case replaces its entry).

Every set (sets.py: rods, board, tray), seed and training count: both detectors fitted through
the public API on the first N good training images (each holds 10% out for its threshold, as
`Detector.fit` does) at the same coreset ratio (SA-PatchCore's default, 0.01), SA-PatchCore with
its defaults plus any --set; per defect type the image AUROC against the good test images,
"arrangement_auroc" the mean over the arrangement types (too many, missing, wrong place),
"local_auroc" the local defects together (issue 29 calls the first "co-occurrence AUROC"). Bottle:
image and pixel AUROC at 256 px (fit on its 209 good images).

    OMP_NUM_THREADS=2 python3 -P benchmarks/arrangements/run.py [--sets rods board tray] [--seeds 0 1 2]
        [--n-train 50 200] [--bottle] [--set KEY=VALUE] [--out benchmarks/results/arrangements.json]

The generated sets are written once to $PYANOM_ARRANGEMENTS (default /tmp/pyanom-arrangements),
never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyanom  # noqa: E402
from pyanom.data import open_dataset  # noqa: E402
from pyanom.metrics import evaluate  # noqa: E402
from pyanom_plugins.patchcore.detector import SAPatchCoreConfig  # noqa: E402
from results import record  # noqa: E402
from sets import SETS, open_set, type_aurocs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def detectors(overrides: dict) -> dict[str, tuple[str, dict]]:
    ratio = overrides.get("coreset_ratio", SAPatchCoreConfig().coreset_ratio)
    return {"patchcore": ("patchcore", {"coreset_ratio": ratio}), "sa_patchcore": ("sa_patchcore", overrides)}


def run_set(name: str, seed: int, n: int, dets: dict) -> dict:
    train, test = open_set(name, seed, n)
    out = {}
    for label, (detector, settings) in dets.items():
        start = time.perf_counter()
        det = pyanom.create(detector, **settings).fit(train, progress=False)
        scores = det.predict(test).image_scores.numpy()
        out[label] = type_aurocs(test.defect_types, scores)
        print(f"{name} seed {seed} n {n} {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[label].items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def run_bottle(data: Path, dets: dict) -> dict:
    root = data / "mvtec" / "bottle"
    train, test = open_dataset(root, "train").normal(), open_dataset(root, "test")
    masks = test.masks()
    out = {}
    for label, (detector, settings) in dets.items():
        det = pyanom.create(detector, **settings).fit(train, progress=False)
        pred = det.predict(test, map_size="model")
        report = evaluate(test.labels, pred.image_scores, masks=masks, maps=pred.anomaly_maps)
        out[label] = {k: report[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
        print(f"bottle {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[label].items()), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--bottle", action="store_true", help="also MVTec AD bottle (image and pixel AUROC)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="sa_patchcore setting (JSON value), repeatable")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PYANOM_DATA") or ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "arrangements.json")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    SAPatchCoreConfig(**overrides)  # refused before any fit
    dets = detectors(overrides)
    tag = "".join(f" {k}={json.dumps(v)}" for k, v in sorted(overrides.items()))
    entries = []
    for name in args.sets:
        for seed in args.seeds:
            for n in args.n_train:
                for label, aurocs in run_set(name, seed, n, dets).items():
                    entries.append({"case": f"{name} n{n} seed {seed} {label}{tag}", "set": name, "n_train": n,
                                    "seed": seed, "detector": label, "settings": overrides,
                                    "arrangement_auroc": aurocs.pop("co-occurrence"),
                                    "local_auroc": aurocs.pop("local"), **aurocs})
                record("arrangements", ABOUT, entries[-len(dets):], path=args.out)
    if args.bottle:
        for label, figures in run_bottle(args.data, dets).items():
            entries.append({"case": f"bottle {label}{tag}", "set": "bottle", "detector": label,
                            "settings": overrides, **figures})
        record("arrangements", ABOUT, entries[-len(dets):], path=args.out)
    summary(entries)


ABOUT = ("Image AUROC per arrangement type (too_many, missing, wrong_place) against the good test images, "
         "arrangement_auroc their mean, local_auroc the local defects together; per set, training count, seed "
         "and detector (benchmarks/arrangements/run.py)")


def summary(entries: list[dict]) -> None:
    """The table of this run: per set, training count and detector, the mean over seeds (min in brackets)."""
    keys = ("arrangement_auroc", "too_many", "missing", "wrong_place", "local_auroc")
    print("\n| set | n | detector | " + " | ".join(keys) + " | seeds |\n|---|---|---|" + "---|" * (len(keys) + 1))
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        if "arrangement_auroc" in e:
            groups.setdefault((e["set"], e["n_train"], e["detector"]), []).append(e)
    for (name, n, label), runs in groups.items():
        cells = []
        for k in keys:
            vals = [r[k] for r in runs if k in r]
            cells.append(f"{sum(vals) / len(vals):.3f} ({min(vals):.3f})" if vals else "-")
        print(f"| {name} | {n} | {label} | " + " | ".join(cells) + f" | {len(runs)} |")
    for e in entries:
        if e["set"] == "bottle":
            print(f"bottle {e['detector']}: image {e['image_auroc']:.4f}, pixel {e['pixel_auroc']:.4f}, "
                  f"aupro {e['aupro']:.4f}")


if __name__ == "__main__":
    main()
