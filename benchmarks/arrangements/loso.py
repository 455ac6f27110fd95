"""Leave-one-set-out choice of SA-PatchCore's defaults on the arrangement sets.

Each candidate (a dict of sa_patchcore settings) is scored on every set, seed and training count
by the detector's own code on cached backbone maps: the maps of every image are computed once
(`maps-<set>-seed<k>.pt` in the cache) and a stand-in backbone hands them to the detector, which
sees each image as a tiny picture stamped with its index; PatchCore's memory bank (the same for
every candidate) is built once per set, seed and count. Fit and hold-out follow `Detector.fit`
(10% of the training images held out, seed 0), so a candidate's figures equal the detector's.

The bar: co-occurrence >= 0.93 at 200 training images and >= 0.88 at 50, missing >= 0.90 at 200,
local within 0.02 of PatchCore's (same coreset ratio). For each held-out set, the candidate with
the most bars met on the other sets is chosen, then the least total shortfall (see `report`), and
its figures on the held-out set are reported.

    python3 -P benchmarks/arrangements/loso.py --seeds 0 [--n-train 50 200] --grid grid.json [--out DIR]
        [--json benchmarks/results/loso.json]   (recorded in benchmarks/results.py's shape)

grid.json: {"name": {settings}, ...}; a "patchcore" row (PatchCore at SA-PatchCore's coreset
ratio) is added for the local bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import pyanom  # noqa: E402
import pyanom.memory as memory_module  # noqa: E402
from pyanom_plugins.patchcore.detector import SAPatchCoreConfig  # noqa: E402
from pyanom.features import create_backbone  # noqa: E402
from results import record  # noqa: E402
from sets import CACHE, SETS, open_set, type_aurocs  # noqa: E402

TAPS = ("blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6")
ALIASES = {"stride8": "blocks.2", "stride16": "blocks.4"}
BAR = {200: {"co-occurrence": 0.93, "missing": 0.90}, 50: {"co-occurrence": 0.88}}


def cached_maps(name: str, seed: int, cache: Path = CACHE) -> dict:
    """{"train": {tap: [200, C, h, w]}, "test": {...}, "types": [...]}: every image's maps, once."""
    file = cache / f"maps-{name}-seed{seed}.pt"
    if file.exists():
        return torch.load(file)
    train, test = open_set(name, seed, 200, cache)
    backbone = create_backbone("efficientnet_lite0", layers=TAPS)
    out = {"types": list(test.defect_types)}
    with torch.inference_mode():
        for split, data in (("train", train), ("test", test)):
            parts = [backbone(torch.stack([data[j]["image"] for j in range(i, min(i + 16, len(data)))]))
                     for i in range(0, len(data), 16)]
            out[split] = {t: torch.cat([p[t] for p in parts]).half() for t in TAPS}
    torch.save(out, file)
    return out


class Stamped(torch.utils.data.Dataset):
    """Images 0..n-1 of a split as 8 x 8 pictures holding their index, for StandIn to look up."""

    def __init__(self, indices):
        self.indices = list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return {"image": torch.full((3, 8, 8), float(self.indices[i]))}


class StandIn:
    """A backbone that answers a stamped batch with the cached maps of those images."""

    def __init__(self, maps: dict[str, torch.Tensor]):
        self.maps = maps

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        index = images[:, 0, 0, 0].long().cpu()
        return {name: self.maps[ALIASES.get(name, name)][index].float() for name in self._layers}

    def bind(self, layers):
        self._layers = tuple(layers)
        return self


class Banks:
    """PatchCore's memory bank, built once per (set, seed, count, ratio) and kept in the cache:
    every candidate's local memory is PatchCore's."""

    def __init__(self):
        self.key = None
        self.real = memory_module.build_memory_bank

    def __call__(self, batches, **kwargs):
        file = CACHE / ("bank-" + "-".join(str(k) for k in self.key) + ".pt")
        if file.exists():
            for _ in batches:  # the detector collects what it needs on the way (its contexts)
                pass
            return torch.load(file, weights_only=False)  # our own file: the bank and its plan
        bank = self.real(batches, **kwargs)
        torch.save(bank, file)
        return bank


