"""PatchCore and SA-PatchCore: behaviour on synthetic parts, save/load."""

from __future__ import annotations

import pytest
import torch

import pyanom
from pyanom.data import open_dataset
from pyanom.metrics import evaluate, threshold_from_normal_scores


@pytest.fixture(scope="module")
def fitted(texture_set):
    det = pyanom.create("patchcore", image_size=128, coreset_ratio=0.1)
    det.fit(open_dataset(texture_set, "train", image_size=128).normal(), progress=False)
    return det


def test_scores_defects_above_good_parts(fitted, texture_set):
    test = open_dataset(texture_set, "test", image_size=128)
    pred = fitted.predict(test)
    assert pred.image_scores.shape == (len(test),)
    assert pred.anomaly_maps.shape == (len(test), 128, 128)
    assert pred.labels.dtype == torch.bool
    report = evaluate(test.labels, pred.image_scores, masks=test.masks(), maps=pred.anomaly_maps)
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.85


def test_memory_bank_is_the_coreset(fitted):
    assert fitted.memory_bank.shape[1] == 40 + 112  # Lite0 stride-8 + stride-16 channels
    n_patches = 16 * 16 * (24 - 2)  # 128 px -> 16x16 grid; 10% of 24 training images held out
    assert fitted.memory_bank.shape[0] == -(-n_patches // 10)


def test_threshold_comes_from_the_held_out_normal_scores(fitted, texture_set):
    _, held_out = open_dataset(texture_set, "train", image_size=128).normal().holdout(0.1, seed=0)
    expected = threshold_from_normal_scores(fitted.predict(held_out).image_scores)
    assert fitted.threshold == pytest.approx(float(expected), rel=1e-6)


def test_save_load_gives_identical_predictions(fitted, texture_set, tmp_path):
    test = open_dataset(texture_set, "test", image_size=128)
    path = fitted.save(tmp_path / "pc.pyanom")
    loaded = pyanom.load(path)
    assert loaded.threshold == fitted.threshold
    a, b = fitted.predict(test), loaded.predict(test)
    torch.testing.assert_close(a.image_scores, b.image_scores)
    torch.testing.assert_close(a.anomaly_maps, b.anomaly_maps)


def test_reweighting_can_be_switched_off(fitted, texture_set):
    images = torch.stack([open_dataset(texture_set, "test", image_size=128)[i]["image"] for i in range(4)])
    plain = pyanom.create("patchcore", image_size=128, reweight=False)
    plain.memory_bank, plain.threshold = fitted.memory_bank, fitted.threshold
    weighted, unweighted = fitted.predict(images).image_scores, plain.predict(images).image_scores
    assert torch.all(weighted <= unweighted + 1e-6) and not torch.allclose(weighted, unweighted)


def test_bfloat16_backbone(fitted, texture_set, tmp_path):
    """precision="bfloat16" is a hyper-parameter: saved with the model, its backbone runs so,
    and it finds the same defects on the synthetic parts."""
    det = pyanom.create("patchcore", image_size=128, coreset_ratio=0.1, precision="bfloat16")
    det.fit(open_dataset(texture_set, "train", image_size=128).normal(), progress=False)
    assert det.backbone.precision == "bfloat16" and det.memory_bank.dtype == torch.float32
    test = open_dataset(texture_set, "test", image_size=128)
    pred = det.predict(test)
    assert evaluate(test.labels, pred.image_scores)["image_auroc"] >= 0.9
    loaded = pyanom.load(det.save(tmp_path / "bf16.pyanom"))
    assert loaded.config.precision == "bfloat16" and loaded.backbone.precision == "bfloat16"
    torch.testing.assert_close(loaded.predict(test).image_scores, pred.image_scores)
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, got 'half'"):
        pyanom.create("patchcore", precision="half")


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="fit"):
        pyanom.create("patchcore").predict(torch.rand(1, 3, 64, 64))
