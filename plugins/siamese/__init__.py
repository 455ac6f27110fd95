"""Few-shot Siamese network with attention, ABL and PBCL (Takimoto et al. 2022)."""

from pyanom_plugins.siamese.detector import Siamese

__all__ = ["Siamese"]
