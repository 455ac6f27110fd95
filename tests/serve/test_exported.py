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
            assert heat.shape == ref.shape == (900, 900, 3)
            assert np.abs(heat - ref).max() <= 2  # maps equal to 1e-3: a colour step at most


def test_serve_command_loads_an_exported_folder(exports, capsys, no_serving):
    assert main(["serve", f"line={exports['onnx']}", "--runtime", "openvino", "--port", "0"]) == 0
    assert "loaded line: patchcore (exported onnx model run by openvino)" in capsys.readouterr().out
    assert isinstance(no_serving["app"].state.models["line"].detector, ExportedModel)
    assert main(["serve", str(exports["openvino"]), "--runtime", "onnxruntime", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pyanom serve: error: model 'openvino' ({exports['openvino']}) cannot be served: {exports['openvino']} is "
        "an openvino export, which openvino runs, not onnxruntime: leave out --runtime onnxruntime (or export the "
        "model again with --format onnx to run it with onnxruntime)")


def test_an_exported_model_rewritten_on_disk_keeps_its_answers(exports, bottle_images, tmp_path):
    """A running model does not read its files again: `cp` of another export over them changes nothing."""
    import shutil

    for fmt, runtime in (("onnx", "onnxruntime"), ("onnx", "openvino"), ("openvino", "openvino")):
        folder = shutil.copytree(exports[fmt], tmp_path / f"{fmt}-{runtime}")
        model = ExportedModel(folder, backend=runtime)
        before = model.predict([str(p) for p in bottle_images[:2]]).image_scores
        for name in model.manifest["files"]:
            with open(folder / name, "r+b") as fh:  # same file, same length, other bytes
                size = fh.seek(0, 2)
                fh.seek(size // 4)
                fh.write(b"\x7f" * (size // 2))
        np.testing.assert_array_equal(model.predict([str(p) for p in bottle_images[:2]]).image_scores, before)


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


def test_serve_command_runs_an_exported_folder_without_torch_and_sigterm_exits_0(exports, bottle_images,
                                                                                 without_torch):
    """`pyanom serve EXPORTED_DIR` as an operator runs it on a line PC without PyTorch: the process
    scores an image over HTTP, then stops itself with SIGTERM (drained: exit status 0)."""
    image = bottle_images[-1]
    done = without_torch(f"""
import json, os, signal, socket, threading, time, urllib.request
from pyanom.cli import main

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
answers = {{}}

def client():
    url = f"http://127.0.0.1:{{port}}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/readyz", timeout=5)
            break
        except OSError:
            time.sleep(0.2)
    request = urllib.request.Request(url + "/v1/models/line/predict?heatmap=png", data=open({str(image)!r}, "rb").read(),
                                     headers={{"content-type": "image/png"}})
    answers["result"] = json.loads(urllib.request.urlopen(request, timeout=60).read())["results"][0]
    answers["torch"] = "torch" in sys.modules
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=client, daemon=True).start()
status = main(["serve", "line={exports['onnx']}", "--port", str(port)])
print(json.dumps({{"status": status, **answers}}))
sys.exit(status)
""")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["torch"] is False and answer["status"] == 0
    expected = ExportedModel(exports["onnx"]).predict([str(image)]).image_scores[0]
    assert answer["result"]["image_score"] == pytest.approx(float(expected), rel=1e-5)
    assert Image.open(io.BytesIO(base64.b64decode(answer["result"]["heatmap_png"]))).size == (900, 900)
    assert "Shutting down" in done.stderr and "Traceback" not in done.stderr
