"""pyanom: visual inspection that learns good parts, scores new images and localises defects.

    det = pyanom.create("patchcore", coreset_ratio=0.1)
    det.fit(pyanom.data.open_dataset("bottle", "train"))
    pred = det.predict(["part.png"])    # Prediction(image_scores, anomaly_maps, labels)
    det.save("bottle.pyanom");  det = pyanom.load("bottle.pyanom")   # or an exported folder

The packages, from the user down to the kernels:
    cli, serve, distributed   the command, the HTTP service, Ray: all through `runs` and the contract
    runs, outputs             folder runs (fit, evaluate, predict a folder) and where they may write
    registry, detector        finding detectors (entry points), create/load; the Detector contract
    settings                  how a detector declares its settings: type, default, help, bounds
    training, memory          what detector plugins share: the training engine, the memory bank
    archive, export           the model file format; ONNX/OpenVINO export and its torch-free runtime
    data, features            image readers and layouts; pretrained backbones
    metrics, report, visualize   evaluation metrics, the HTML report, heatmap pictures
    ops                       the compiled kernels and their pure-PyTorch twins
Detectors themselves are plugins (package pyanom_plugins, or any package's entry points).
"""

__version__ = "0.1.0"

import importlib

# Imported on first use (PEP 562): `import pyanom`, `pyanom.load` of an exported folder and
# `pyanom.cli` must work on a line PC without PyTorch, which the detector modules need.
_MODULE_OF = {"build_info": "pyanom._build", "Detector": "pyanom.detector", "Prediction": "pyanom.detector",
              "create": "pyanom.registry", "list_detectors": "pyanom.registry", "load": "pyanom.registry"}

__all__ = ["__version__", "build_info", "Detector", "Prediction", "create", "load", "list_detectors"]


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    try:  # pyanom.data, pyanom.ops, ...: the subpackages eager imports used to load
        return importlib.import_module(f"pyanom.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"pyanom.{name}":
            raise
    raise AttributeError(f"module 'pyanom' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
