"""Every bundled detector fits and predicts at image_size [height, width] with height != width,
keeps that size in its saved model, and returns anomaly maps at each input image's own shape."""

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
        assert (h, w) != (60, 24)
        assert pred.anomaly_maps.shape == (len(data), 60, 24)  # the images' own size, not the model's
        assert torch.isfinite(pred.anomaly_maps).all()
        at_model = det.predict(data, map_size="model").anomaly_maps
        assert at_model.shape == (len(data), h, w)
        back = torch.nn.functional.interpolate(at_model[:, None], size=(60, 24), mode="bilinear", antialias=True,
                                               align_corners=False)[:, 0]
        torch.testing.assert_close(pred.anomaly_maps, back)  # the model's map, resized bilinearly
        images = torch.stack([data[i]["image"] for i in range(2)])
        assert det.predict(images).anomaly_maps.shape == (2, h, w)  # a tensor is its own input size
    det.save(tmp_path / "m.pyanom")
    loaded = pyanom.load(tmp_path / "m.pyanom")
    assert loaded.image_size == (h, w)
    again = loaded.predict(data)
    assert torch.allclose(again.image_scores, pred.image_scores, rtol=1e-4, atol=1e-5)


def test_images_of_different_sizes_get_maps_of_their_own_sizes(tmp_path):
    from pyanom.data import open_images

    root = tall_parts(tmp_path / "parts", masks=False)
    det = pyanom.create("patchcore", image_size=[64, 32], coreset_ratio=0.5)
    det.fit(open_dataset(root, "all", image_size=(64, 32)).normal(), progress=False)
    Image.fromarray(np.full((30, 50, 3), 110, np.uint8)).save(tmp_path / "wide.png")
    pred = det.predict(open_images(root / "good" / "0.png", tmp_path / "wide.png", image_size=(64, 32)))
    assert [tuple(m.shape) for m in pred.anomaly_maps] == [(60, 24), (30, 50)]  # a list: sizes differ
    assert pred.image_scores.shape == (2,)


@pytest.mark.parametrize("name, size, message", [
    ("segdec", [640, 230], r"image_size \[640, 230\]: width 230 must be a multiple of 8; "
                           r"nearest valid: \[640, 224\] or \[640, 232\]"),
    ("autoencoder", [640, 232], r"height 640 and width 232 must be a power of two >= 16; "
                                r"nearest valid: \[512, 128\] or \[1024, 256\]"),
    ("patchcore", 20, r"image_size 20 must be >= 32; nearest valid: 32"),
    ("siamese", [16, 64], r"height 16 must be >= 32; nearest valid: \[32, 64\]"),
    ("sa_patchcore", [24, 200], r"height 24 must be >= 32; nearest valid: \[32, 200\]"),
    ("fanogan", [0, 64], r"image_size must be a positive int"),
])
def test_sizes_a_network_cannot_take_are_refused_with_the_nearest_valid(name, size, message):
    with pytest.raises(ValueError, match=message):
        pyanom.create(name, image_size=size)


@pytest.mark.parametrize("name, settings, message", [
    ("fanogan", dict(gan_size=48), r"gan_size 48 must be a power of two >= 16; nearest valid: 32 or 64"),
    ("fanogan", dict(gan_size=[64, 32]), r"gan_size must be an int"),
    ("patchcore", dict(image_size=None, tile_size=[24, 64]), r"tile_size \[24, 64\]: height 24 must be >= 32; "
                                                             r"nearest valid: \[32, 64\]"),
])
def test_network_sides_other_than_image_size_are_refused_with_the_nearest_valid(name, settings, message):
    with pytest.raises(ValueError, match=message):
        pyanom.create(name, **settings)


def test_the_command_line_takes_height_and_width(tmp_path, capsys):
    from pyanom.cli import main

    root = tall_parts(tmp_path / "parts", masks=False, n_good=24)
    model = tmp_path / "m.pyanom"
    assert main(["fit", "patchcore", str(root), "--out", str(model), "--set", "image_size=[64,32]",
                 "--set", "coreset_ratio=0.5", "--test-fraction", "0.25"]) == 0
    assert pyanom.load(model).image_size == (64, 32)
    # heatmaps are drawn at each image's own size (24 wide, 60 high), not the model's 64 x 32
    assert main(["predict", str(model), str(root / "scratch"), "--out", str(tmp_path / "p")]) == 0
    assert Image.open(tmp_path / "p" / "heatmaps" / "0.png.png").size == (24, 60)
    assert main(["evaluate", str(model), str(root), "--test-fraction", "0.25",
                 "--heatmaps", str(tmp_path / "e")]) == 0
    assert {Image.open(p).size for p in (tmp_path / "e").rglob("*.png")} == {(24, 60)}
    assert main(["fit", "segdec", str(root), "--out", str(tmp_path / "s.pyanom"), "--set", "image_size=[64,30]"]) == 2
    assert "nearest valid: [64, 24] or [64, 32]" in capsys.readouterr().err
