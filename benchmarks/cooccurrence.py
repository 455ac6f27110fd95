"""PatchCore vs SA-PatchCore on anomalies of arrangement (co-occurrence) and on local defects.

The paper's CAD-SD data cannot be obtained, so the synthetic generator makes rods that are good
with a nut on exactly one end, in any pose and light; nuts on both ends or on none are defects
whose every local patch occurs in good parts (an empty seat is the good part's bare end, a
second nut the good part's nut). Image AUROC per subset (each subset's defects against all
good test images), for each seed of the set, one coreset ratio for every detector:

    python3 -P benchmarks/cooccurrence.py [--seeds 0 1 2] [--ratio 0.01] [--n-train 200] [--out /tmp/cooc]
        [--rows channel --set attention_weight=2]   # sa_patchcore trials

--n-train: good training parts (each detector holds 10% out for its threshold); 200 by default,
a factory's many good images (until issue 17's second round: 60). A set's first 60 parts are the
same whatever n_train.

--set passes a hyper-parameter to the sa_patchcore (channel) row; the spatial row is eq. 4.
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


def subset_aurocs(test, scores) -> dict[str, float]:
    """Image AUROC of each subset's defects against all good test parts."""
    out = {}
    for subset, types in SUBSETS.items():
        keep = [i for i, t in enumerate(test.defect_types) if t == "good" or t in types]
        out[subset] = evaluate(test.labels[keep], scores[keep])["image_auroc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratio", type=float, default=0.01, help="coreset ratio of every detector")
    parser.add_argument("--n-train", type=int, default=200, help="good training parts of each set")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pyanom-cooccurrence"))
    parser.add_argument("--rows", nargs="+", default=["patchcore", "channel", "spatial"],
                        help="which of patchcore, channel (sa_patchcore), spatial (sa_patchcore) to run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="sa_patchcore hyper-parameter (JSON value), repeatable")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = {"patchcore": ("patchcore", {}),
            "sa_patchcore channel": ("sa_patchcore", {"attention": "channel", **overrides}),
            "sa_patchcore spatial": ("sa_patchcore", {"attention": "spatial"})}
    rows = {name: row for name, row in rows.items() if name.split()[-1] in args.rows}
    results = {name: [] for name in rows}
    for seed in args.seeds:
        root = args.out / (f"seed{seed}" if args.n_train == 60 else f"seed{seed}-train{args.n_train}")
        if not root.exists():
            make_inspection_set(root, kind="cooccurrence", n_train=args.n_train, n_test_good=30, n_test_defect=45,
                                seed=seed)
        train, test = open_dataset(root, "train").normal(), open_dataset(root, "test")
        for name, (detector, config) in rows.items():
            det = pyanom.create(detector, coreset_ratio=args.ratio, **config).fit(train, progress=False)
            r = subset_aurocs(test, det.predict(test).image_scores)
            results[name].append(r)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    print(f"\n| detector ({args.n_train} training parts) | co-occurrence AUROC, seeds {args.seeds} | local AUROC |"
          "\n|---|---|---|")
    for name, rs in results.items():
        cells = [", ".join(f"{r[k]:.3f}" for r in rs) + f" (min {min(r[k] for r in rs):.3f})" for k in SUBSETS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
