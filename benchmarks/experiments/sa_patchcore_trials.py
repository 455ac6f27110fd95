"""The trials behind sa_patchcore's channel attention (issue 17), on the co-occurrence set.

Backbone maps of every Lite0 stage are computed once per seed and cached; each variant then
builds its patch features from them and scores with PatchCore's own steps (greedy coreset,
1-NN distance, max over patches, eq. 7 reweighting). A variant is LOCAL:TAP:INPUT:TAU:W:

    LOCAL  pc (PatchCore's stride-8 + stride-16 features) or fine (stride-8 only, the authors' layout)
    TAP    none, or the stage whose per-channel attention is appended (blocks.3, .4, .5)
    INPUT  the attention input, after 3x3 max pooling: raw, relu, std (divided by each channel's
           standard deviation over the training maps) or relustd (rectified, then divided)
    TAU    factor on the attention input;  W  weight of the attention part in the distance

"spatial" is eq. 4 on the max-pooled stride-16 map in place of its average (sa_patchcore
attention="spatial"). sa:TAP:TAU:W[:CTX[:MARGIN]] is the detector's layout: PatchCore's score plus
W times the largest 1-NN distance of a context (plugins/patchcore/embedding.channel_context, scale
from the first 32 training maps) to a memory of the training contexts (a CTX coreset of them,
default all); with MARGIN (a quantile, 0-1) only the excess over that quantile of the training
parts' own (leave-one-part-out) context distances counts. TAP@2: the tap average-pooled 2x2 first.

--descriptors instead scores whole images by the distance of their per-channel mean (or max) to
the nearest training image's: is the global signal there at all? --local-detail: which local
defects PatchCore misses. --n-train N: sets with N training parts (their first 60 and their test
parts are the same whatever N); --use K fits on the first K of them.

    python3 -P benchmarks/experiments/sa_patchcore_trials.py --ratio 0.01 pc:none:raw:0:0 pc:blocks.5:relustd:4:1
    python3 -P benchmarks/experiments/sa_patchcore_trials.py --descriptors
    python3 -P benchmarks/experiments/sa_patchcore_trials.py --n-train 200 --use 54 --local-detail
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pyanom.data import open_dataset
from pyanom.data.synthetic import make_inspection_set
from pyanom.detector import iterate_images
from pyanom.features import create_backbone
from pyanom.metrics import evaluate
from pyanom.ops import channel_self_attention, greedy_coreset, knn_scores, self_attention
from pyanom_plugins.patchcore.embedding import channel_context, context_input

TAPS = ("blocks.2", "blocks.3", "blocks.4", "blocks.5")
SUBSETS = {"co-occurrence": ("both_nuts", "no_nut"), "local": ("local",)}


def set_root(out: Path, seed: int, n_train: int) -> Path:
    """The set of one seed (its first 60 training parts are the same whatever n_train)."""
    root = out / (f"seed{seed}" if n_train == 60 else f"seed{seed}-train{n_train}")
    if not root.exists():
        make_inspection_set(root, kind="cooccurrence", n_train=n_train, n_test_good=30, n_test_defect=45, seed=seed)
    return root


def cached_maps(out: Path, seed: int, n_train: int = 60) -> dict:
    file = out / (f"maps-seed{seed}.pt" if n_train == 60 else f"maps-seed{seed}-train{n_train}.pt")
    if file.exists():
        return torch.load(file)
    root = set_root(out, seed, n_train)
    backbone = create_backbone("efficientnet_lite0", layers=TAPS)
    maps = {}
    for split in ("train", "test"):
        data = open_dataset(root, split)
        data = data.normal() if split == "train" else data
        parts = [{t: m.clone() for t, m in backbone(images).items()} for images in iterate_images(data, 8)]
        maps[split] = {t: torch.cat([p[t] for p in parts]) for t in TAPS}
        if split == "test":
            maps["labels"], maps["types"] = torch.as_tensor(data.labels), list(data.defect_types)
            maps["masks"] = torch.as_tensor(data.masks())
    torch.save(maps, file)
    return maps


def aurocs(maps, scores) -> dict[str, float]:
    out = {}
    for subset, types in SUBSETS.items():
        keep = [i for i, t in enumerate(maps["types"]) if t == "good" or t in types]
        out[subset] = evaluate(maps["labels"][keep].numpy(), scores[keep].numpy())["image_auroc"]
    return out


def patchcore_scores(train: torch.Tensor, test: torch.Tensor, ratio: float) -> torch.Tensor:
    """PatchCore's image scores (max 1-NN patch distance, eq. 7 reweighted) for [N, D, h, w] features."""
    d = train.shape[1]
    bank = train.permute(0, 2, 3, 1).reshape(-1, d).contiguous()
    memory = bank[greedy_coreset(bank, max(1, math.ceil(ratio * len(bank))), projection_dim=128, seed=0)]
    queries = test.permute(0, 2, 3, 1).reshape(-1, d).contiguous()
    dist, nearest = knn_scores(queries, memory, 1)
    patches = dist[:, 0].reshape(len(test), -1)
    scores, worst = patches.max(1)
    rows = torch.arange(len(worst)) * patches.shape[1] + worst
    _, support = knn_scores(memory[nearest[rows, 0]], memory, 9)
    spread = torch.linalg.vector_norm(queries[rows][:, None] - memory[support], dim=-1)
    return scores * (1 - torch.softmax(spread, 1)[:, 0])


