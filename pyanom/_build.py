"""What this installation was built with, for bug reports and for choosing backends."""

from __future__ import annotations

from typing import Any

try:
    from pyanom import _C
except ImportError as exc:  # a source tree without a build, or a broken wheel
    _C = None
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None


def native_module():
    """The compiled module, or None when it could not be imported."""
    return _C


def build_info() -> dict[str, Any]:
    """Version, OpenMP threads and CUDA architectures of this build, and which native backends
    it was compiled with ("backends_compiled") apart from those usable now ("backends": CUDA
    only where a GPU is present)."""
    from pyanom import __version__

    info: dict[str, Any] = {"version": __version__, "native": _C is not None, "backends": [],
                            "backends_compiled": []}
    if _C is None:
        info["native_error"] = _IMPORT_ERROR
        return info
    info.update(_C.build_info())
    info["cuda_compiled"] = bool(info.pop("cuda"))
    info["cuda_devices"] = _C.cuda_device_count() if info["cuda_compiled"] else 0
    info["cuda_usable"] = info["cuda_devices"] > 0
    info["backends_compiled"] = ["cpu"] + (["cuda"] if info["cuda_compiled"] else [])
    info["backends"] = ["cpu"] + (["cuda"] if info["cuda_usable"] else [])
    return info
