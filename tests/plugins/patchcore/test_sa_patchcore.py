"""SA-PatchCore's attention option: channel (the authors' released form) and spatial (eq. 4)."""

from __future__ import annotations

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


def test_channel_is_the_default_and_appends_the_context(fitted):
    assert fitted.config.attention == "channel"
    assert fitted.memory_bank.shape[1] == 40 + 112 + 192  # Lite0 stride 8, 16, and blocks.5 attended
    scale = fitted.attention_scale
    assert scale.shape == (192,) and bool((scale > 0).all())
    assert float(scale.min()) >= 0.1 * float(scale.median()) * (1 - 1e-6)  # the floor on dead channels


def test_channel_scores_local_defects(fitted, texture_set):
    test = open_dataset(texture_set, "test", image_size=128)
    pred = fitted.predict(test)
    report = evaluate(test.labels, pred.image_scores, masks=test.masks(), maps=pred.anomaly_maps)
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.85


def test_map_ignores_the_context_columns(fitted):
    """The context is shared by an image's patches: the map shows the local distance only."""
    queries = fitted.memory_bank[:5].clone()
    queries[:, 152:] += 100.0
    nearest = torch.arange(5)
    local = fitted._map_scores(queries, nearest, torch.full((5,), 7.0))
    torch.testing.assert_close(local, torch.zeros(5))


def test_save_load_keeps_the_scale(fitted, texture_set, tmp_path):
    test = open_dataset(texture_set, "test", image_size=128)
    loaded = pyanom.load(fitted.save(tmp_path / "sa.pyanom"))
    assert loaded.config.attention == "channel"
    torch.testing.assert_close(loaded.attention_scale, fitted.attention_scale)
    a, b = fitted.predict(test), loaded.predict(test)
    torch.testing.assert_close(a.image_scores, b.image_scores)
    torch.testing.assert_close(a.anomaly_maps, b.anomaly_maps)


def test_spatial_keeps_patchcore_width(texture_set):
    det = pyanom.create("sa_patchcore", image_size=128, coreset_ratio=0.1, attention="spatial")
    det.fit(open_dataset(texture_set, "train", image_size=128).normal(), progress=False)
    assert det.memory_bank.shape[1] == 40 + 112 and det.attention_scale is None
    assert "attention_scale" not in det.state_tensors()


@pytest.mark.parametrize("kwargs, message", [
    ({"attention": "global"}, "attention must be one of channel, spatial"),
    ({"attention_layer": "stride16"}, "attention_layer must differ from layers"),
    ({"attention_temperature": 0}, "attention_temperature must be > 0"),
    ({"attention_weight": -1.0}, "attention_weight must be > 0"),
])
def test_bad_attention_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pyanom.create("sa_patchcore", **kwargs)