def features(maps, split: str, variant: str) -> torch.Tensor:
    def pool(x, kind):
        return (F.avg_pool2d if kind == "avg" else F.max_pool2d)(x, 3, stride=1, padding=1)

    def grid(x):
        return F.interpolate(x, size=maps[split]["blocks.2"].shape[-2:], mode="bilinear", align_corners=False)

    fine = pool(maps[split]["blocks.2"], "avg")
    if variant == "spatial":
        return torch.cat([fine, grid(self_attention(pool(maps[split]["blocks.4"], "max")))], 1)
    local, tap, kind, tau, weight = variant.split(":")
    parts = [fine] + ([grid(pool(maps[split]["blocks.4"], "avg"))] if local == "pc" else [])
    if tap != "none":
        def prepare(x):
            x = pool(x, "max")
            return F.relu(x) if kind in ("relu", "relustd") else x
        x = prepare(maps[split][tap])
        if kind in ("std", "relustd"):
            x = x / (prepare(maps["train"][tap]).std(dim=(0, 2, 3), keepdim=True) + 1e-6)
        parts.append(float(weight) * grid(channel_self_attention(x * float(tau))))
    return torch.cat(parts, 1)


def variant_scores(maps, variant: str, ratio: float) -> torch.Tensor:
    if not variant.startswith("sa:"):
        if (variant, ratio) not in maps:  # kept for the sa: variants of the same run
            maps[variant, ratio] = patchcore_scores(features(maps, "train", variant), features(maps, "test", variant),
                                                    ratio)
        return maps[variant, ratio]
    _, tap, tau, weight, *more = variant.split(":")
    ctx, margin = (float(x) for x in (more + ["1", "-1"])[:2])
    scores = variant_scores(maps, "pc:none:raw:0:0", ratio)
    tap, _, pool = tap.partition("@")  # blocks.4@2: the stride-16 map average-pooled 2x2 first

    def tap_map(split):
        return F.avg_pool2d(maps[split][tap], int(pool)) if pool else maps[split][tap]

    spread = context_input(tap_map("train")[:32]).std(dim=(0, 2, 3))
    scale = spread.clamp_min(0.1 * float(spread.median()))

    def rows(split):
        c = channel_context(tap_map(split), scale, float(tau))
        return c.permute(0, 2, 3, 1).reshape(-1, c.shape[1]).contiguous()

    train, queries = rows("train"), rows("test")
    n_train = len(maps["train"][tap])
    owner = torch.arange(len(train)) // (len(train) // n_train)  # the training part of each context
    keep = torch.arange(len(train))
    if ctx < 1:
        keep = greedy_coreset(train, max(1, math.ceil(ctx * len(train))), projection_dim=128, seed=0)
    bank, floor = train[keep], 0.0
    if margin >= 0:  # each training part's context distance to the memory without its own rows
        loo = torch.stack([knn_scores(train[owner == i], bank[owner[keep] != i], 1)[0][:, 0].amax()
                           for i in range(n_train)])
        floor = float(torch.quantile(loo, margin))
    context = knn_scores(queries, bank, 1)[0][:, 0].reshape(len(scores), -1).amax(1)
    return scores + float(weight) * (context - floor).clamp_min(0)


