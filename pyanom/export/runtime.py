"""Running an exported model folder with onnxruntime or OpenVINO: numpy and Pillow only, no
PyTorch (install `pyanom[onnx]` or `pyanom[openvino]` on the line PC).

    model = pyanom.load("bottle-onnx/")               # or pyanom.export.runtime.load
    pred = model.predict(["a.png", "b.png"])          # image_scores, anomaly_maps, labels (numpy)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pyanom.data.files import checked_size, raise_problems
from pyanom.data.inputs import as_sources, is_batch_array, read_source
from pyanom.data.transforms import Preprocess

MANIFEST = "pyanom-export.json"
FORMAT_VERSION = 1
FORMATS = ("onnx", "openvino")
MODEL_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
BACKENDS = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",)}


@dataclass
class RuntimePrediction:
    """Prediction of an exported model, as numpy arrays (see pyanom.Prediction)."""

    image_scores: np.ndarray  # [B] float32
    anomaly_maps: Optional[np.ndarray]  # [B, H, W] float32, or None
    labels: np.ndarray  # [B] bool
    decided_by: str = "threshold"


def is_exported(path) -> bool:
    """Whether `path` is a folder written by pyanom.export."""
    return (Path(path) / MANIFEST).is_file()


def load(folder, *, backend: str | None = None, threads: int | None = None) -> "ExportedModel":
    """An exported model folder, ready to predict (see ExportedModel)."""
    return ExportedModel(folder, backend=backend, threads=threads)


class ExportedModel:
    """An exported model folder run by onnxruntime (ONNX export, the default) or OpenVINO (either
    export). threads: CPU threads of the runtime (default: the runtime's own choice)."""

    def __init__(self, folder, *, backend: str | None = None, threads: int | None = None):
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an exported model: {MANIFEST} is missing "
                                    "(write one with `pyanom export`)")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is corrupt: {err}") from None
        if manifest.get("format") != "pyanom-export" or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: export format {manifest.get('format_version')!r} written by pyanom "
                             f"{manifest.get('pyanom_version', '?')}; this reader reads format {FORMAT_VERSION}. "
                             "Export the model again with this pyanom version.")
        self.folder, self.manifest = folder, manifest
        fmt = manifest["model_format"]
        backend = backend or BACKENDS[fmt][0]
        if backend not in BACKENDS[fmt]:
            other = " (or export the model again with --format onnx to run it with onnxruntime)" if fmt == "openvino" else ""
            raise ValueError(f"{folder} is an {fmt} export, which {' or '.join(BACKENDS[fmt])} runs, not {backend}: "
                             f"leave out --runtime {backend}{other}")
        for name in manifest["files"]:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: copy the whole exported folder")
        self.backend = backend
        self.name: str = manifest["detector"]
        self.supervision: str | None = manifest.get("supervision")  # None in exports older than these two keys
        self.fitted_on: dict | None = manifest.get("fitted_on")
        self.config: dict = manifest["config"]  # the detector's hyper-parameters
        self.decided_by: str = manifest["decided_by"]
        self.threshold: float = manifest["threshold"]
        self.image_size: tuple[int, int] = tuple(manifest["image_size"])
        self.outputs: list[str] = manifest["outputs"]
        self._run = (_onnxruntime if backend == "onnxruntime" else _openvino)(folder / manifest["files"][0], threads)

    def predict(self, images, *, batch_size: int = 32) -> RuntimePrediction:
        """Score images as `pyanom.Detector.predict` takes them: a path, a PIL image, a numpy array
        (H x W x 3 uint8, or H x W grey) or a list of them, each read and resized as pyanom reads
        files; or a prepared float batch [B, 3, H, W] in [0, 1] at the model's size (any array numpy
        reads). Anomaly maps come back at the model's size."""
        if is_batch_array(images):
            return self._predict_batch(self._checked(images), batch_size)
        sources = as_sources(images)
        files = [s for s in sources if isinstance(s, Path)]
        raise_problems([err for err in map(_problem, files) if err is not None], "the images given")
        return self.concatenate([self._predict_batch(self.read(sources[i:i + batch_size]), batch_size)
                                 for i in range(0, len(sources), batch_size)])

    def _checked(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"a batch of prepared images must be [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {images.shape}; pass paths, PIL images or arrays to have them resized")
        return np.ascontiguousarray(images, dtype=np.float32)

    def _predict_batch(self, images: np.ndarray, batch_size: int) -> RuntimePrediction:
        parts = [self._run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        out = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.outputs)}
        return RuntimePrediction(out["image_scores"], out.get("anomaly_maps"), out["labels"].astype(bool),
                                 self.decided_by)

    def concatenate(self, parts: Sequence[RuntimePrediction]) -> RuntimePrediction:
        """One prediction from several, in order."""
        maps = None if parts[0].anomaly_maps is None else np.concatenate([p.anomaly_maps for p in parts])
        return RuntimePrediction(np.concatenate([p.image_scores for p in parts]), maps,
                                 np.concatenate([p.labels for p in parts]), self.decided_by)

    def read(self, images: Sequence) -> np.ndarray:
        """Images (paths, PIL images, arrays) as float32 [B, 3, H, W] in [0, 1] at the model's size,
        resized as pyanom resizes (PIL bilinear)."""
        preprocess = Preprocess(self.image_size)
        return np.stack([preprocess.array(read_source(s)) for s in as_sources(images)])


def _problem(path: Path) -> Exception | None:
    try:
        checked_size(path)
    except (ValueError, OSError) as err:
        return err
    return None


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"running this exported model needs {package}: pip install 'pyanom[{extra}]'")


def _onnxruntime(path: Path, threads: int | None):
    try:
        import onnxruntime
    except ImportError:
        raise _missing("onnxruntime", "onnx") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph optimiser reports what it could not fuse
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def _openvino(path: Path, threads: int | None):
    try:
        import openvino
    except ImportError:
        raise _missing("openvino", "openvino") from None
    config = {"INFERENCE_PRECISION_HINT": "f32"}  # no silent bf16 on CPUs that have it
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = openvino.Core()
    # weights read into memory, not mapped: a model.bin rewritten in place must not change a model already loaded
    core.set_property({"ENABLE_MMAP": False})
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(images):
        result = request.infer({0: images})
        return [np.array(result[out]) for out in compiled.outputs]

    return run