BANKS = Banks()
memory_module.build_memory_bank = BANKS  # what build_locally, the detectors' builder, calls


def holdout_split(name: str, seed: int, n: int) -> tuple[list[int], list[int]]:
    """Indices (fit, held out) of the first n training images, as Detector.fit splits them."""
    train, _ = open_set(name, seed, n)
    rest, held = train.holdout(0.1, seed=0)
    index = {s.image: i for i, s in enumerate(train.samples)}
    return [index[s.image] for s in rest.samples], [index[s.image] for s in held.samples]


def scores(detector: str, settings: dict, maps: dict, fit_indices: list[int], bank_key) -> torch.Tensor:
    det = pyanom.create(detector, **settings)
    layers = tuple(det.config.layers) + ((det.config.attention_layer,) if detector == "sa_patchcore"
                                         and det.config.attention == "channel" else ())
    det._backbone = StandIn(maps["train"]).bind(layers)
    BANKS.key = bank_key + (det.config.coreset_ratio,)
    det._fit(Stamped(fit_indices), progress=False)
    det._backbone = StandIn(maps["test"]).bind(layers)
    test = Stamped(range(len(maps["types"])))
    with torch.inference_mode():
        return torch.cat([det._score(torch.stack([test[j]["image"] for j in range(i, min(i + 32, len(test)))]))[0]
                          for i in range(0, len(test), 32)])


def gaps(result: dict, local_ref: float, n: int) -> list[float]:
    """Distance to each bar (negative: missed) of one set at one training count."""
    return [result[k] - v for k, v in BAR[n].items() if k in result] + [result["local"] - (local_ref - 0.02)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n-train", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=CACHE / "loso", help="where the trials are logged (and resumed)")
    parser.add_argument("--json", type=Path, default=None, help="write the folds and candidates here")
    args = parser.parse_args()
    grid = json.loads(args.grid.read_text())
    grid.setdefault("patchcore", {"coreset_ratio": SAPatchCoreConfig().coreset_ratio})  # the same memory
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}  # (candidate, set, seed, n) -> aurocs
    done = args.out / "trials.jsonl"
    if done.exists():
        for line in done.read_text().splitlines():
            row = json.loads(line)
            results[(row["candidate"], row["set"], row["seed"], row["n"])] = row["aurocs"]
    with done.open("a") as log:
        for name in args.sets:
            for seed in args.seeds:
                maps = cached_maps(name, seed)
                for n in args.n_train:
                    fit, _ = holdout_split(name, seed, n)
                    for cand, settings in grid.items():
                        key = (cand, name, seed, n)
                        if key in results:
                            continue
                        detector = "patchcore" if cand.startswith("patchcore") else "sa_patchcore"
                        start = time.perf_counter()
                        s = scores(detector, settings, maps, fit, (name, seed, n))
                        results[key] = type_aurocs(maps["types"], s.numpy())
                        print(f"{name} seed {seed} n {n} {cand}: " + ", ".join(
                            f"{k} {v:.3f}" for k, v in results[key].items()) + f" ({time.perf_counter() - start:.0f} s)",
                            flush=True)
                        log.write(json.dumps({"candidate": cand, "set": name, "seed": seed, "n": n,
                                              "settings": settings, "aurocs": results[key]}) + "\n")
                        log.flush()
    report(results, grid, args)


