"""`pyanom evaluate --report DIR`: one self-contained HTML page an engineer reads offline.

It answers "is this model, with this threshold, fit for the line?": the miss and false-alarm
rates at the decision threshold, ROC and precision-recall curves with the threshold marked,
the score histograms of good and defective parts, the per-defect table, and the worst misses
and false alarms with their heatmaps. Plots are inline SVG and pictures embedded PNGs: no
script, no CDN, nothing beside the one file.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from pyanom._fs import atomic_path
from pyanom.visualize import heatmap_scale, overlay, resize_map

__all__ = ["write_report"]

GOOD, DEFECT, THRESHOLD = "#1e8e3e", "#c5221f", "#1d2330"


def write_report(out_dir, dataset, pred, detector, metrics: dict, *, title: str = "model",
                 worst: int = 6) -> Path:
    """Write ``out_dir/index.html`` for a test set, its Prediction, the detector and the dict of
    :func:`pyanom.metrics.evaluate`; returns the file's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(dataset.labels, dtype=bool)
    scores = pred.image_scores.numpy().astype(np.float64)
    threshold = float(detector.threshold)
    flagged = scores >= threshold
    n_good, n_defect = int((~labels).sum()), int(labels.sum())
    misses, alarms = int((labels & ~flagged).sum()), int((~labels & flagged).sum())

    def rate(k, n):
        return f"{k} of {n} ({100 * k / n:.1f} %)" if n else "-"

    def num(v):
        return "-" if v is None else f"{v:.4f}"

    summary = [("decision threshold", f"{threshold:.4g}"),
               ("missed defects (defective scored below it)", rate(misses, n_defect)),
               ("false alarms (good scored at or above it)", rate(alarms, n_good)),
               ("image AUROC", num(metrics.get("image_auroc"))), ("image AP", num(metrics.get("ap"))),
               ("pixel AUROC", num(metrics.get("pixel_auroc"))), ("pixel AP", num(metrics.get("pixel_ap"))),
               ("AUPRO (FPR <= 0.3)", num(metrics.get("aupro"))),
               ("F1-max on this data, at threshold", f"{num(metrics.get('f1_max'))} at "
                                                     f"{'-' if metrics.get('threshold') is None else format(metrics['threshold'], '.4g')}")]
    plots = []
    if n_good and n_defect:
        fpr, tpr, _ = roc_curve(labels, scores)
        at = (alarms / n_good, 1 - misses / n_defect)
        plots.append(_svg_plot("ROC curve", "false-alarm rate", "detection rate", fpr, tpr, at))
        precision, recall, _ = precision_recall_curve(labels, scores)
        at = (1 - misses / n_defect, (n_defect - misses) / max(1, int(flagged.sum())))
        plots.append(_svg_plot("Precision-recall curve", "recall", "precision", recall, precision, at))
    plots.append(_svg_histogram(scores, labels, threshold))

    types = np.array(dataset.defect_types, dtype=object)
    rows = [f"<tr><td>good</td><td>{n_good}</td><td>{rate(alarms, n_good)} false alarms</td>"
            "<td colspan=5></td></tr>"]
    for name, row in sorted(metrics.get("per_defect_type", {}).items()):
        of_type = labels & (types == name)
        caught = int((of_type & flagged).sum())
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{row['count']}</td>"
                    f"<td>{rate(caught, int(of_type.sum()))} detected</td>"
                    + "".join(f"<td>{num(row.get(k))}</td>" for k in ("image_auroc", "ap", "pixel_auroc", "aupro"))
                    + "</tr>")

    maps = pred.anomaly_maps
    scale = None if maps is None else heatmap_scale(threshold, min(float(m.min()) for m in maps))
    defect_idx = np.flatnonzero(labels)[np.argsort(scores[labels], kind="stable")][:worst]
    good_idx = np.flatnonzero(~labels)[np.argsort(-scores[~labels], kind="stable")][:worst]

    def gallery(indices, verdict):
        cards = []
        for i in indices:
            item = dataset[int(i)]
            path = Path(item["path"])
            label = verdict(flagged[i])
            cards.append(f'<figure class="{label[1]}"><img src="data:image/png;base64,{_picture(item, maps, i, scale)}" '
                         f'alt="{html.escape(path.name)}"><figcaption>{html.escape(path.parent.name)}/'
                         f'{html.escape(path.name)}<br>score {scores[i]:.4g}: <b>{label[0]}</b></figcaption></figure>')
        return "".join(cards) or "<p>none in this test set</p>"

    page = _PAGE.format(
        title=html.escape(title), detector=html.escape(detector.name),
        when=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), n_good=n_good, n_defect=n_defect,
        summary="".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary),
        plots="".join(plots), rows="".join(rows),
        misses=gallery(defect_idx, lambda f: ("caught", "good") if f else ("MISSED", "bad")),
        alarms=gallery(good_idx, lambda f: ("FALSE ALARM", "bad") if f else ("passed", "good")),
        heat_note="" if maps is None else f"Heatmap colours: blue at {scale[0]:.3g}, red from {scale[1]:.3g} "
                                          "(1.5x the threshold) up, the same scale on every picture; a white "
                                          "outline is the annotated defect.")
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _picture(item: dict, maps, i: int, scale) -> str:
    """The image, with its heatmap and mask outline when the detector makes maps, as base64 PNG."""
    if maps is None:
        rgb = np.rint(item["image"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    else:
        mask = item.get("mask")
        rgb = overlay(item["image"], resize_map(maps[i], item["image"].shape[-2:]), vmin=scale[0], vmax=scale[1],
                      mask=mask[0] if mask is not None and mask.any() else None)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


_W, _H, _M = 360, 300, 48  # plot size and margin, px


def _axes(title: str, xlabel: str, ylabel: str, xticks, yticks, fx, fy) -> list[str]:
    parts = [f'<svg class="plot" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img">',
             f'<text x="{_W / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>',
             f'<rect x="{_M}" y="24" width="{_W - _M - 12}" height="{_H - _M - 24}" fill="none" stroke="#999"/>']
    for t in xticks:
        parts.append(f'<text x="{fx(t):.1f}" y="{_H - _M + 16}" text-anchor="middle">{t:.3g}</text>')
    for t in yticks:
        parts.append(f'<text x="{_M - 4}" y="{fy(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    parts.append(f'<text x="{_W / 2}" y="{_H - 10}" text-anchor="middle">{xlabel}</text>')
    parts.append(f'<text transform="translate(12 {_H / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    return parts


def _svg_plot(title, xlabel, ylabel, x, y, at) -> str:
    """A curve on [0, 1] x [0, 1] with the decision threshold's operating point marked."""
    def fx(v):
        return _M + v * (_W - _M - 12)

    def fy(v):
        return _H - _M - v * (_H - _M - 24)

    parts = _axes(title, xlabel, ylabel, [0, 0.5, 1], [0, 0.5, 1], fx, fy)
    points = " ".join(f"{fx(a):.1f},{fy(b):.1f}" for a, b in zip(x, y))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#2d6cdf" stroke-width="2"/>')
    parts.append(f'<circle cx="{fx(at[0]):.1f}" cy="{fy(at[1]):.1f}" r="5" fill="{THRESHOLD}">'
                 f'<title>at the decision threshold</title></circle>')
    right = at[0] > 0.7  # keep the label inside the plot
    parts.append(f'<text x="{fx(at[0]) + (-8 if right else 8):.1f}" y="{fy(at[1]) + 16:.1f}" '
                 f'text-anchor="{"end" if right else "start"}">threshold</text></svg>')
    return "".join(parts)


def _svg_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, bins: int = 30) -> str:
    """Score histograms of good and defective images on one axis, with the threshold line."""
    low, high = min(scores.min(), threshold), max(scores.max(), threshold)
    high = high if high > low else low + 1
    edges = np.linspace(low, high, bins + 1)
    good, _ = np.histogram(scores[~labels], edges)
    bad, _ = np.histogram(scores[labels], edges)
    top = max(1, int(max(good.max(initial=0), bad.max(initial=0))))

    def fx(v):
        return _M + (v - low) / (high - low) * (_W - _M - 12)

    def fy(v):
        return _H - _M - v / top * (_H - _M - 24)

    parts = _axes("Image scores", "image score", "images", [low, (low + high) / 2, high], [0, top], fx, fy)
    for counts, colour, name in ((good, GOOD, "good"), (bad, DEFECT, "defective")):
        for k, c in enumerate(counts):
            if c:
                parts.append(f'<rect x="{fx(edges[k]):.1f}" y="{fy(c):.1f}" width="{fx(edges[k + 1]) - fx(edges[k]):.1f}" '
                             f'height="{fy(0) - fy(c):.1f}" fill="{colour}" fill-opacity="0.55">'
                             f'<title>{c} {name}</title></rect>')
    parts.append(f'<line x1="{fx(threshold):.1f}" x2="{fx(threshold):.1f}" y1="24" y2="{_H - _M}" '
                 f'stroke="{THRESHOLD}" stroke-width="2" stroke-dasharray="5 3"/>')
    parts.append(f'<text x="{fx(threshold) + 4:.1f}" y="38">threshold {threshold:.3g}</text>')
    parts.append(f'<rect x="{_W - 110}" y="44" width="10" height="10" fill="{GOOD}"/>'
                 f'<text x="{_W - 96}" y="53">good</text>'
                 f'<rect x="{_W - 110}" y="60" width="10" height="10" fill="{DEFECT}"/>'
                 f'<text x="{_W - 96}" y="69">defective</text></svg>')
    return "".join(parts)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pyanom report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 20px auto; max-width: 1180px; color: #1d2330; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
td, th {{ padding: 4px 10px; border-bottom: 1px solid #e3e6eb; text-align: left; }}
svg.plot {{ font-size: 11px; margin: 0 12px 12px 0; background: #fafbfc; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: 180px; font-size: 13px; }}
figure img {{ width: 180px; height: auto; display: block; border: 3px solid transparent; }}
figure.bad img {{ border-color: #c5221f; }} figure.good img {{ border-color: #1e8e3e; }}
</style></head><body>
<h1>pyanom evaluation: {title}</h1>
<p>Detector <b>{detector}</b>; {n_good} good and {n_defect} defective test images; written {when}.</p>
<h2>At the decision threshold</h2>
<table id="summary">{summary}</table>
<h2>Curves and scores</h2>
<div id="plots">{plots}</div>
<h2>Per defect type</h2>
<table id="per-defect"><tr><th>type</th><th>images</th><th>at the threshold</th><th>image AUROC</th>
<th>image AP</th><th>pixel AUROC</th><th>AUPRO</th></tr>{rows}</table>
<p>Each defect type's AUROC and AP are computed against all good images.</p>
<h2>Worst misses: the defective images scored lowest</h2>
<div class="gallery" id="misses">{misses}</div>
<h2>Worst false alarms: the good images scored highest</h2>
<div class="gallery" id="alarms">{alarms}</div>
<p>{heat_note}</p>
</body></html>
"""
