"""PatchCore (Roth et al. 2022) and SA-PatchCore (Ishida et al. 2023)."""

from pyanom_plugins.patchcore.detector import PatchCore, SAPatchCore

__all__ = ["PatchCore", "SAPatchCore"]
