"""Few-shot Siamese detector on magnetic tile: the paper's ablation on fixed, seeded splits.

    python benchmarks/bench_siamese.py --image-size 192 --epochs 12 --lr 1e-4

Splits (seeded; see `few_shot_splits`): training A = 80 normal + 40 defective images, B = the same
80 normal + the first 20 of A's defects; test = every defect in neither training set and as many
unseen normal images. Methods: I (no attention), II (attention), III (attention + ABL), each with
CL, and III with PBCL. Reported per run: centroid-distance AUC, and accuracy, recall (normal
called normal) and specificity (defect called defect) of the nearest-neighbour decision, as the
paper defines them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pyanom
from pyanom.data import open_dataset
from pyanom.metrics import image_auroc

METHODS = {
    "I": dict(attention_layer=None, attention_branch_loss=False, pair_loss="cl"),
    "II": dict(attention_branch_loss=False, pair_loss="cl"),
    "III": dict(attention_branch_loss=True, pair_loss="cl"),
    "III+PBCL": dict(attention_branch_loss=True, pair_loss="pbcl"),
}
TRAIN_SIZES = {"A": (80, 40), "B": (80, 20)}


def few_shot_splits(root, *, image_size: int, seed: int = 0) -> dict:
    """{"A": train set, "B": train set, "test": test set} of the magnetic tile folders.

    Normal and defective images are each shuffled once with `seed`; A takes the first 80 normal
    and 40 defective, B the first 80 normal and 20 defective (B's training images are A's), the
    test set every remaining defect and as many of the remaining normal images."""
    data = open_dataset(root, "all", layout="folders", image_size=image_size)
    labels = data.labels.numpy()
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(labels == 0))
    defect = rng.permutation(np.flatnonzero(labels == 1))
    n_normal, n_defect = max(n for n, _ in TRAIN_SIZES.values()), max(d for _, d in TRAIN_SIZES.values())
    n_test = min(len(defect) - n_defect, len(normal) - n_normal)
    splits = {name: data.subset(np.concatenate([normal[:n], defect[:d]]).tolist())
              for name, (n, d) in TRAIN_SIZES.items()}
    splits["test"] = data.subset(np.concatenate([normal[n_normal:n_normal + n_test],
                                                 defect[n_defect:n_defect + n_test]]).tolist())
    return splits


def decision_metrics(labels: torch.Tensor, predicted: torch.Tensor) -> dict:
    """Accuracy, recall (normal called normal) and specificity (defect called defect), as the
    paper names them (1 = defect)."""
    labels, predicted = labels.bool(), predicted.bool()
    return {"accuracy": float((labels == predicted).float().mean()),
            "recall": float((~predicted[~labels]).float().mean()),
            "specificity": float(predicted[labels].float().mean())}


def run(method: str, split: str, splits: dict, settings: dict, out: Path) -> dict:
    det = pyanom.create("siamese", **{**settings, **METHODS[method]})
    train, test = splits[split], splits["test"]
    start = time.perf_counter()
    # Train on the whole split; the threshold is not used by the nearest-neighbour decision.
    det.fit(train, validation=train, progress=True)
    fit_s = time.perf_counter() - start
    pred = det.predict(test)
    row = {"method": method, "split": split, "train": train.counts(), "test": test.counts(),
           "auc": image_auroc(test.labels, pred.image_scores),
           **decision_metrics(test.labels, pred.labels), "fit_s": fit_s,
           "loss_first_last": [det.history["loss"][0], det.history["loss"][-1]] if det.history.get("loss") else None, "margin": det.margin,
           "settings": {**settings, **METHODS[method]}}
    (out / f"{split}_{method}.json").write_text(json.dumps(row, indent=2))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--data", default=str(data / "magnetic_tile"),
                   help="magnetic tile folder (default: $PYANOM_DATA/magnetic_tile or ../shared/data beside the repo)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--margin", type=float, default=None, help="default: from the data (see SiameseConfig)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--attention-layer", default="stride8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                   help="random flips and 90-degree rotations of the training images")
    p.add_argument("--runs", nargs="+", default=["B:I", "B:II", "B:III", "B:III+PBCL", "A:III"],
                   help="SPLIT:METHOD pairs, methods: " + ", ".join(METHODS))
    p.add_argument("--out", default="benchmarks/.benchmarks/siamese", help="folder for one JSON per run")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = few_shot_splits(args.data, image_size=args.image_size, seed=args.seed)
    print({k: v.counts() for k, v in splits.items()}, flush=True)
    settings = dict(image_size=args.image_size, epochs=args.epochs, learning_rate=args.lr, margin=args.margin,
                    backbone=args.backbone, attention_layer=args.attention_layer, augment=args.augment,
                    seed=args.seed)
    rows = []
    for spec in args.runs:
        split, method = spec.split(":")
        row = run(method, split, splits, settings, out)
        rows.append(row)
        print(f"{split} {method:<9} AUC {row['auc']:.3f} acc {row['accuracy']:.3f} recall {row['recall']:.3f} "
              f"spec {row['specificity']:.3f} fit {row['fit_s']:.0f} s margin {row['margin']:.3g} "
              f"loss {row['loss_first_last']}", flush=True)
    print("\n| split | method | AUC | accuracy | recall | specificity | fit s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {r['method']} | {r['auc']:.3f} | {r['accuracy']:.3f} | {r['recall']:.3f} "
              f"| {r['specificity']:.3f} | {r['fit_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
