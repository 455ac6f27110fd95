"""Arrangement set "rods": pyanom's own generated rods and nuts (`pyanom.data.synthetic`,
kind "cooccurrence"): a threaded rod in any pose with a nut on exactly one end is good; a nut on
both ends is "too_many", on neither "missing" (the set has no "wrong place"); "local" is a
rust spot or a scratch on the rod. Written in the MVTec AD layout under the runner's type names.
"""

from __future__ import annotations

from pathlib import Path

from pyanom.data.synthetic import make_inspection_set

TYPES = ("too_many", "missing", "local")
RENAMED = {"both_nuts": "too_many", "no_nut": "missing"}


def make(root: str | Path, *, n_train: int, n_test_good: int, n_test_per_type: int, size: int = 256,
         seed: int = 0) -> Path:
    root = Path(root)
    make_inspection_set(root, kind="cooccurrence", n_train=n_train, n_test_good=n_test_good,
                        n_test_defect=3 * n_test_per_type, size=size, seed=seed)
    for split in ("test", "ground_truth"):
        for old, new in RENAMED.items():
            (root / split / old).rename(root / split / new)
    return root
