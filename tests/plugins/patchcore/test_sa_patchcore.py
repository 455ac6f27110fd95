"""SA-PatchCore's attention option: channel (the authors' released form) and spatial (eq. 4)."""

from __future__ import annotations

import math

import pytest
import torch

import pyanom
from pyanom.data import open_dataset
from pyanom.metrics import evaluate


@pytest.fixture(scope="module")
def fitted(texture_set):
    det = pyanom.create("sa_patchcore", image_size=128, coreset_ratio=0.1)
    det.fit(open_dataset(texture_set, "train", image_size=128).normal(), progress=False)
    return det


def test_channel_is_the_default_with_a_context_memory(fitted):
    assert fitted.config.attention == "channel"
    assert fitted.memory_bank.shape[1] == 40 + 112  # PatchCore's own memory
    n_contexts = 4 * 4 * (24 - 2)  # 128 px -> Lite0 blocks.5 at 4x4; 10% of 24 images held out
    assert fitted.context_bank.shape == (math.ceil(0.1 * n_contexts), 192)  # context_coreset_ratio 0.1
    assert float(fitted.context_floor) > 0
    scale = fitted.attention_scale
    assert scale.shape == (192,) and bool((scale > 0).all())
    assert float(scale.min()) >= 0.1 * float(scale.median()) * (1 - 1e-6)  # the floor on dead channels


def test_channel_scores_local_defects(fitted, texture_set):
    test = open_dataset(texture_set, "test", image_size=128)
    pred = fitted.predict(test)
    report = evaluate(test.labels, pred.image_scores, masks=test.masks(), maps=pred.anomaly_maps)
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.85


def test_score_is_patchcore_plus_weighted_context_distance_beyond_the_floor(fitted, texture_set):
    """Same memory: the map is PatchCore's, the image score PatchCore's plus w * (max context
    distance - floor), clamped at 0."""
    test = open_dataset(texture_set, "test", image_size=128)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    plain = pyanom.create("patchcore", image_size=128)
    plain.memory_bank = fitted.memory_bank
    ours, theirs = fitted._score(images), plain._score(images)
    torch.testing.assert_close(ours[1], theirs[1])
    unfloored = pyanom.create("sa_patchcore", image_size=128, attention_weight=3.0)
    for name in ("memory_bank", "context_bank", "attention_scale"):
        setattr(unfloored, name, getattr(fitted, name))
    unfloored.context_floor = torch.zeros(())
    context = (unfloored._score(images)[0] - theirs[0]) / 3
    assert bool((context > 0).all())
    expected = fitted.config.attention_weight * (context - fitted.context_floor).clamp_min(0)
    assert 0 < int((expected == 0).sum()) < len(images)  # the floor passes some parts' contexts, not all
    torch.testing.assert_close(ours[0] - theirs[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("margin", [0.5, 1.0])
def test_context_floor_is_the_margin_quantile_of_left_out_parts(margin):
    """By brute force: each part's contexts against the memory rows of the other parts."""
    rows = torch.randn(5 * 4, 6, generator=torch.Generator().manual_seed(0))
    owner = torch.arange(20) // 4
    chosen = torch.tensor([0, 3, 5, 9, 10, 14, 17, 19])  # a "coreset": parts 0-4 keep 2, 1, 2, 1, 2 rows
    det = pyanom.create("sa_patchcore", context_margin=margin)
    det.context_bank = rows[chosen]
    worst = [torch.cdist(rows[owner == i], rows[chosen][owner[chosen] != i]).min(1).values.max() for i in range(5)]
    expected = torch.quantile(torch.stack(worst), margin)
    torch.testing.assert_close(det._context_floor(rows, owner, owner[chosen]), expected)


def test_save_load_keeps_the_scale(fitted, texture_set, tmp_path):
    test = open_dataset(texture_set, "test", image_size=128)
    loaded = pyanom.load(fitted.save(tmp_path / "sa.pyanom"))
    assert loaded.config.attention == "channel"
    torch.testing.assert_close(loaded.attention_scale, fitted.attention_scale)
    torch.testing.assert_close(loaded.context_bank, fitted.context_bank)
    a, b = fitted.predict(test), loaded.predict(test)
    torch.testing.assert_close(a.image_scores, b.image_scores)
    torch.testing.assert_close(a.anomaly_maps, b.anomaly_maps)


def test_spatial_keeps_patchcore_width(texture_set):
    det = pyanom.create("sa_patchcore", image_size=128, coreset_ratio=0.1, attention="spatial")
    det.fit(open_dataset(texture_set, "train", image_size=128).normal(), progress=False)
    assert det.memory_bank.shape[1] == 40 + 112 and det.attention_scale is None
    assert set(det.state_tensors()) == {"memory_bank"}


@pytest.mark.parametrize("kwargs, message", [
    ({"attention": "global"}, "attention must be one of channel, spatial"),
    ({"attention_layer": "stride16"}, "attention_layer must differ from layers"),
    ({"attention_temperature": 0}, r"attention_temperature must be a float in \(0, inf\)"),
    ({"attention_weight": -1.0}, r"attention_weight must be a float in \(0, inf\)"),
    ({"context_coreset_ratio": 0}, r"context_coreset_ratio must be a float in \(0, 1\]"),
    ({"context_margin": 1.5}, r"context_margin must be a float in \[0, 1\]"),
])
def test_bad_attention_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pyanom.create("sa_patchcore", **kwargs)