def mean_over_seeds(results, cand, name, seeds, n) -> dict:
    rows = [results[(cand, name, s, n)] for s in seeds]
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def report(results, grid, args) -> None:
    """Per candidate and set: how many of the bars it meets (each condition at each training
    count), its total shortfall (the sum of what it misses them by) and its worst margin. Each
    held-out set gets the candidate that meets the most bars on the other sets, then the one with
    the least total shortfall there, then the best worst margin: what one set can gain never
    outweighs a bar another set would lose."""
    cands = [c for c in grid if not c.startswith("patchcore")]
    if not cands:
        return
    met, short, worst = {}, {}, {}
    for cand in cands:
        for name in args.sets:
            g = [x for n in args.n_train for x in gaps(mean_over_seeds(results, cand, name, args.seeds, n),
                                                       mean_over_seeds(results, "patchcore", name, args.seeds, n)["local"], n)]
            met[(cand, name)] = sum(x >= 0 for x in g)
            short[(cand, name)], worst[(cand, name)] = -sum(min(x, 0.0) for x in g), min(g)

    def rank(cand, names):
        return (-sum(met[(cand, s)] for s in names), sum(short[(cand, s)] for s in names),
                -min(worst[(cand, s)] for s in names))

    print("\n| candidate | " + " | ".join(f"{s} bars met / shortfall / worst margin" for s in args.sets) + " |")
    print("|---|" + "---|" * len(args.sets))
    for cand in cands:
        print(f"| {cand} | " + " | ".join(f"{met[(cand, s)]} / {short[(cand, s)]:.3f} / {worst[(cand, s)]:+.3f}"
                                         for s in args.sets) + " |")
    keys = ("co-occurrence", "too_many", "missing", "wrong_place", "local")
    print("\n| held out | chosen on the others | n | " + " | ".join(keys) + " | patchcore local | patchcore co-occurrence |"
          "\n|---|---|---|" + "---|" * (len(keys) + 2))
    folds = {}
    for held in args.sets:
        others = [s for s in args.sets if s != held]
        chosen = min(cands, key=lambda c: rank(c, others))
        folds[held] = {"chosen": chosen, "settings": grid[chosen], "tuned_on": others}
        for n in args.n_train:
            r = mean_over_seeds(results, chosen, held, args.seeds, n)
            p = mean_over_seeds(results, "patchcore", held, args.seeds, n)
            folds[held][f"n{n}"] = {"sa_patchcore": r, "patchcore": p}
            cells = [f"{r[k]:.3f}" if k in r else "-" for k in keys]
            print(f"| {held} | {chosen} | {n} | " + " | ".join(cells) + f" | {p['local']:.3f} | {p['co-occurrence']:.3f} |")
    overall = min(cands, key=lambda c: rank(c, args.sets))
    print(f"\nchosen on all sets: {overall} {grid[overall]}")
    if args.json is not None:
        entries = [{"case": f"held out {held} n{n} seeds {','.join(map(str, args.seeds))}", "held_out": held,
                    "n_train": n, "seeds": args.seeds, "chosen": fold["chosen"], "settings": fold["settings"],
                    "tuned_on": fold["tuned_on"], "sa_patchcore": fold[f"n{n}"]["sa_patchcore"],
                    "patchcore": fold[f"n{n}"]["patchcore"]}
                   for held, fold in folds.items() for n in args.n_train]
        entries.append({"case": f"chosen on all sets seeds {','.join(map(str, args.seeds))}", "chosen": overall,
                        "settings": grid[overall], "bar": {str(k): v for k, v in BAR.items()},
                        "candidates": {c: {"settings": grid[c], **{s: {"bars_met": met[(c, s)],
                                                                         "shortfall": short[(c, s)],
                                                                         "worst_margin": worst[(c, s)]}
                                                                     for s in args.sets}} for c in cands}})
        record("loso", "Leave-one-set-out choice of sa_patchcore's settings on the arrangement sets: per held-out "
               "set and training count, the candidate chosen on the other sets and its figures there, beside "
               "PatchCore's (benchmarks/arrangements/loso.py)", entries, path=args.json)

if __name__ == "__main__":
    main()
