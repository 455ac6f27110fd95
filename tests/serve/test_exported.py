"""`pyanom serve` with exported models (pyanom export): the same answers as the .pyanom file it
was exported from, under onnxruntime and OpenVINO, and the runtime named in /v1/models."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pyanom.cli import main
from pyanom.export import ExportedModel, export
from pyanom.serve import ServeSettings, create_app
from pyanom.serve.run import load_models

pytest.importorskip("onnxruntime", reason="pyanom[onnx] is installed by .ci/run")
pytest.importorskip("openvino", reason="pyanom[openvino] is installed by .ci/run")


@pytest.fixture(scope="module")
def exports(bottle_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {fmt: export(bottle_model, root / fmt, format=fmt) for fmt in ("onnx", "openvino")}


def _answers(models: dict, files) -> tuple[dict, list]:
    """(/v1/models by name, each model's predict results with heatmaps) from one app."""
    with TestClient(create_app(models, ServeSettings())) as client:
        info = {m["name"]: m for m in client.get("/v1/models").json()}
        results = [client.post(f"/v1/models/{name}/predict?heatmap=png", files=files).json()["results"]
                   for name in models]
    return info, results


def test_exported_models_answer_as_the_pyanom_file(bottle_model, bottle_images, exports, capsys):
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in bottle_images]
    models = load_models({"native": bottle_model, "onnx": exports["onnx"], "ir": exports["openvino"]})
    models.update(load_models({"onnx-by-ov": exports["onnx"]}, runtime="openvino"))
    printed = capsys.readouterr().out
    assert "loaded onnx: patchcore (exported onnx model run by onnxruntime)" in printed
    assert "loaded onnx-by-ov: patchcore (exported onnx model run by openvino)" in printed
    info, (native, *exported) = _answers(models, files)
    assert {name: m["runtime"] for name, m in info.items()} == {
        "native": "pytorch", "onnx": "onnxruntime", "ir": "openvino", "onnx-by-ov": "openvino"}
    for name, m in info.items():
        for key in ("detector", "supervision", "hyper_parameters", "threshold", "input_size", "fitted_on", "heatmap"):
            assert m[key] == info["native"][key], (name, key)
    assert {r["label"] for r in native} == {"good", "defect"}
    for results in exported:
        assert [r["filename"] for r in results] == [r["filename"] for r in native]
        assert [r["label"] for r in results] == [r["label"] for r in native]
        assert {r["threshold"] for r in results} == {native[0]["threshold"]}
        np.testing.assert_allclose([r["image_score"] for r in results], [r["image_score"] for r in native],
                                   rtol=1e-4)
        for got, want in zip(results, native):
            heat, ref = (np.asarray(Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"]))), np.int16)
                         for r in (got, want))
            assert heat.shape == ref.shape == (128, 128, 3)
            assert np.abs(heat - ref).max() <= 2  # maps equal to 1e-3: a colour step at most


def test_serve_command_loads_an_exported_folder(exports, monkeypatch, capsys):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app))  # bind nothing
    assert main(["serve", f"line={exports['onnx']}", "--runtime", "openvino"]) == 0
    assert "loaded line: patchcore (exported onnx model run by openvino)" in capsys.readouterr().out
    assert isinstance(started["app"].state.models["line"].detector, ExportedModel)
    assert main(["serve", str(exports["openvino"]), "--runtime", "onnxruntime"]) == 2
    assert "is an openvino export, which openvino runs, not onnxruntime" in capsys.readouterr().err


def test_an_exported_model_is_served_without_torch(exports, bottle_images, without_torch):
    files = [str(p) for p in bottle_images]
    expected = ExportedModel(exports["onnx"]).predict(files)
    done = without_torch(f"""
import json
from pathlib import Path
from fastapi.testclient import TestClient
from pyanom.serve import ServeSettings, create_app
from pyanom.serve.run import load_models
models = load_models({{"line": Path({str(exports["onnx"])!r})}})
with TestClient(create_app(models, ServeSettings())) as client:
    answer = client.post("/v1/models/line/predict?heatmap=png",
                         files=[("files", (f, open(f, "rb").read(), "image/png")) for f in {files!r}]).json()
assert "torch" not in sys.modules
print(json.dumps(answer["results"]))
""")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose([r["image_score"] for r in results], expected.image_scores, rtol=1e-6)
    assert [r["label"] == "defect" for r in results] == expected.labels.tolist()
    assert all(r["heatmap_png"] for r in results)
