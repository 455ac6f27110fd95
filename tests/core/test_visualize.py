"""pyanom.visualize: heatmap overlays."""

import numpy as np
import pytest
import torch
from PIL import Image

from pyanom.visualize import COLORMAPS, colorize, overlay, save_overlay


def scene(h=40, w=48):
    rng = np.random.default_rng(0)
    image = rng.random((3, h, w)) * 0.5 + 0.25
    amap = np.zeros((h, w))
    amap[10:20, 30:40] = 5.0  # the hot spot
    return image, amap


def test_shape_dtype_and_hot_is_red():
    image, amap = scene()
    out = overlay(image, amap, alpha=1.0)
    assert out.shape == (40, 48, 3) and out.dtype == np.uint8
    hot, cold = out[15, 35].astype(int), out[2, 2].astype(int)
    assert hot[0] > 100 and hot[0] > 2 * max(hot[1], hot[2])  # red
    assert cold[2] > 100 and cold[2] > 2 * max(cold[0], cold[1])  # blue


def test_alpha_blends():
    image, amap = scene()
    assert np.array_equal(overlay(image, amap, alpha=0.0),
                          np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8))
    half = overlay(image, amap, alpha=0.5).astype(int)
    full = overlay(image, amap, alpha=1.0).astype(int)
    plain = overlay(image, amap, alpha=0.0).astype(int)
    assert np.abs(half - (full + plain) / 2).max() <= 1


def test_fixed_range_compares_across_images():
    image, amap = scene()
    weak = amap / 5  # same spot, 5x lower score
    own_range = overlay(image, weak, alpha=1.0)
    assert np.array_equal(own_range, overlay(image, amap, alpha=1.0))  # stretched: looks as hot
    shared = overlay(image, weak, alpha=1.0, vmin=0, vmax=5)
    assert not np.array_equal(shared[15, 35], own_range[15, 35])
    expected = np.rint(COLORMAPS["jet"][51] * 255)  # 1/5 of the way: blue
    assert np.array_equal(shared[15, 35], expected)


def test_flat_map_and_clipping():
    image, _ = scene()
    flat = overlay(image, np.full((40, 48), 3.0), alpha=1.0)
    assert np.all(flat == flat[0, 0])
    heat = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]]), vmin=0, vmax=1)
    assert np.array_equal(heat[0, 0], heat[0, 1]) and np.array_equal(heat[0, 3], heat[0, 4])


def test_grey_image_torch_inputs_and_inferno():
    image, amap = scene()
    grey = torch.from_numpy(image[:1]).float()
    out = overlay(grey, torch.from_numpy(amap), colormap="inferno", alpha=0.0)
    assert np.array_equal(out[..., 0], out[..., 2])
    hot = overlay(grey, torch.from_numpy(amap), colormap="inferno", alpha=1.0)[15, 35]
    assert hot[0] > 200 and hot[1] > 200  # inferno's top is pale yellow


def test_mask_contour():
    image, amap = scene()
    mask = np.zeros((40, 48), bool)
    mask[10:20, 30:40] = True
    out = overlay(image, amap, mask=torch.from_numpy(mask), contour_color=(0, 255, 0))
    assert np.array_equal(out[10, 35], [0, 255, 0]) and np.array_equal(out[19, 30], [0, 255, 0])
    assert not np.array_equal(out[15, 35], [0, 255, 0])  # inside stays heatmap
    assert np.array_equal(out[5, 5], overlay(image, amap)[5, 5])  # outside untouched


def test_save_overlay_writes_png(tmp_path):
    image, amap = scene()
    path = save_overlay(tmp_path / "sub" / "heat.png", image, amap, vmin=0, vmax=5)
    assert np.array_equal(np.asarray(Image.open(path)), overlay(image, amap, vmin=0, vmax=5))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image=np.zeros((40, 48))), ValueError, r"\[3,H,W\]"),
    (dict(image=np.full((3, 40, 48), 2.0)), ValueError, "undo the normalisation"),
    (dict(anomaly_map=np.zeros((20, 48))), ValueError, "resize the map"),
    (dict(anomaly_map=np.full((40, 48), np.nan)), ValueError, "NaN"),
    (dict(vmin=1.0, vmax=1.0), ValueError, "vmin must be below vmax"),
    (dict(alpha=1.5), ValueError, "alpha"),
    (dict(colormap="viridis"), ValueError, "colormap"),
    (dict(mask=np.zeros((4, 4))), ValueError, "mask is"),
])
def test_bad_inputs(kwargs, error, match):
    image, amap = scene()
    args = {"image": image, "anomaly_map": amap, **kwargs}
    with pytest.raises(error, match=match):
        overlay(args.pop("image"), args.pop("anomaly_map"), **args)
