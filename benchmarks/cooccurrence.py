"""PatchCore vs SA-PatchCore on anomalies of arrangement (co-occurrence) and on local defects.

The paper's CAD-SD data cannot be obtained, so the synthetic generator makes rods that are good
with a nut on exactly one end; nuts on both ends or on none are defects whose every local part
looks normal. Image AUROC per subset (each subset's defects against all good test images):

    python3 -P benchmarks/cooccurrence.py [--seed 0] [--out /tmp/cooc]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyanom
from pyanom.data import open_dataset
from pyanom.data.synthetic import make_inspection_set
from pyanom.metrics import evaluate

SUBSETS = {"co-occurrence": ("both_nuts", "no_nut"), "local": ("local",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pyanom-cooccurrence"))
    args = parser.parse_args()
    root = args.out / f"seed{args.seed}"
    if not root.exists():
        make_inspection_set(root, kind="cooccurrence", n_train=60, n_test_good=30, n_test_defect=45, seed=args.seed)
    train = open_dataset(root, "train").normal()
    test = open_dataset(root, "test")
    rows = {}
    for name in ("patchcore", "sa_patchcore"):
        det = pyanom.create(name, coreset_ratio=0.1)
        det.fit(train, progress=False)
        scores = det.predict(test).image_scores
        per_type = evaluate(test.labels, scores, defect_types=test.defect_types)["per_defect_type"]
        rows[name] = {}
        for subset, types in SUBSETS.items():
            keep = [i for i, t in enumerate(test.defect_types) if t == "good" or t in types]
            rows[name][subset] = evaluate(test.labels[keep], scores[keep])["image_auroc"]
        rows[name]["per_type"] = {t: v["image_auroc"] for t, v in per_type.items()}
    print(json.dumps(rows, indent=2))
    print(f"\n| detector | co-occurrence AUROC | local AUROC |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['co-occurrence']:.3f} | {r['local']:.3f} |")


if __name__ == "__main__":
    main()
