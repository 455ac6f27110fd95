"""Evaluation metrics for anomaly detection: image and pixel AUROC and AP, AUPRO, F1-max.

Conventions: label 1 (or True) means defect; a higher score means more anomalous; a decision
threshold ``t`` flags an image as defective when ``score >= t``. Inputs may be numpy arrays,
torch tensors (any device) or sequences.

Ranking metrics are undefined when only one class is present (no good or no defective image,
no defect or no normal pixel). Such metrics come back as ``None`` instead of raising, so that an
evaluation of a set without defects still reports what it can; :func:`evaluate` says why in
``notes``. Malformed input (mismatched lengths or shapes, non-binary labels, NaN scores) raises
``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve

__all__ = [
    "image_auroc",
    "average_precision",
    "f1_max",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "evaluate",
    "metrics_table",
    "threshold_from_normal_scores",
]

# Ground-truth regions are 8-connected, as in the MVTec AD evaluation code: pixels touching
# at a corner belong to one defect. The middle slice only: images in a stack never connect.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def _numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # half, bfloat16: no numpy twin
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array, tensor or sequence of numbers: {err}") from None


def _binary(x, name: str, ndim: int) -> np.ndarray:
    a = _numpy(x, name)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must hold 0/1 or booleans, got dtype {a.dtype}")
    if np.any((a != 0) & (a != 1)):
        bad = a[(a != 0) & (a != 1)].flat[0]
        raise ValueError(f"{name} must be binary (0/1 or bool), found the value {bad}; "
                         "threshold it first")
    return a != 0


def _scores(x, name: str, ndim: int) -> np.ndarray:
    a = _numpy(x, name)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _image_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(labels, "labels", 1)
    s = _scores(scores, "scores", 1)
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length: {len(y)} vs {len(s)}")
    return y, s


def _pixel_inputs(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    m = _binary(masks, "masks", 3)
    a = _scores(maps, "maps", 3)
    if m.shape != a.shape:
        raise ValueError(f"masks and maps differ in shape: {m.shape} vs {a.shape} (Detector.predict(..., "
                         "map_size='model') gives maps at the size InspectionSet.masks() has)")
    return m, a


def _sorted_classes(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The scores of the positives and of the negatives, each sorted ascending (flattened); None
    when either class is empty. Both ranking metrics below count one class against the other by
    binary search in these."""
    pos = np.sort(scores[positive], axis=None)
    neg = np.sort(scores[~positive], axis=None)
    if pos.size == 0 or neg.size == 0:
        return None
    return pos, neg


def _auroc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact AUROC as the Mann-Whitney statistic, ties counting one half.

    Sorting each class and counting with binary search gives sklearn's value without its
    per-threshold curve, which is what makes pixel metrics over millions of pixels cheap.
    """
    classes = _sorted_classes(positive, scores)
    if classes is None:
        return None
    pos, neg = classes
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    return float(below + below_or_tied) / (2.0 * pos.size * neg.size)


def _average_precision(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact average precision, sklearn's step definition: the sum over the distinct scores t of
    the positives of (share of positives scoring t) x precision(score >= t).

    Sorting each class and counting with binary search, as for the AUROC, gives sklearn's value
    without building its curve.
    """
    classes = _sorted_classes(positive, scores)
    if classes is None:
        return None
    pos, neg = classes
    values, first, count = np.unique(pos, return_index=True, return_counts=True)
    true_positives = pos.size - first
    false_positives = neg.size - np.searchsorted(neg, values, side="left")
    return float(np.sum(count * (true_positives / (true_positives + false_positives))) / pos.size)


def _two_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


def image_auroc(labels, scores) -> float | None:
    """Area under the ROC curve of image scores; None unless both classes are present."""
    y, s = _image_inputs(labels, scores)
    return _auroc(y, s)


def average_precision(labels, scores) -> float | None:
    """Average precision (area under the precision-recall curve, sklearn's step definition);
    None unless both classes are present."""
    y, s = _image_inputs(labels, scores)
    return _average_precision(y, s)


def f1_max(labels, scores) -> tuple[float, float] | tuple[None, None]:
    """Best F1 over all thresholds and the threshold reaching it.

    The threshold is an observed score; ``score >= threshold`` means defect. Among thresholds
    with equal F1 the lowest is returned. (None, None) unless both classes are present.
    """
    y, s = _image_inputs(labels, scores)
    if not _two_classes(y):
        return None, None
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def pixel_auroc(masks, maps) -> float | None:
    """AUROC over all pixels of all images, masks [N,H,W] binary vs anomaly maps [N,H,W].

    Exact (ties count one half). None when there is no defect pixel or no normal pixel.
    """
    m, a = _pixel_inputs(masks, maps)
    return _auroc(m, a)


