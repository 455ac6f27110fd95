"""pyanom.export: every bundled detector (SA-PatchCore in both attention forms) exported to ONNX
(and PatchCore to OpenVINO IR) gives pyanom's own scores, maps and labels on bottle test images
under onnxruntime and OpenVINO; the runtime reader and `pyanom predict DIR` run where torch cannot
be imported; the PatchCore and SA-PatchCore graphs stay under their memory bounds; a detector
without an export hook, or that the graph would score differently, is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pyanom
from pyanom.cli import main
from pyanom.data import open_dataset, open_images
from pyanom.export import export, load
from pyanom.export.runtime import MANIFEST
from pyanom.outputs import MANIFEST as OUTPUTS

onnx = pytest.importorskip("onnx", reason="pyanom[onnx] is installed by .ci/run")
onnxruntime = pytest.importorskip("onnxruntime", reason="pyanom[onnx] is installed by .ci/run")
openvino = pytest.importorskip("openvino", reason="pyanom[openvino] is installed by .ci/run")

PATCHCORE_SIZE = 128
SIZE = 64
# Tiny fits: the graphs are what is tested, not how well the detectors learned.
SETTINGS = {
    "patchcore": dict(image_size=PATCHCORE_SIZE, coreset_ratio=0.1),
    "sa_patchcore": dict(image_size=PATCHCORE_SIZE, coreset_ratio=0.1),  # attention="channel"
    "sa_patchcore spatial": dict(image_size=PATCHCORE_SIZE, coreset_ratio=0.1, attention="spatial"),
    "autoencoder": dict(image_size=SIZE, width=8, latent_dim=32, epochs=1, batch_size=8),
    "fanogan": dict(image_size=SIZE, gan_size=16, width=8, latent_dim=16, gan_epochs=1, encoder_epochs=1,
                    batch_size=8, n_critic=1),
    "segdec": dict(image_size=SIZE, seg_epochs=1, dec_epochs=1, seg_lr=1e-3, dec_lr=1e-3, batch_size=4),
    "siamese": dict(image_size=SIZE, epochs=1, batch_size=4),
}
KNN_CHUNK = 64  # several chunks for the tiny banks above

@pytest.fixture(scope="module")
def bottle(shared_data):
    return shared_data / "mvtec" / "bottle"


@pytest.fixture(scope="module")
def files(bottle):
    """Six test images: two good bottles and four of the three defect types."""
    test = open_dataset(bottle, "test", image_size=SIZE)
    by_type = {}
    for s in test.samples:
        by_type.setdefault(s.defect_type, []).append(s.image)
    return [*by_type["good"][:2], *by_type["broken_large"][:1], *by_type["broken_small"][:1],
            *by_type["contamination"][:2]]


def fit(key: str, bottle: Path, **overrides):
    """The detector of SETTINGS[key] (key: its name, or its name and a variant) fitted on bottle."""
    det = pyanom.create(key.split()[0], **{**SETTINGS[key], **overrides})
    size = det.image_size
    if det.supervision == "unsupervised":
        train = open_dataset(bottle, "train", image_size=size).subset(range(12))
        return det.fit(train, holdout_fraction=0.25, progress=False)
    test = open_dataset(bottle, "test", image_size=size)  # supervised: a few labelled images
    labels = test.labels.tolist()
    chosen = test.subset([i for i, y in enumerate(labels) if y == 0][:6] + [i for i, y in enumerate(labels) if y][::12])
    return det.fit(chosen, validation=chosen, progress=False)


@pytest.fixture(scope="module", params=list(SETTINGS))
def exported(request, bottle, files, tmp_path_factory):
    """(detector, pyanom's prediction on the files, its ONNX export folder)."""
    det = fit(request.param, bottle)
    # the exported graph's maps are at the model's size (pyanom predict's own come back at each image's)
    expected = det.predict(open_images(*files, image_size=det.image_size), map_size="model")
    folder = export(det, tmp_path_factory.mktemp(request.param.replace(" ", "-")) / "onnx", format="onnx",
                    knn_chunk=KNN_CHUNK)
    return det, expected, folder


def assert_same(got, expected):
    """Scores to 1e-4 relative, maps to 1e-3 (relative to the map's scale), identical labels."""
    np.testing.assert_allclose(got.image_scores, expected.image_scores.numpy(), rtol=1e-4, atol=0)
    assert (expected.anomaly_maps is None) == (got.anomaly_maps is None)
    if got.anomaly_maps is not None:
        want = expected.anomaly_maps.numpy()
        assert got.anomaly_maps.shape == want.shape
        np.testing.assert_allclose(got.anomaly_maps, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
    np.testing.assert_array_equal(got.labels, expected.labels.numpy())


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_export_matches_pyanom(exported, files, runtime):
    det, expected, folder = exported
    model = load(folder, backend=runtime, threads=1)
    assert model.name == det.name and model.threshold == det.threshold
    assert model.predict(files[:1]).decided_by == expected.decided_by
    assert_same(model.predict(files), expected)
    # Dynamic batch: the same images one at a time.
    single = model.predict(model.read(files), batch_size=1)
    np.testing.assert_allclose(single.image_scores, expected.image_scores.numpy(), rtol=1e-4)


@pytest.mark.parametrize("key", ["patchcore", "sa_patchcore", "sa_patchcore spatial"])
def test_openvino_ir_matches_pyanom(key, bottle, files, tmp_path):
    """openvino.convert_model fuses patterns the ONNX runtimes leave alone (attention among them)."""
    det = fit(key, bottle)
    expected = det.predict(open_images(*files, image_size=det.image_size), map_size="model")
    folder = export(det, tmp_path / "ir", format="openvino", knn_chunk=KNN_CHUNK)
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, OUTPUTS, "model.xml", "model.bin"])
    assert_same(load(folder, threads=1).predict(files), expected)
    with pytest.raises(ValueError, match="is an openvino export, which openvino runs, not onnxruntime"):
        load(folder, backend="onnxruntime")


