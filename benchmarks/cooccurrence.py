"""PatchCore vs SA-PatchCore on anomalies of arrangement (co-occurrence) and on local defects.

The paper's CAD-SD data cannot be obtained, so the synthetic generator makes rods that are good
with a nut on exactly one end; nuts on both ends or on none are defects whose every local part
looks normal. Image AUROC per subset (each subset's defects against all good test images):

    python3 -P benchmarks/cooccurrence.py [--seed 0] [--out /tmp/cooc]

Why SA-PatchCore trails here, `--attention-probe`: how peaked eq. 4's attention is on the Lite0
stride-16 map, and what sa_patchcore scores when the attention input is changed. The variants
replace the self_attention that pyanom_plugins.patchcore.embedding calls (the detector itself is
untouched): "as specified" (eq. 4 on the max-pooled map), "layer norm" (each position
standardised over channels first), "l2" (each position scaled to norm sqrt(C)), "temperature T"
(layer norm, logits divided by T) and "global mean" (every position gets the image's mean
feature: the softest attention there is).

    python3 -P benchmarks/cooccurrence.py --attention-probe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import pyanom
import pyanom_plugins.patchcore.embedding as embedding
from pyanom.data import open_dataset
from pyanom.data.synthetic import make_inspection_set
from pyanom.metrics import evaluate
from pyanom.ops import self_attention

SUBSETS = {"co-occurrence": ("both_nuts", "no_nut"), "local": ("local",)}




def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.transpose(1, -1), x.shape[1:2]).transpose(1, -1)


VARIANTS = {
    "as specified": self_attention,
    "layer norm": lambda x: self_attention(layer_norm(x)),
    "l2": lambda x: self_attention(F.normalize(x, dim=1) * x.shape[1] ** 0.5),
    "temperature 4": lambda x: self_attention(layer_norm(x) / 2) * 2,
    "temperature 16": lambda x: self_attention(layer_norm(x) / 4) * 4,
    "global mean": lambda x: x.mean((2, 3), keepdim=True).expand_as(x),
}


def subset_aurocs(test, scores) -> dict[str, float]:
    """Image AUROC of each subset's defects against all good test parts."""
    out = {}
    for subset, types in SUBSETS.items():
        keep = [i for i, t in enumerate(test.defect_types) if t == "good" or t in types]
        out[subset] = evaluate(test.labels[keep], scores[keep])["image_auroc"]
    return out


def attention_statistics(det, images: torch.Tensor) -> tuple[float, float]:
    """Mean largest attention weight per row, and mean weight of a position on itself."""
    with torch.inference_mode():
        coarse = F.max_pool2d(det.backbone(images)[det.config.layers[1]], 3, stride=1, padding=1)
        x = coarse.flatten(2).transpose(1, 2)
        weights = torch.softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, dim=-1)
    return float(weights.amax(-1).mean()), float(torch.diagonal(weights, dim1=1, dim2=2).mean())


def compare(train, test) -> None:
    rows = {}
    for name in ("patchcore", "sa_patchcore"):
        scores = pyanom.create(name, coreset_ratio=0.1).fit(train, progress=False).predict(test).image_scores
        per_type = evaluate(test.labels, scores, defect_types=test.defect_types)["per_defect_type"]
        rows[name] = {**subset_aurocs(test, scores), "per_type": {t: v["image_auroc"] for t, v in per_type.items()}}
    print(json.dumps(rows, indent=2))
    print("\n| detector | co-occurrence AUROC | local AUROC |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['co-occurrence']:.3f} | {r['local']:.3f} |")


def probe_attention(train, test) -> None:
    det = pyanom.create("sa_patchcore", coreset_ratio=0.1)
    top, own = attention_statistics(det, torch.stack([test[i]["image"] for i in range(len(test))]))
    print(f"eq. 4 on the test parts: mean largest weight {top:.3f}, mean weight on itself {own:.3f}\n")
    print("| attention input | co-occurrence AUROC | local AUROC |\n|---|---|---|")
    try:
        for name, attend in VARIANTS.items():
            embedding.self_attention = attend
            scores = pyanom.create("sa_patchcore", coreset_ratio=0.1).fit(train, progress=False).predict(test).image_scores
            r = subset_aurocs(test, scores)
            print(f"| {name} | {r['co-occurrence']:.3f} | {r['local']:.3f} |", flush=True)
    finally:
        embedding.self_attention = self_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pyanom-cooccurrence"))
    parser.add_argument("--attention-probe", action="store_true", help="the attention diagnosis instead")
    args = parser.parse_args()
    root = args.out / f"seed{args.seed}"
    if not root.exists():
        make_inspection_set(root, kind="cooccurrence", n_train=60, n_test_good=30, n_test_defect=45, seed=args.seed)
    train, test = open_dataset(root, "train").normal(), open_dataset(root, "test")
    (probe_attention if args.attention_probe else compare)(train, test)


if __name__ == "__main__":
    main()