def pixel_ap(masks, maps) -> float | None:
    """Average precision over all pixels of all images, masks [N,H,W] binary vs anomaly maps
    [N,H,W]: how well the map ranks defect pixels first, where defect pixels are rare (a few
    per cent) and the AUROC is dominated by the easy normal background. None when there is no
    defect pixel or no normal pixel."""
    m, a = _pixel_inputs(masks, maps)
    return _average_precision(m, a)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the polyline (x, y), x non-decreasing, from x[0] to x_max;
    the segment crossing x_max is cut at its linearly interpolated value."""
    x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
    inside = x0 < x_max
    x0, x1, y0, y1 = x0[inside], x1[inside], y0[inside], y1[inside]
    end = np.minimum(x1, x_max)
    width = x1 - x0
    y_end = np.where(width > 0, y0 + (y1 - y0) * (end - x0) / np.where(width > 0, width, 1), y1)
    return float(np.sum((end - x0) * (y0 + y_end)) / 2)


def aupro(masks, maps, max_fpr: float = 0.3) -> float | None:
    """Area under the per-region-overlap (PRO) curve up to ``max_fpr``, divided by ``max_fpr``.

    The MVTec AD definition (Bergmann et al., IJCV 2021) and its official evaluation code: each
    8-connected component of each ground-truth mask is a region; at threshold t, PRO is the
    mean over all regions of the fraction of the region with score >= t, and the FPR is the
    fraction of normal pixels (all images) with score >= t. The curve runs over every distinct
    score, from (0, 0) to (1, 1), and is integrated with the trapezoid rule, cut at ``max_fpr``
    by linear interpolation.

    Exact and vectorised: scores are sorted once and PRO / FPR are cumulative sums of
    per-pixel weights (1 / region size, resp. 1 per normal pixel). Only pixels scoring at least
    the normal score at which the FPR passes ``max_fpr`` can move the curve below it, so the
    rest are dropped before sorting. None when there is no defect or no normal pixel.
    """
    _check_max_fpr(max_fpr)
    return _aupro(*_pixel_inputs(masks, maps), max_fpr)


def _check_max_fpr(max_fpr: float) -> None:
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")


def _aupro(m: np.ndarray, a: np.ndarray, max_fpr: float) -> float | None:
    """aupro on checked masks (bool) and maps."""
    regions, num_regions = ndimage.label(m, structure=_REGION_STRUCTURE)
    region_size = np.bincount(regions.ravel(), minlength=num_regions + 1)
    num_normal = int(region_size[0])
    if num_regions == 0 or num_normal == 0:
        return None
    scores, regions = a.ravel(), regions.ravel()

    # The (keep)-th highest normal score is a threshold whose FPR exceeds max_fpr (two spare
    # pixels of margin against rounding in max_fpr * num_normal); pixels below it never count.
    keep = math.floor(max_fpr * num_normal) + 2
    if keep < num_normal:
        normal_scores = scores[regions == 0]
        cut = np.partition(normal_scores, num_normal - keep)[num_normal - keep]
        selected = scores >= cut
        scores, regions = scores[selected], regions[selected]

    order = np.argsort(scores)[::-1]
    scores, regions = scores[order], regions[order]
    fpr = np.cumsum(regions == 0) / num_normal
    weight = 1.0 / region_size
    weight[0] = 0.0
    pro = np.cumsum(weight[regions]) / num_regions
    # One curve point per distinct score: the last pixel of each run of ties.
    last = np.append(scores[1:] != scores[:-1], True)
    x = np.concatenate(([0.0], np.minimum(fpr[last], 1.0), [1.0]))
    y = np.concatenate(([0.0], np.minimum(pro[last], 1.0), [1.0]))
    return _area_up_to(x, y, max_fpr) / max_fpr


def evaluate(labels, scores, masks=None, maps=None, defect_types: Sequence[str] | None = None,
             *, max_fpr: float = 0.3) -> dict:
    """All metrics of an evaluation run, overall and per defect type.

    labels [N] (1 = defect), scores [N]; masks and maps [N,H,W] (good images have empty
    masks); defect_types [N]: the defect type of each image (the value for good images is
    ignored). Each defect type is scored against all good images. Returns a dict with
    image_auroc, ap, f1_max, threshold (where F1 is max), pixel_auroc, pixel_ap, aupro, num_good,
    num_defect, per_defect_type {type: {image_auroc, ap, pixel_auroc, pixel_ap, aupro, count}} and notes
    (why a metric is None). Pixel metrics are None without masks and maps or without defect
    pixels.
    """
    _check_max_fpr(max_fpr)
    y, s = _image_inputs(labels, scores)
    have_pixels = masks is not None and maps is not None
    if have_pixels:
        m, a = _pixel_inputs(masks, maps)
        if len(m) != len(y):
            raise ValueError(f"masks/maps hold {len(m)} images but labels {len(y)}")
    if defect_types is not None:
        types = [str(t) for t in defect_types]
        if len(types) != len(y):
            raise ValueError(f"defect_types has {len(types)} entries but labels {len(y)}")

    notes = []
    num_defect = int(y.sum())
    num_good = len(y) - num_defect
    if not _two_classes(y):
        notes.append(f"image metrics undefined: {num_good} good and {num_defect} defective "
                     "images, both classes are needed")
    if masks is None:
        notes.append("pixel metrics undefined: no masks")
    elif maps is None:
        notes.append("pixel metrics undefined: no anomaly maps")
    elif not m.any():
        notes.append("pixel metrics undefined: the masks hold no defect pixel")

    def scored(subset: np.ndarray) -> dict:
        result = {"image_auroc": _auroc(y[subset], s[subset]),
                  "ap": average_precision(y[subset], s[subset]),
                  "pixel_auroc": None, "pixel_ap": None, "aupro": None}
        if have_pixels:
            result["pixel_auroc"] = _auroc(m[subset], a[subset])
            result["pixel_ap"] = _average_precision(m[subset], a[subset])
            result["aupro"] = _aupro(m[subset], a[subset], max_fpr)
        return result

    everything = scored(np.ones(len(y), dtype=bool))
    f1, threshold = f1_max(y, s)
    result = {**everything, "f1_max": f1, "threshold": threshold,
              "num_good": num_good, "num_defect": num_defect, "per_defect_type": {}}
    if defect_types is not None:
        types_arr = np.array(types, dtype=object)
        for name in sorted(set(types_arr[y].tolist())):
            of_type = y & (types_arr == name)
            result["per_defect_type"][name] = {**scored(of_type | ~y), "count": int(of_type.sum())}
    result["notes"] = notes
    return result


def threshold_from_normal_scores(scores, *, method: str = "sigma", k: float = 3.0,
                                 quantile: float = 0.99) -> float:
    """A decision threshold from the scores of normal images only (a held-out part of the
    training set, never the images the memory was built from, whose scores are too low).

    method="sigma" (default): mean + k * standard deviation (k = 3). It uses every score, so
    it is stable with the 10-50 hold-out images typical of a small training set, and k = 3
    leaves a margin above the normal spread (0.13 % false alarms if the scores were
    Gaussian; kNN-distance scores are skewed to the right, so expect somewhat more).
    method="quantile": the ``quantile`` of the scores (linear interpolation), free of any
    distribution assumption but only meaningful with well over 1 / (1 - quantile) scores;
    it refuses fewer.
    """
    s = _scores(scores, "scores", 1)
    if method == "sigma":
        if len(s) < 2:
            raise ValueError("method='sigma' needs at least 2 normal scores to measure their spread")
        return float(s.mean() + k * s.std(ddof=1))
    if method == "quantile":
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        needed = math.ceil(1 / (1 - quantile))
        if len(s) < needed:
            raise ValueError(f"the {quantile} quantile needs at least {needed} normal scores, "
                             f"got {len(s)}; use method='sigma' or a lower quantile")
        return float(np.quantile(s, quantile))
    raise ValueError(f"method must be 'sigma' or 'quantile', got {method!r}")


TABLE_COLUMNS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "ap", "f1_max")


def metrics_table(report: dict) -> str:
    """The result of :func:`evaluate` (as `pyanom evaluate` completes it) as a text table: one row
    for all images and one per defect type, then the thresholds and the time per image."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731

    def row(name, values):
        return f"{name:<16}" + "".join(f"{fmt(values.get(k)):>12}" for k in TABLE_COLUMNS) + f"{values.get('count', ''):>8}"

    lines = [f"{'':<16}" + "".join(f"{k:>12}" for k in TABLE_COLUMNS) + f"{'count':>8}", row("all", report)]
    lines += [row(name, values) for name, values in sorted(report.get("per_defect_type", {}).items())]
    lines.append(f"decision threshold (from fit): {fmt(report.get('decision_threshold'))}; "
                 f"F1-max threshold on this data: {fmt(report.get('threshold'))}")
    if "pixel_metrics_unavailable" in report:
        lines.append(f"pixel metrics unavailable: {report['pixel_metrics_unavailable']} (image labels only)")
    if "ms_per_image" in report:
        seconds = report["ms_per_image"] * report["count"] / 1000
        lines.append(f"{report['count']} images in {seconds:.1f} s ({report['ms_per_image']:.1f} ms/image)")
    return "\n".join(lines)
