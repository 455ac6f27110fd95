"""Inspection data: readers for the usual folder layouts, transforms, and a synthetic inspection set.

    train = open_dataset("mvtec/bottle", "train")          # layout detected
    test = open_dataset("mvtec/bottle", "test")
    item = test[0]   # dict(image [3,256,256] in [0,1], mask [1,256,256], label, defect_type, path)
"""

from pyanom.data.batches import iterate_images
from pyanom.data.dataset import ImageList, InspectionSet, check_samples, open_dataset, open_images, stratified_split
from pyanom.data.files import IMAGE_EXTENSIONS, find_images
from pyanom.data.layouts import LAYOUTS, Sample, detect_layout, read_layout
from pyanom.data.synthetic import make_inspection_set
from pyanom.data.transforms import Preprocess

__all__ = [
    "IMAGE_EXTENSIONS", "LAYOUTS", "ImageList", "InspectionSet", "Preprocess", "Sample", "check_samples",
    "detect_layout", "find_images", "iterate_images", "make_inspection_set", "open_dataset", "open_images", "read_layout",
    "stratified_split",
]
