"""pyanom: visual inspection that learns good parts, scores new images and localises defects."""

__version__ = "0.1.0"

from pyanom._build import build_info

__all__ = ["__version__", "build_info"]
