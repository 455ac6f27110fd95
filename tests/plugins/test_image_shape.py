"""Every bundled detector fits and predicts at image_size [height, width] with height != width,
keeps that size in its saved model, and returns anomaly maps of its input's shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyanom
from pyanom.data import open_dataset

TINY = {
    "patchcore": dict(image_size=[64, 32], coreset_ratio=0.5),
    "sa_patchcore": dict(image_size=[64, 32], coreset_ratio=0.5),
    "siamese": dict(image_size=[64, 32], epochs=1, batch_size=4),
    "segdec": dict(image_size=[40, 16], seg_epochs=1, dec_epochs=1, batch_size=2, seg_lr=1e-3, dec_lr=1e-3),
    "autoencoder": dict(image_size=[32, 16], width=8, latent_dim=8, epochs=1, batch_size=4),
    "fanogan": dict(image_size=[36, 20], gan_size=16, width=8, latent_dim=8, gan_epochs=1, encoder_epochs=1,
                    batch_size=4, n_critic=1),
}


def tall_parts(root: Path, *, masks: bool, n_good: int = 8) -> Path:
    """Labelled folders of tall images (24 wide, 60 high, like a line camera's strips): n_good good,
    4 with a bright scratch; its mask beside each defective image where masks=True."""
    rng = np.random.default_rng(0)
    for cls, n in (("good", n_good), ("scratch", 4)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(90, 130, (60, 24, 3), dtype=np.uint8)
            mask = np.zeros((60, 24), np.uint8)
            if cls == "scratch":
                mask[20 + 4 * i:30 + 4 * i, 10:13] = 255
                pixels[mask > 0] = 250
                if masks:
                    Image.fromarray(mask).save(root / cls / f"{i}_mask.png")
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("name", sorted(TINY))
def test_fit_and_predict_at_height_by_width(name, tmp_path):
    settings = TINY[name]
    h, w = settings["image_size"]
    # only the mask-trained detector gets masks: the others fit on image labels alone
    root = tall_parts(tmp_path / "parts", masks=name == "segdec")
    data = open_dataset(root, "all", image_size=(h, w))
    det = pyanom.create(name, **settings)
    assert det.image_size == (h, w)
    det.fit(data, validation=data, progress=False)
    pred = det.predict(data)
    assert pred.image_scores.shape == (len(data),) and torch.isfinite(pred.image_scores).all()
    if name == "siamese":
        assert pred.anomaly_maps is None
    else:
        assert pred.anomaly_maps.shape == (len(data), h, w)
        assert torch.isfinite(pred.anomaly_maps).all()
    det.save(tmp_path / "m.pyanom")
    loaded = pyanom.load(tmp_path / "m.pyanom")
    assert loaded.image_size == (h, w)
    again = loaded.predict(data)
    assert torch.allclose(again.image_scores, pred.image_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, size, message", [
    ("segdec", [640, 230], r"image_size \[640, 230\]: width 230 must be a multiple of 8; "
                           r"nearest valid: \[640, 224\] or \[640, 232\]"),
    ("autoencoder", [640, 232], r"height 640 and width 232 must be a power of two >= 16; "
                                r"nearest valid: \[512, 128\] or \[1024, 256\]"),
    ("patchcore", 20, r"image_size 20 must be >= 32; nearest valid: 32"),
    ("siamese", [16, 64], r"height 16 must be >= 32; nearest valid: \[32, 64\]"),
])
def test_sizes_a_network_cannot_take_are_refused_with_the_nearest_valid(name, size, message):
    with pytest.raises(ValueError, match=message):
        pyanom.create(name, image_size=size)


def test_the_command_line_takes_height_and_width(tmp_path, capsys):
    from pyanom.cli import main

    root = tall_parts(tmp_path / "parts", masks=False, n_good=24)
    model = tmp_path / "m.pyanom"
    assert main(["fit", "patchcore", str(root), "--out", str(model), "--set", "image_size=[64,32]",
                 "--set", "coreset_ratio=0.5", "--test-fraction", "0.25"]) == 0
    assert pyanom.load(model).image_size == (64, 32)
    assert main(["fit", "segdec", str(root), "--out", str(tmp_path / "s.pyanom"), "--set", "image_size=[64,30]"]) == 2
    assert "nearest valid: [64, 24] or [64, 32]" in capsys.readouterr().err