@pytest.fixture(scope="module")
def patchcore_export(bottle, files, tmp_path_factory):
    """PatchCore with its whole 12-image feature set as memory (coreset_ratio 1): a bank big
    enough that an unchunked (patches x bank) matrix would be the graph's largest tensor."""
    det = fit("patchcore", bottle, coreset_ratio=1.0)
    root = tmp_path_factory.mktemp("patchcore-bounds")
    model = det.save(root / "bottle.pyanom")
    folder = export(model, root / "onnx", format="onnx", knn_chunk=256)
    return det, model, folder


def largest_intermediates(path: Path, images: np.ndarray) -> dict[str, int]:
    """Element count of every intermediate tensor of an ONNX graph, run on `images`."""
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"images": images})
    return {n: int(np.asarray(v).size) for n, v in zip(names, values)}


def assert_largest_tensor_bounded(det, folder: Path, knn_chunk: int):
    """Stated bounds, per image: the backbone's widest activation (the 96-channel expansion at
    half resolution, padded by one pixel: 6.4 MB at 256 px), one kNN tile of patches x knn_chunk,
    or (SA-PatchCore's channel attention) its C x L x L logits over the L positions of the
    stride-32 map, whichever is largest; never the (patches x bank) matrix, here larger than all."""
    s, width = det.image_size
    assert s == width  # the bound below is written for a square input
    patches = (s // 8) ** 2
    bound = max(96 * (s // 2 + 1) ** 2, patches * knn_chunk)
    if getattr(det, "context_descriptors", None) is not None:
        bound = max(bound, det.context_descriptors.shape[1] * ((s // 32) ** 2) ** 2)
    assert patches * len(det.memory_bank) > bound
    batch = 2
    sizes = largest_intermediates(folder / "model.onnx", np.random.default_rng(0).random(
        (batch, 3, s, s), dtype=np.float32))
    name, largest = max(sizes.items(), key=lambda kv: kv[1])
    assert largest <= batch * bound, f"{name} holds {largest} elements"


def test_patchcore_graph_size_and_largest_tensor(patchcore_export, files):
    det, _, folder = patchcore_export
    assert_largest_tensor_bounded(det, folder, 256)
    # The file: the memory bank (a constant of the graph), the neighbour table of eq. 7, and
    # the backbone's float32 weights and batch-norm statistics up to its stride-16 tap.
    bank = det.memory_bank
    net = det.backbone.network
    used = [net._conv_stem, net._bn0, *net._blocks[:net._stage_ends[4]]]
    weights = sum(t.numel() for m in used for t in m.state_dict().values() if t.is_floating_point()) * 4
    table = len(bank) * det.config.num_neighbors * 8
    size = (folder / "model.onnx").stat().st_size
    assert bank.numel() * 4 < size <= bank.numel() * 4 + table + weights + 256 * 1024


def test_sa_patchcore_graph_largest_tensor(bottle, tmp_path):
    """PatchCore's memory whole (coreset ratio 1): no search may hold a (rows x bank) matrix."""
    det = fit("sa_patchcore", bottle, coreset_ratio=1.0)
    assert_largest_tensor_bounded(det, export(det, tmp_path / "onnx", knn_chunk=256), 256)


def test_runtime_and_cli_run_without_torch(patchcore_export, files, tmp_path, without_torch):
    det, _, folder = patchcore_export
    expected = det.predict(open_images(*files, image_size=det.image_size), map_size="model")
    done = without_torch(f"""
import json
from pyanom.export.runtime import load
pred = load({str(folder)!r}, threads=1).predict({[str(f) for f in files]!r})
from pyanom.cli import main
code = main(["predict", {str(folder)!r}, *{[str(f) for f in files]!r}, "--out", {str(tmp_path / "out")!r}])
assert "torch" not in sys.modules
print(json.dumps({{"scores": pred.image_scores.tolist(), "labels": pred.labels.tolist(), "code": code}}))
""")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    np.testing.assert_allclose(result["scores"], expected.image_scores.numpy(), rtol=1e-4)
    assert result["labels"] == expected.labels.tolist()
    with open(tmp_path / "out" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["path"]) for r in rows] == [Path(f) for f in files]
    assert len(list((tmp_path / "out" / "heatmaps").rglob("*.png"))) == len(files)
    # Without a runtime the error says what to install.
    done = without_torch(f"""
class _NoRuntime:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime":
            raise ImportError("blocked")
sys.meta_path.insert(0, _NoRuntime())
from pyanom.cli import main
sys.exit(main(["predict", {str(folder)!r}, {str(files[0])!r}, "--out", {str(tmp_path / "out2")!r}]))
""")
    assert done.returncode == 2 and "pip install 'pyanom[onnx]'" in done.stderr


def test_cli_export_then_predict_gives_pyanoms_scores(patchcore_export, files, tmp_path, capsys):
    _, model, _ = patchcore_export
    assert main(["export", str(model), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    manifest = json.loads((tmp_path / "onnx" / MANIFEST).read_text())
    assert manifest["detector"] == "patchcore" and manifest["knn_chunk"] == 1024
    for source, out in ((model, "native"), (tmp_path / "onnx", "exported")):
        assert main(["predict", str(source), *map(str, files), "--out", str(tmp_path / out)]) == 0
    native, exported_rows = ([row for row in csv.DictReader(open(tmp_path / out / "scores.csv"))]
                             for out in ("native", "exported"))
    assert [r["defect"] for r in native] == [r["defect"] for r in exported_rows]
    np.testing.assert_allclose([float(r["score"]) for r in exported_rows], [float(r["score"]) for r in native],
                               rtol=1e-4)


class _NoHook(pyanom.Detector):
    """A third-party detector that never heard of export."""

    name = "third_party"
    supervision = "unsupervised"

    class Config:
        image_size = 32

    def __init__(self):  # noqa: D107 - bypasses the dataclass machinery this stub does not need
        self.config, self.threshold = self.Config(), 0.5

    def _fit(self, train, progress):
        pass

    def _score(self, images):
        return images.mean((1, 2, 3)), None

    def state_tensors(self):
        return {}

    def load_state_tensors(self, tensors):
        pass


def test_detector_without_export_hook_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'third_party' \(.*_NoHook\) cannot be exported: it has no export hook"):
        export(_NoHook(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _RescoredPatchCore(pyanom.create("patchcore").__class__):
    """A third-party PatchCore that changes the score but not the export hook."""

    name = "rescored"

    def _score(self, images):
        scores, maps = super()._score(images)
        return 2 * scores, maps


@pytest.mark.parametrize("make, message", [
    (lambda: _RescoredPatchCore(image_size=PATCHCORE_SIZE),
     r"rescored \(.*_RescoredPatchCore\) cannot be exported: it changes PatchCore's scoring"),
    (lambda: pyanom.create("sa_patchcore", image_size=PATCHCORE_SIZE, tile_size=64, attention="spatial"),
     r"sa_patchcore: a tiling model \(tile_size=64\) cannot be exported yet"),
    (lambda: pyanom.create("patchcore", image_size=PATCHCORE_SIZE, precision="bfloat16"),
     r"patchcore: a model fitted with precision='bfloat16' cannot be exported; .* fit it with precision='float32'"),
], ids=["changed-score", "tiling", "bfloat16"])
def test_what_the_graph_would_score_differently_is_refused(make, message, tmp_path):
    det = make()
    det.threshold = 1.0  # refused before anything is traced
    with pytest.raises(ValueError, match=message):
        export(det, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_arguments(patchcore_export, tmp_path, capsys):
    det, model, folder = patchcore_export
    with pytest.raises(ValueError, match="format must be one of onnx, openvino"):
        export(det, tmp_path / "x", format="tflite")
    with pytest.raises(ValueError, match="knn_chunk must be a positive int"):
        export(det, tmp_path / "x", knn_chunk=0)
    with pytest.raises(FileNotFoundError, match="pyanom-export.json is missing"):
        load(tmp_path)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 128, 128\]"):
        load(folder).predict(np.zeros((1, 3, 64, 64), np.float32))
    assert main(["export", str(tmp_path / "missing.pyanom"), "--out", str(tmp_path / "y")]) == 2
    assert "no such model file" in capsys.readouterr().err
