"""Large images stay within a stated memory budget: a 48-megapixel image (8000 x 6000) is scored
and gets its full-size heatmap under 3 GB peak RSS (issue 33; the 187-megapixel case is in
benchmarks/bench_large_images.py). The picture is decoded once and drawn in strips of rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import pyanom
from pyanom.data import make_inspection_set, open_dataset

RUN = """
import json, resource, sys
from pyanom import runs
result = runs.predict_folder(sys.argv[1], [sys.argv[2]], sys.argv[3], say=None, **json.loads(sys.argv[4]))
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak_mb, "scored": result.scored, "errors": list(map(str, result.errors))}))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    make_inspection_set(root, n_train=8, n_test_good=1, n_test_defect=1, size=64, seed=0)
    det = pyanom.create("patchcore", image_size=64, coreset_ratio=0.1)
    det.fit(open_dataset(root, "train", image_size=64), progress=False)
    return det.save(root / "m.pyanom")


def _large_png(path, width: int, height: int, mode: str = "RGB") -> None:
    """A smooth picture with a faint texture (compresses like a real part), made in strips."""
    tile = np.random.default_rng(0).integers(0, 12, (256, 256), dtype=np.uint8)
    ramp = (np.arange(width) * 200 // width).astype(np.uint8)
    image = Image.fromarray(np.tile(tile, (height // 256 + 1, width // 256 + 1))[:height, :width] + ramp)
    (image if mode == "L" else image.convert("RGB")).save(path, compress_level=1)


def _predict(model, image, out, **options) -> dict:
    proc = subprocess.run([sys.executable, "-P", "-c", RUN, str(model), str(image), str(out), json.dumps(options)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_48_megapixel_image_scores_and_gets_its_heatmap_under_3_gb(model, tmp_path):
    image = tmp_path / "images" / "big.png"
    image.parent.mkdir()
    _large_png(image, 8000, 6000)
    report = _predict(model, image.parent, tmp_path / "out")
    assert report["scored"] == 1 and not report["errors"]
    heatmap = tmp_path / "out" / "heatmaps" / "big.png.png"
    with Image.open(heatmap) as drawn:
        assert drawn.size == (8000, 6000)
    assert report["peak_mb"] < 3 * 1024, report


def test_heatmap_size_caps_the_picture(model, tmp_path):
    image = tmp_path / "images" / "wide.png"
    image.parent.mkdir()
    _large_png(image, 3000, 1000, mode="L")
    _predict(model, image.parent, tmp_path / "out", heatmap_size=600)
    with Image.open(tmp_path / "out" / "heatmaps" / "wide.png.png") as drawn:
        assert drawn.size == (600, 200)
