"""pyanom: visual inspection that learns good parts, scores new images and localises defects.

    det = pyanom.create("patchcore", coreset_ratio=0.1)
    det.fit(pyanom.data.open_dataset("bottle", "train").normal())
    pred = det.predict(images)          # Prediction(image_scores, anomaly_maps, labels)
    det.save("bottle.pyanom");  det = pyanom.load("bottle.pyanom")
"""

__version__ = "0.1.0"

from pyanom._build import build_info
from pyanom.detector import Detector, Prediction
from pyanom.registry import create, list_detectors, load

__all__ = ["__version__", "build_info", "Detector", "Prediction", "create", "load", "list_detectors"]
