"""pyanom.metrics against scikit-learn and brute-force threshold loops."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from pyanom import metrics


def random_binary(rng, n, p=0.4):
    y = rng.random(n) < p
    y[0], y[1] = True, False  # both classes
    return y


# ---------------------------------------------------------------- image metrics

@pytest.mark.parametrize("n", [2, 3, 5, 37, 500])
@pytest.mark.parametrize("levels", [None, 4, 1])  # continuous scores, ties, or ties across both classes
@pytest.mark.parametrize("p", [0.05, 0.4, 0.9])  # share of defects
def test_image_auroc_and_ap_match_sklearn(n, levels, p):
    rng = np.random.default_rng(n)
    y = random_binary(rng, n, p)
    s = rng.normal(size=n) + y
    if levels:
        s = np.round(s * levels) / levels
    assert metrics.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_image_metrics_accept_torch_lists_and_ints():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    expected = roc_auc_score(y, s)
    assert metrics.image_auroc(torch.tensor(y), torch.tensor(s)) == pytest.approx(expected)
    assert metrics.image_auroc(np.array(y, bool), np.array(s, np.float16)) == pytest.approx(expected)
    assert metrics.image_auroc(y, torch.tensor(s, dtype=torch.bfloat16)) == pytest.approx(expected)
    assert metrics.average_precision(y, s) == pytest.approx(0.8333333333)  # sklearn's docs example


def test_known_image_examples():
    y = [0, 0, 1, 1]
    assert metrics.image_auroc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.image_auroc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert metrics.image_auroc(y, [1, 1, 1, 1]) == 0.5
    assert metrics.average_precision(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.f1_max(y, [0.1, 0.2, 0.3, 0.4]) == (1.0, 0.3)


def brute_f1(y, s):
    best = (-1.0, None)
    for t in np.unique(s):  # ascending: the first best is the lowest threshold
        pred = s >= t
        tp = np.sum(pred & y)
        f1 = 2 * tp / (pred.sum() + y.sum())
        if f1 > best[0] + 1e-15:
            best = (f1, t)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    y = random_binary(rng, n)
    s = np.round(rng.normal(size=n) + y, 1)  # ties
    f1, threshold = metrics.f1_max(y, s)
    want_f1, want_t = brute_f1(y, s)
    assert f1 == pytest.approx(want_f1, abs=1e-12)
    assert threshold == want_t
    pred = s >= threshold  # the threshold's meaning
    assert 2 * np.sum(pred & y) / (pred.sum() + y.sum()) == pytest.approx(f1)


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_single_class_is_undefined(y):
    s = [0.2, 0.5, 0.1]
    assert metrics.image_auroc(y, s) is None
    assert metrics.average_precision(y, s) is None
    assert metrics.f1_max(y, s) == (None, None)


@pytest.mark.parametrize("labels, scores, match", [
    ([0, 1, 1], [0.1, 0.2], "differ in length"),
    ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
    ([0, 1], [0.1, float("nan")], "NaN"),
    ([0, 1], [0.1, float("inf")], "NaN or Inf"),
    ([[0, 1]], [[0.1, 0.2]], "dimension"),
    ([], [], "empty"),
])
def test_bad_image_inputs(labels, scores, match):
    for fn in (metrics.image_auroc, metrics.average_precision, metrics.f1_max):
        with pytest.raises(ValueError, match=match):
            fn(labels, scores)


def test_non_numeric_scores_rejected():
    with pytest.raises(TypeError, match="real numbers"):
        metrics.image_auroc([0, 1], ["a", "b"])


# ---------------------------------------------------------------- pixel metrics

def random_masks(rng, n, h, w, blobs=3):
    """Masks with several rectangles per defective image (some touch, some only diagonally)."""
    masks = np.zeros((n, h, w), bool)
    for i in range(1, n):  # image 0 stays good
        for _ in range(int(rng.integers(1, blobs + 1))):
            r, c = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, r:r + rng.integers(1, 4), c:c + rng.integers(1, 4)] = True
    return masks


@pytest.mark.parametrize("levels", [None, 5])
def test_pixel_auroc_matches_sklearn(levels):
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 6, 20, 24)
    maps = rng.random(masks.shape).astype(np.float32) + 0.3 * masks
    if levels:
        maps = np.round(maps * levels) / levels
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(want, abs=1e-12)
    assert metrics.pixel_auroc(torch.from_numpy(masks).float(), torch.from_numpy(maps)) == \
        pytest.approx(want, abs=1e-12)
    want = average_precision_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_ap(masks, maps) == pytest.approx(want, abs=1e-12)
    assert metrics.pixel_ap(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(want, abs=1e-12)


def pro_curve_area_brute(masks, maps, max_fpr, structure=np.ones((3, 3))):
    """Threshold by threshold, region by region, as the definition reads."""
    regions = []
    for i in range(len(masks)):
        lab, k = ndimage.label(masks[i], structure=structure)
        regions += [(i, lab == r) for r in range(1, k + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([(pred[i] & region).sum() / region.sum() for i, region in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 >= max_fpr:
            break
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_cut) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("levels", [None, 12])
def test_aupro_matches_brute_force(seed, max_fpr, levels):
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, 4, 14, 12, blobs=4)
    maps = rng.random(masks.shape) + 0.5 * masks * rng.random(masks.shape)
    if levels:
        maps = np.round(maps * levels) / levels
    got = metrics.aupro(masks, maps, max_fpr=max_fpr)
    assert got == pytest.approx(pro_curve_area_brute(masks, maps, max_fpr), abs=1e-6)


def test_aupro_regions_are_8_connected():
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # touch at a corner only
    masks[0, 4, 4] = True
    maps = np.random.default_rng(0).random(masks.shape)
    eight = pro_curve_area_brute(masks, maps, 0.3)
    four = pro_curve_area_brute(masks, maps, 0.3, structure=ndimage.generate_binary_structure(2, 1))
    assert eight != pytest.approx(four)
    assert metrics.aupro(masks, maps) == pytest.approx(eight, abs=1e-12)


def test_aupro_equals_pixel_auroc_with_one_pixel_regions():
    # With every region one pixel, PRO is the TPR, so the full PRO curve is the ROC curve.
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 16, 16), bool)
    masks[:, ::3, ::3] = rng.random((3, 6, 6)) < 0.5
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 2)
    assert metrics.aupro(masks, maps, max_fpr=1.0) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)


def test_known_pixel_examples():
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:5, 3:6] = True
    assert metrics.pixel_auroc(masks, masks * 1.0) == 1.0
    assert metrics.pixel_ap(masks, masks * 1.0) == 1.0
    assert metrics.aupro(masks, masks * 1.0) == pytest.approx(1.0)
    assert metrics.pixel_auroc(masks, ~masks * 1.0) == 0.0
    assert metrics.pixel_ap(masks, ~masks * 1.0) == pytest.approx(9 / 128)  # every pixel tied at the end
    assert metrics.aupro(masks, ~masks * 1.0) == 0.0
    assert metrics.pixel_auroc(masks, np.zeros(masks.shape)) == 0.5
    assert metrics.pixel_ap(masks, np.zeros(masks.shape)) == pytest.approx(9 / 128)  # the defect share


def test_pixel_metrics_undefined_without_both_pixel_classes():
    maps = np.random.default_rng(0).random((2, 5, 5))
    for masks in (np.zeros((2, 5, 5)), np.ones((2, 5, 5))):
        assert metrics.pixel_auroc(masks, maps) is None
        assert metrics.pixel_ap(masks, maps) is None
        assert metrics.aupro(masks, maps) is None


def test_bad_pixel_inputs():
    maps = np.zeros((2, 5, 5))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.pixel_auroc(np.zeros((2, 5, 4)), maps)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.pixel_ap(np.zeros((2, 5, 4)), maps)
    with pytest.raises(ValueError, match="NaN"):
        metrics.pixel_ap(np.zeros((2, 5, 5)), np.full((2, 5, 5), np.nan))
    with pytest.raises(ValueError, match="found the value 255"):
        metrics.aupro(np.full((2, 5, 5), 255, np.uint8), maps)
    with pytest.raises(ValueError, match="3 dimension"):
        metrics.pixel_auroc(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.aupro(np.zeros((2, 5, 5)), np.full((2, 5, 5), np.nan))
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.aupro(np.zeros((2, 5, 5)), maps, max_fpr=0)


# ---------------------------------------------------------------- evaluate

def make_run(rng):
    types = ["good"] * 5 + ["crack"] * 4 + ["spot"] * 3
    labels = np.array([t != "good" for t in types])
    masks = np.zeros((12, 10, 10), bool)
    for i in range(5, 12):
        r, c = rng.integers(0, 7, 2)
        masks[i, r:r + 3, c:c + 3] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    scores = maps.reshape(12, -1).max(1) + 0.1 * rng.normal(size=12)
    return labels, scores, masks, maps, types


def test_evaluate_overall_and_per_defect_type():
    labels, scores, masks, maps, types = make_run(np.random.default_rng(0))
    result = metrics.evaluate(labels, scores, masks, maps, types)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert (result["f1_max"], result["threshold"]) == metrics.f1_max(labels, scores)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert result["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert result["aupro"] == pytest.approx(metrics.aupro(masks, maps))
    assert (result["num_good"], result["num_defect"], result["notes"]) == (5, 7, [])
    assert set(result["per_defect_type"]) == {"crack", "spot"}
    crack = result["per_defect_type"]["crack"]
    subset = np.array([t in ("good", "crack") for t in types])
    assert crack["count"] == 4
    assert crack["image_auroc"] == pytest.approx(roc_auc_score(labels[subset], scores[subset]))
    assert crack["ap"] == pytest.approx(average_precision_score(labels[subset], scores[subset]))
    assert crack["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks[subset], maps[subset]))
    assert crack["pixel_ap"] == pytest.approx(average_precision_score(masks[subset].ravel(), maps[subset].ravel()))
    assert crack["aupro"] == pytest.approx(metrics.aupro(masks[subset], maps[subset]))


def test_evaluate_without_maps_or_defects():
    labels, scores, masks, maps, types = make_run(np.random.default_rng(1))
    result = metrics.evaluate(labels, scores, defect_types=types)
    assert result["pixel_auroc"] is None and result["pixel_ap"] is None and result["aupro"] is None
    assert result["per_defect_type"]["spot"]["pixel_auroc"] is None
    assert result["per_defect_type"]["spot"]["pixel_ap"] is None
    assert any("pixel metrics undefined" in note for note in result["notes"])

    good = ~labels
    result = metrics.evaluate(labels[good], scores[good], masks[good], maps[good])
    for key in ("image_auroc", "ap", "f1_max", "threshold", "pixel_auroc", "pixel_ap", "aupro"):
        assert result[key] is None
    assert result["per_defect_type"] == {}
    assert len(result["notes"]) == 2


def test_evaluate_rejects_mismatched_inputs():
    labels, scores, masks, maps, types = make_run(np.random.default_rng(2))
    with pytest.raises(ValueError, match="12 images but labels 11"):
        metrics.evaluate(labels[:11], scores[:11], masks, maps)
    with pytest.raises(ValueError, match="defect_types has 11"):
        metrics.evaluate(labels, scores, defect_types=types[:11])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.evaluate(labels, scores[:11])


# ---------------------------------------------------------------- threshold from normal scores

def test_threshold_from_normal_scores():
    s = np.random.default_rng(0).normal(10, 2, size=400)
    assert metrics.threshold_from_normal_scores(s) == pytest.approx(s.mean() + 3 * s.std(ddof=1))
    assert metrics.threshold_from_normal_scores(s, k=2) == pytest.approx(s.mean() + 2 * s.std(ddof=1))
    q = metrics.threshold_from_normal_scores(s, method="quantile", quantile=0.99)
    assert q == pytest.approx(np.quantile(s, 0.99))
    assert np.mean(s >= q) <= 0.01 + 1 / len(s)


def test_threshold_from_normal_scores_errors():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.threshold_from_normal_scores([1.0])
    with pytest.raises(ValueError, match="needs at least 100"):
        metrics.threshold_from_normal_scores(np.arange(50.0), method="quantile", quantile=0.99)
    with pytest.raises(ValueError, match="quantile must be"):
        metrics.threshold_from_normal_scores(np.arange(50.0), method="quantile", quantile=1.0)
    with pytest.raises(ValueError, match="method"):
        metrics.threshold_from_normal_scores(np.arange(50.0), method="max")
