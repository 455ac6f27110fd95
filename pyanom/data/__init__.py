"""Inspection data: readers for the usual folder layouts, transforms, and a synthetic inspection set.

    train = open_dataset("mvtec/bottle", "train")          # layout detected
    test = open_dataset("mvtec/bottle", "test")
    item = test[0]   # dict(image [3,256,256] in [0,1], mask [1,256,256], label, defect_type, path)
"""

import importlib

# Imported on first use (PEP 562), so that pyanom.data.files, which the torch-free runtime of
# exported models reads images with, can be imported without PyTorch.
_WHERE = {
    "batches": ("iterate_images",),
    "dataset": ("ImageList", "InspectionSet", "check_samples", "describe_layout", "files_fingerprint", "open_dataset",
                "open_images", "read_splits", "stratified_split"),
    "files": ("IMAGE_EXTENSIONS", "find_images"),
    "layouts": ("LAYOUTS", "Sample", "detect_layout", "read_layout"),
    "synthetic": ("make_inspection_set",),
    "transforms": ("Preprocess",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"pyanom.data.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'pyanom.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
