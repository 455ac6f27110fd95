"""The library takes what users pass: paths, PIL images, numpy arrays, lists, tensors and data sets
score as `pyanom predict` scores the files; `pyanom.load` opens a model file or an exported folder,
the latter without PyTorch; the README's Library block runs as written."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyanom
from pyanom.cli import main
from pyanom.data import ImageList, open_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fitted(texture_set, tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    det = pyanom.create("patchcore", image_size=96, coreset_ratio=0.05)
    det.fit(open_dataset(texture_set, "train", image_size=96), progress=False)
    det.save(folder / "m.pyanom")
    return pyanom.load(folder / "m.pyanom"), folder / "m.pyanom"


@pytest.fixture(scope="module")
def files(texture_set, tmp_path_factory):
    """Test images, one of them greyscale and one of another aspect ratio, as users' files are."""
    folder = tmp_path_factory.mktemp("files")
    paths = sorted((texture_set / "test").rglob("*.png"))[:5]
    out = []
    for i, p in enumerate(paths):
        img = Image.open(p)
        if i == 1:
            img = img.convert("L")
        if i == 2:
            img = img.resize((160, 96))
        target = folder / f"{i}.png"
        img.save(target)
        out.append(target)
    return out


def _cli_scores(model, files, out) -> dict[str, float]:
    assert main(["predict", str(model), *map(str, files), "--out", str(out)]) == 0
    with open(out / "scores.csv", newline="") as fh:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(fh)}


def test_every_kind_of_input_scores_as_the_command_does(fitted, files, tmp_path):
    det, model = fitted
    cli = _cli_scores(model, files, tmp_path / "p")
    expected = np.array([cli[str(f)] for f in files])
    pictures = [Image.open(f) for f in files]
    arrays = [np.asarray(p) for p in pictures]  # H x W x 3 uint8, and H x W for the grey one
    assert arrays[1].ndim == 2
    kinds = {
        "list of paths": [str(f) for f in files],
        "list of Path": files,
        "list of PIL images": pictures,
        "list of arrays": arrays,
        "mixed list": [files[0], pictures[1], arrays[2], str(files[3]), arrays[4]],
        "data set": ImageList(files, image_size=det.image_size),
    }
    for kind, images in kinds.items():
        got = det.predict(images).image_scores.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=kind)
    for i, f in enumerate(files):  # one at a time: a path, a PIL image, an array
        for single in (str(f), pictures[i], arrays[i]):
            np.testing.assert_allclose(det.predict(single).image_scores.numpy(), expected[i:i + 1], rtol=1e-5)


def test_maps_come_back_at_each_image_own_size(fitted, files):
    det, _ = fitted
    pred = det.predict(files)
    assert [tuple(m.shape) for m in pred.anomaly_maps] == [Image.open(f).size[::-1] for f in files]


def test_a_tensor_is_taken_as_given_and_another_size_warns_once(fitted, files):
    det, _ = fitted
    batch = torch.stack([ImageList(files, image_size=96)[i]["image"] for i in range(len(files))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at_size = det.predict(batch).image_scores
    np.testing.assert_allclose(at_size.numpy(), det.predict(files).image_scores.numpy(), rtol=1e-5)
    big = torch.nn.functional.interpolate(batch, size=(192, 192), mode="bilinear")
    with pytest.warns(UserWarning, match=r"images of 192x192 are scored as given, but the model was fitted at "
                                         r"96x96") as record:
        det.predict(big)
    assert len(record) == 1


@pytest.mark.parametrize("images, error, message", [
    (["/nonexistent/part.png"], FileNotFoundError, "/nonexistent/part.png: no such file"),
    ([np.zeros((4, 4, 3), np.float64)], ValueError, r"images\[0\]: a numpy image is uint8"),
    ([np.zeros((4, 4, 2), np.uint8)], ValueError, r"images\[0\]: a numpy image is H x W x 3"),
    ([3.5], TypeError, r"images\[0\] must be a path, a PIL image or a numpy array, got float"),
    ({"a": 1}, TypeError, "images must be a path, a PIL image, a numpy array, a list of them"),
    (torch.zeros(2, 3, 96, 96, dtype=torch.uint8), ValueError, "a tensor of images must be float"),
])
def test_what_is_not_an_image_is_a_clear_error(fitted, images, error, message):
    det, _ = fitted
    with pytest.raises(error, match=message):
        det.predict(images)


def test_an_unreadable_file_is_an_error_naming_it(fitted, tmp_path):
    det, _ = fitted
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png"):
        det.predict([bad])


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from pyanom.export import export

    return export(fitted[1], tmp_path_factory.mktemp("onnx") / "m-onnx", format="onnx")


def test_load_opens_an_exported_folder_without_torch_and_scores_as_the_model(fitted, exported, files, without_torch):
    det, _ = fitted
    expected = det.predict(files).image_scores.numpy().tolist()
    proc = without_torch(f"""
import json, sys
import pyanom
model = pyanom.load({str(exported)!r})
pred = model.predict({[str(f) for f in files]!r})
one = model.predict({str(files[0])!r})
assert "torch" not in sys.modules
print(json.dumps([pred.image_scores.tolist(), one.image_scores.tolist(), type(model).__name__]))
""")
    assert proc.returncode == 0, proc.stderr
    import json

    scores, one, kind = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kind == "ExportedModel"
    np.testing.assert_allclose(scores, expected, rtol=1e-3)
    np.testing.assert_allclose(one, expected[:1], rtol=1e-3)


def test_a_folder_that_is_no_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a folder but not an exported model"):
        pyanom.load(tmp_path)


def test_the_readme_library_block_runs_as_written(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S).group(1)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", "image_size=64"]) == 0
    exec(compile(block, "README.md (Library)", "exec"), {"demo": tmp_path / "demo"})
    printed = capsys.readouterr().out.strip().splitlines()
    first, same, _ = printed[-2].split()
    assert float(first) == pytest.approx(float(same), rel=1e-5)
