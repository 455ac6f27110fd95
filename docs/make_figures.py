"""The benchmark plots of the documentation, drawn from the JSON files under benchmarks/results/.

The docs build runs `make_all` (docs/hooks.py); by hand:

    python3 -P docs/make_figures.py OUT_DIR            # every plot whose results file exists
    python3 -P docs/make_figures.py --tour pyanom-demo docs/images/tour.png   # after `pyanom demo`

Each plot reads one results file (see benchmarks/results.py for their shape). A plot whose file
is absent is not drawn; nothing is made up. PNGs carry no time stamp, so the same results give
the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

PYANOM, PEER, OTHER = "#3f51b5", "#ff9800", "#9e9e9e"


def _entries(name: str, results: Path) -> list[dict] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text())["entries"] if path.exists() else None


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})


def anomalib(entries: list[dict], plt):
    """pyanom against anomalib: how many times faster or leaner, per measure."""
    labels = {"fit_s": "fit", "predict_ms_batch32": "predict, batch 32", "predict_ms_batch1": "predict, batch 1",
              "peak_rss_gb": "peak memory (fit)"}
    by = {(e["tool"] != "pyanom", e["metric"]): e["value"] for e in entries}
    peer = next(e["tool"] for e in entries if e["tool"] != "pyanom")
    metrics = [m for m in labels if (False, m) in by and (True, m) in by]
    ratios = [by[(True, m)] / by[(False, m)] for m in metrics]
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    bars = ax.barh([labels[m] for m in metrics], ratios, color=PYANOM)
    ax.bar_label(bars, [f"{r:.1f}x" for r in ratios], padding=3)
    ax.axvline(1, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{peer} / pyanom (higher: pyanom faster or leaner)")
    ax.set_title("PatchCore on MVTec AD bottle, Lite0, 256 px, coreset 1%", fontsize=10)
    ax.set_xlim(0, max(ratios) * 1.2)
    return fig


def kernels(entries: list[dict], plt):
    """Each kernel against its pure-PyTorch twin, log scale."""
    fig, ax = plt.subplots(figsize=(7.2, 0.32 * len(entries) + 1.2))
    names = [e["case"] for e in entries]
    ratios = [e["ratio"] for e in entries]
    colors = [OTHER if e.get("extrapolated") else PYANOM for e in entries]
    bars = ax.barh(names, ratios, color=colors)
    ax.bar_label(bars, [f"{r:g}x" + (" (extrap.)" if e.get("extrapolated") else "") for r, e in zip(ratios, entries)],
                 padding=3, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("twin time / native time (log scale; higher: native faster)")
    ax.set_xlim(0.8, max(ratios) * 6)
    return fig


def accuracy(entries: list[dict], plt):
    """Image and pixel AUROC of each detector on each data set."""
    import numpy as np

    names = [f"{e['detector']}\n{e['dataset']}" for e in entries]
    y = np.arange(len(entries))
    fig, ax = plt.subplots(figsize=(7.2, 0.55 * len(entries) + 1.0))
    image = [e.get("image_auroc") for e in entries]
    pixel = [e.get("pixel_auroc") for e in entries]
    b1 = ax.barh(y - 0.2, [v or 0 for v in image], 0.4, color=PYANOM, label="image AUROC")
    b2 = ax.barh(y + 0.2, [v or 0 for v in pixel], 0.4, color=PEER, label="pixel AUROC")
    ax.bar_label(b1, [f"{v:.3f}" if v else "" for v in image], padding=2, fontsize=8)
    ax.bar_label(b2, [f"{v:.3f}" if v else "" for v in pixel], padding=2, fontsize=8)
    for i, v in enumerate(pixel):
        if v is None:
            ax.text(0.505, i + 0.2, "no anomaly map", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.5, 1.08)
    ax.set_xlabel("AUROC")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return fig


def memory(entries: list[dict], plt):
    """Fit memory above what the process held before, exact vs sharded, against the images."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for mode, color in (("exact", PEER), ("sharded", PYANOM)):
        rows = sorted((e for e in entries if e["mode"] == mode), key=lambda e: e["images"])
        xs = [e["images"] for e in rows]
        ax.plot(xs, [e["peak_rss_mb"] - e["rss_before_fit_mb"] for e in rows], "o-", color=color, label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("training images (64 px, coreset ratio 0.01)")
    ax.set_ylabel("peak RSS above RSS before fit (MB)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def runtimes(entries: list[dict], plt):
    """ms per image of each runner, per detector and batch size."""
    import numpy as np

    detectors = list(dict.fromkeys(e["detector"] for e in entries))
    runners = list(dict.fromkeys(e["runner"] for e in entries))
    groups = [(d, b) for d in detectors for b in (1, 32)]
    x = np.arange(len(groups))
    width = 0.8 / len(runners)
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    palette = [PYANOM, "#7986cb", PEER, OTHER]
    for i, runner in enumerate(runners):
        vals = {e["detector"]: e for e in entries if e["runner"] == runner}
        ys = [vals[d][f"ms_per_image_batch{b}"] if d in vals else 0 for d, b in groups]
        ax.bar(x + (i - (len(runners) - 1) / 2) * width, ys, width, label=runner, color=palette[i % len(palette)])
    ax.set_xticks(x, [f"{d}\nbatch {b}" for d, b in groups], fontsize=8)
    ax.set_ylabel("ms per image (lower is faster)")
    ax.legend(fontsize=8)
    return fig


def arrangements(entries: list[dict], plt):
    """Image AUROC on parts with a piece twice, missing or misplaced (every patch normal) and on
    local defects, per set, training count and detector, one point per seed.

    benchmarks/results/arrangements.json entries (benchmarks/arrangements/run.py): {"case", "set",
    "n_train", "seed", "detector", "arrangement_auroc", "local_auroc", "command", "machine", "date"};
    entries without an arrangement_auroc (bottle) are not drawn."""
    entries = [e for e in entries if e.get("arrangement_auroc") is not None]
    groups = list(dict.fromkeys((e.get("set", ""), e.get("n_train", ""), e["detector"]) for e in entries))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(groups) + 1), 3.2))
    for col, (key, color, label) in enumerate((("arrangement_auroc", PYANOM, "arrangement"),
                                               ("local_auroc", PEER, "local defects"))):
        for i, group in enumerate(groups):
            vals = [e[key] for e in entries if (e.get("set", ""), e.get("n_train", ""), e["detector"]) == group
                    and e.get(key) is not None]
            ax.scatter([i + (col - 0.5) * 0.3] * len(vals), vals, color=color, label=label if i == 0 else None)
    ax.set_xticks(range(len(groups)), [f"{s} {n}\n{d}".strip() for s, n, d in groups], fontsize=7)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("image AUROC (one point per seed)")
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=8, loc="lower center")
    ax.grid(axis="y", alpha=0.3)
    return fig


