"""What this installation was built with, for bug reports and for choosing backends.

The CPU kernels are compiled once per instruction-set level into separate modules (`_C`:
generic x86-64-v2, which also holds the CUDA kernels and the CPU check; `_C_avx2`: x86-64-v3;
`_C_avx512`: x86-64-v4). At import the best level the CPU reports is loaded, so one wheel runs
on every x86-64 CPU; `PYANOM_CPU_ISA=generic|avx2|avx512` forces a level.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

ISA_MODULES = {"generic": "_C", "avx2": "_C_avx2", "avx512": "_C_avx512"}


def _choose_level(built: list[str], supported: list[str], requested: str) -> str:
    """The level to load: the request (checked), or the highest one both built and supported."""
    if requested in ("", "auto"):
        if built[0] not in ISA_MODULES:  # a single-level -march build (PYANOM_CPU_ARCH)
            return built[0]
        return [level for level in built if level in supported][-1]
    if requested not in ISA_MODULES:
        raise ValueError(f"PYANOM_CPU_ISA must be auto, generic, avx2 or avx512, got {requested!r}")
    if requested not in supported:
        raise RuntimeError(f"PYANOM_CPU_ISA={requested}: this CPU lacks it (it runs: "
                           f"{', '.join(supported)}); unset PYANOM_CPU_ISA or pick one of those")
    if requested not in built:
        raise RuntimeError(f"PYANOM_CPU_ISA={requested}: this build has no such module (it has: "
                           f"{', '.join(built)}); unset PYANOM_CPU_ISA")
    return requested


def kernels_for(level: str):
    """The kernels of one built level: its CPU kernels with the CUDA kernels and build facts of _C
    (benchmarks and tests load several side by side). Only for levels the CPU supports: a module
    of a higher level may execute instructions this CPU lacks as soon as it loads."""
    from pyanom import _C

    if ISA_MODULES.get(level, "_C") == "_C":
        return _C
    return merged_kernels(_C, importlib.import_module(f"pyanom.{ISA_MODULES[level]}"), level)


def merged_kernels(base, cpu, level: str) -> types.SimpleNamespace:
    """The CPU kernels of module `cpu` (level `level`) with everything else of `base` (_C)."""
    merged = {name: getattr(base, name) for name in dir(base) if not name.startswith("__")}
    merged.update({name: getattr(cpu, name) for name in dir(cpu)
                   if not name.startswith("__") and name != "build_info"})
    merged["build_info"] = lambda: {**base.build_info(), "cpu_isa": level}
    return types.SimpleNamespace(**merged)


def _load() -> tuple[Any, str | None, list[str]]:
    """(kernels at the chosen level, import error, levels the CPU supports)."""
    try:
        from pyanom import _C
    except ImportError as exc:  # a source tree without a build, or a broken wheel
        return None, str(exc), []
    supported = _C.cpu_supported_levels()
    requested = os.environ.get("PYANOM_CPU_ISA", "").strip().lower()
    level = _choose_level(_C.cpu_levels_built.split(","), supported, requested)
    return kernels_for(level), None, supported


_KERNELS, _IMPORT_ERROR, _SUPPORTED = _load()


def native_module():
    """The compiled kernels at the chosen CPU level, or None when they could not be imported."""
    return _KERNELS


def build_info() -> dict[str, Any]:
    """Version, OpenMP threads, the CPU level in use (and those built and supported), CUDA
    architectures, and which native backends it was compiled with ("backends_compiled") apart
    from those usable now ("backends": CUDA only where a GPU is present)."""
    from pyanom import __version__

    info: dict[str, Any] = {"version": __version__, "native": _KERNELS is not None, "backends": [],
                            "backends_compiled": []}
    if _KERNELS is None:
        info["native_error"] = _IMPORT_ERROR
        return info
    if "torch" in sys.modules:  # the count the kernels would use now: torch's (pyanom.ops sets it)
        _KERNELS.set_num_threads(sys.modules["torch"].get_num_threads())
    info.update(_KERNELS.build_info())
    info["cpu_isa_built"] = _KERNELS.cpu_levels_built.split(",")
    info["cpu_isa_supported"] = _SUPPORTED
    info["cuda_compiled"] = bool(info.pop("cuda"))
    info["cuda_devices"] = _KERNELS.cuda_device_count() if info["cuda_compiled"] else 0
    info["cuda_usable"] = info["cuda_devices"] > 0
    info["backends_compiled"] = ["cpu"] + (["cuda"] if info["cuda_compiled"] else [])
    info["backends"] = ["cpu"] + (["cuda"] if info["cuda_usable"] else [])
    return info
