"""The arrangement sets, where their generated copies live, and how a detector's scores on one are
read: each type's image AUROC against the set's good test images; "co-occurrence" the mean over the
arrangement types the set has (too many, missing, wrong place), "local" the local defects together.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import board
import numpy as np
import rods
import tray
from scene import ARRANGEMENT_TYPES

from pyanom.data import open_dataset
from pyanom.metrics import evaluate

SETS = {"rods": rods, "board": board, "tray": tray}
N_TRAIN, N_TEST_GOOD, N_TEST_PER_TYPE = 200, 40, 20
CACHE = Path(os.environ.get("PYANOM_ARRANGEMENTS") or "/tmp/pyanom-arrangements")


def set_root(name: str, seed: int, cache: Path = CACHE) -> Path:
    """The generated set (made on first use): 200 good training images, 40 good test images and
    20 of each defect type; a run on fewer training images takes the first ones."""
    root = cache / f"{name}-seed{seed}"
    if not (root / "ground_truth").is_dir():
        partial = cache / f".{name}-seed{seed}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # what an interrupted run left
        SETS[name].make(partial, n_train=N_TRAIN, n_test_good=N_TEST_GOOD, n_test_per_type=N_TEST_PER_TYPE,
                        seed=seed)
        partial.rename(root)
    return root


def open_set(name: str, seed: int, n_train: int, cache: Path = CACHE):
    """(the first n_train good training images, the test images) of a set."""
    root = set_root(name, seed, cache)
    train = open_dataset(root, "train").normal()
    if n_train > len(train):
        raise ValueError(f"{name}: {n_train} training images asked, the set has {len(train)}")
    return train.subset(range(n_train)), open_dataset(root, "test")


def type_aurocs(defect_types: list[str], scores) -> dict[str, float]:
    """Image AUROC of each defect type against the good images, "co-occurrence" (mean over the
    arrangement types present) and "local" (all other defect types together)."""
    scores = np.asarray(scores, np.float64)
    types = np.asarray(defect_types)
    good = types == "good"
    out = {}
    for t in sorted(set(types) - {"good"}):
        keep = good | (types == t)
        out[t] = _auroc(types[keep] != "good", scores[keep])
    arrangement = [t for t in ARRANGEMENT_TYPES if t in out]
    out["co-occurrence"] = float(np.mean([out[t] for t in arrangement]))
    local = good | ~np.isin(types, ARRANGEMENT_TYPES)
    out["local"] = _auroc(types[local] != "good", scores[local])
    return out


def _auroc(labels, scores) -> float:
    return float(evaluate(labels.astype(np.int64), scores)["image_auroc"])