def local_detail(maps, ratio: float) -> None:
    """Which local defects PatchCore misses: per defect its mask area, the largest patch score near
    it (the 32x32 grid cells its mask touches, dilated by one) and its image score, against the
    good test parts' scores. The patch scores are the plain 1-NN distances (no eq. 7)."""
    train, test = (features(maps, split, "pc:none:raw:0:0") for split in ("train", "test"))
    bank = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1]).contiguous()
    memory = bank[greedy_coreset(bank, max(1, math.ceil(ratio * len(bank))), projection_dim=128, seed=0)]
    queries = test.permute(0, 2, 3, 1).reshape(-1, test.shape[1]).contiguous()
    patches = knn_scores(queries, memory, 1)[0][:, 0].reshape(len(test), *test.shape[-2:])
    scores = patches.flatten(1).amax(1)
    stride = maps["masks"].shape[-1] // test.shape[-1]
    near = F.max_pool2d(F.max_pool2d(maps["masks"][:, None].float(), stride), 3, 1, 1)[:, 0] > 0
    good = scores[[i for i, t in enumerate(maps["types"]) if t == "good"]]
    rows = sorted((int(maps["masks"][i].sum()), float(patches[i][near[i]].max()), float(scores[i]))
                  for i, t in enumerate(maps["types"]) if t == "local")
    print(f"good parts: median {float(good.median()):.1f}, max {float(good.max()):.1f}; local defects "
          "(mask px: near-defect max / image max): " + ", ".join(f"{a}: {n:.1f}/{m:.1f}" for a, n, m in rows))


def descriptor_trials(all_maps) -> None:
    kinds = {"mean": lambda x: x.mean((2, 3)), "mean relu": lambda x: F.relu(x).mean((2, 3)),
             "max": lambda x: x.amax((2, 3))}
    print("| stage | descriptor | co-occurrence, local AUROC per seed |\n|---|---|---|")
    for tap in TAPS[1:]:
        for name, describe in kinds.items():
            cells = []
            for maps in all_maps:
                train, test = describe(maps["train"][tap]), describe(maps["test"][tap])
                spread = train.std(0, keepdim=True) + 1e-6
                r = aurocs(maps, torch.cdist(test / spread, train / spread).min(1).values)
                cells.append(f"{r['co-occurrence']:.3f} / {r['local']:.3f}")
            print(f"| {tap} | {name} | " + ", ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("/tmp/pyanom-cooccurrence"))
    parser.add_argument("--n-train", type=int, default=60, help="training parts (the first n of the set)")
    parser.add_argument("--use", type=int, help="fit on only the first USE training parts of the set")
    parser.add_argument("--descriptors", action="store_true")
    parser.add_argument("--local-detail", action="store_true", help="which local defects PatchCore misses")
    args = parser.parse_args()
    all_maps = [cached_maps(args.out, seed, args.n_train) for seed in args.seeds]
    if args.use:
        for maps in all_maps:
            maps["train"] = {tap: m[:args.use] for tap, m in maps["train"].items()}
    if args.descriptors:
        return descriptor_trials(all_maps)
    if args.local_detail:
        for seed, maps in zip(args.seeds, all_maps):
            print(f"seed {seed}, {len(maps['train']['blocks.2'])} training parts, ratio {args.ratio}: ", end="")
            local_detail(maps, args.ratio)
        return
    print(f"| variant (ratio {args.ratio}) | co-occurrence AUROC, seeds {args.seeds} | local AUROC |\n|---|---|---|")
    for variant in args.variants:
        rs = [aurocs(m, variant_scores(m, variant, args.ratio)) for m in all_maps]
        cells = [", ".join(f"{r[k]:.3f}" for r in rs) + f" (min {min(r[k] for r in rs):.3f})" for k in SUBSETS]
        print(f"| {variant} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
