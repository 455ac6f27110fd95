"""Export fitted detectors to ONNX or OpenVINO, and run exported models without PyTorch.

    from pyanom.export import export, load
    export(detector_or_path, "bottle-onnx/", format="onnx")       # needs torch + pyanom[onnx]
    model = load("bottle-onnx/")                                    # numpy + Pillow + onnxruntime
    pred = model.predict_files(["part.png"])

Importing this package (and pyanom.export.runtime) does not import PyTorch; `export` does.
"""

from pyanom.export.runtime import ExportedModel, RuntimePrediction, is_exported, load

__all__ = ["ExportedModel", "RuntimePrediction", "export", "is_exported", "load"]


def export(detector, out, *, format: str = "onnx", knn_chunk: int | None = None):
    """Write a fitted detector (or a .pyanom file) as an exported model folder (imports torch
    only when called); see pyanom.export.exporter.export."""
    from pyanom.export.exporter import export as _export

    return _export(detector, out, format=format, knn_chunk=knn_chunk)