FIGURES = {"anomalib": anomalib, "kernels": kernels, "accuracy": accuracy, "memory": memory,
           "runtimes": runtimes, "arrangements": arrangements}


def make_all(out: Path, results: Path = RESULTS) -> list[str]:
    """Draw every figure whose results file exists into out/NAME.png; return the names drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    with plt.rc_context({"font.size": 9, "svg.hashsalt": "pyanom"}):
        for name, draw in FIGURES.items():
            entries = _entries(name, results)
            if not entries:
                continue
            fig = draw(entries, plt)
            _save(fig, out / f"{name}.png")
            plt.close(fig)
            made.append(name)
    return made


def tour(demo: Path, out: Path, side: int = 128) -> None:
    """The README's picture: three test parts of a `pyanom demo` folder over their heatmaps."""
    from PIL import Image

    names = ["test/crack/000", "test/spot/001", "test/good/000"]
    gap = 6
    sheet = Image.new("RGB", (side * 3 + gap * 2, side * 2 + gap), "white")
    for i, name in enumerate(names):
        for row, path in enumerate((demo / "data" / f"{name}.png", demo / "heatmaps" / f"{name}.png.png")):
            image = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
            sheet.paste(image, (i * (side + gap), row * (side + gap)))
    sheet.quantize(96, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tour"]:
        tour(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(make_all(Path(sys.argv[1])))
