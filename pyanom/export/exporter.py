"""Writing a fitted detector as an ONNX or OpenVINO model folder (needs PyTorch and onnx;
OpenVINO export also needs openvino). See pyanom.export."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from pyanom import __version__
from pyanom._fs import atomic_path
from pyanom.detector import Detector
from pyanom.export.graph import DEFAULT_KNN_CHUNK, LabelledGraph
from pyanom.export.runtime import FORMAT_VERSION, FORMATS, MANIFEST, MODEL_FILES, is_exported
from pyanom.outputs import NOTHING_READ, OutputFolder, Reading

OPSET = 18  # Resize, Pad (reflect) and the reductions as onnxruntime and OpenVINO both read them


def _missing(package: str, extra: str) -> ImportError:
    return ImportError(f"exporting needs the package {package}: pip install 'pyanom[{extra}]'")


def _earlier_export(folder: Path) -> list[str]:
    """The files of an export already in ``folder`` (one written before outputs had a manifest)."""
    try:
        return [MANIFEST, *json.loads((folder / MANIFEST).read_text())["files"]] if is_exported(folder) else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def export(detector, out, *, format: str = "onnx", knn_chunk: int | None = None) -> Path:
    """Write `detector` (a fitted Detector or the path of a .pyanom file) to the folder `out`:
    the model file (model.onnx, or model.xml + model.bin) and pyanom-export.json, which the
    runtime reader (pyanom.export.runtime) needs besides it. Returns the folder.

    The graph takes float32 images [B, 3, S, S] in [0, 1] (any B; S = the detector's
    image_size, resized as pyanom resizes: PIL bilinear) and returns image_scores [B],
    anomaly_maps [B, S, S] (for detectors that have them) and labels [B] (bool, with the
    threshold inside). knn_chunk bounds memory-bank searches: at most knn_chunk bank rows
    are compared with the patches at once (default DEFAULT_KNN_CHUNK). `out` is checked before
    any work (pyanom.outputs): an earlier export there is replaced, any other file is kept, and
    one at the name of a file the export writes is refused.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if knn_chunk is not None and (isinstance(knn_chunk, bool) or not isinstance(knn_chunk, int) or knn_chunk < 1):
        raise ValueError(f"knn_chunk must be a positive int, got {knn_chunk!r}")
    reading = NOTHING_READ
    if isinstance(detector, (str, Path)):
        from pyanom.registry import load

        if is_exported(detector):
            raise ValueError(f"{detector} is an exported model already (a folder written by `pyanom export`): "
                             "export the .pyanom model file it was exported from")
        reading = Reading(files={detector: "the model being exported"})
        detector = load(detector)
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be a pyanom Detector or a .pyanom file, got {type(detector).__name__}")
    if not detector.fitted:
        raise RuntimeError(f"{detector.name}: fit the detector before exporting it")
    if type(detector).export_module is Detector.export_module:
        cls = type(detector)
        raise ValueError(f"detector {detector.name!r} ({cls.__module__}.{cls.__qualname__}) cannot be exported: "
                         "it has no export hook (Detector.export_module)")
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise _missing("onnx", format) from None
    if format == "openvino":
        try:
            import openvino
        except ImportError:
            raise _missing("openvino", "openvino") from None

    folder = OutputFolder(out, "--out", reading=reading).check([MANIFEST, *MODEL_FILES[format]],
                                                              earlier=_earlier_export(Path(out)))

    chunk = knn_chunk or DEFAULT_KNN_CHUNK
    graph = LabelledGraph(detector.export_module(knn_chunk=chunk), detector.threshold).eval()
    if detector.image_size is None:
        raise ValueError(f"{detector.name}: a model that keeps each image's own size (image_size=null, tiling) "
                         "cannot be exported; fit it with an image_size")
    h, w = detector.image_size
    example = torch.rand(2, 3, h, w, device=detector.device)
    with torch.no_grad():
        has_maps = len(graph(example)) == 3
    decided_by = detector.predict(example[:1]).decided_by
    outputs = ["image_scores", "anomaly_maps", "labels"] if has_maps else ["image_scores", "labels"]

    out = folder.start().path
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        onnx_path = Path(tmp) / MODEL_FILES["onnx"][0]
        # The TorchScript exporter: it runs on every torch pyanom supports (>= 2.4) and traces
        # these graphs in about a tenth of the time of the torch.export-based one (1.7 s vs
        # 18 s for a small PatchCore). Its trace warnings concern shapes fixed at export (the
        # input size), which is intended.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(graph, (example,), str(onnx_path), dynamo=False, opset_version=OPSET,
                              do_constant_folding=False,
                              input_names=["images"], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
        if format == "openvino":
            model = openvino.convert_model(str(onnx_path))
            # float32 weights as trained: the default fp16 compression would change scores.
            openvino.save_model(model, str(Path(tmp) / MODEL_FILES["openvino"][0]), compress_to_fp16=False)
        for name in MODEL_FILES[format]:
            shutil.move(str(Path(tmp) / name), out / name)
    manifest = {
        "format": "pyanom-export", "format_version": FORMAT_VERSION, "pyanom_version": __version__,
        "model_format": format, "files": list(MODEL_FILES[format]), "opset": OPSET,
        "detector": detector.name, "supervision": detector.supervision, "config": dataclasses.asdict(detector.config),
        "fitted_on": detector.fitted_on, "threshold": detector.threshold, "image_size": [h, w], "resize": "PIL bilinear",
        "input": "images: float32 [B, 3, H, W] RGB in [0, 1]", "outputs": outputs, "knn_chunk": chunk,
        "decided_by": decided_by,
    }
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False))
    return out
