"""Segmentation + decision network trained with the concentrated loss (Wang et al. 2022)."""

from pyanom_plugins.segdec.detector import SegDec

__all__ = ["SegDec"]
