"""Finding and opening detectors: every detector, bundled or third-party, is an entry point in the
group `pyanom.detectors` ("name = package.module:Class"); `load` opens a model file or an exported
folder. Importing this module does not import PyTorch (exported models run without it)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional

GROUP = "pyanom.detectors"


@dataclass(frozen=True)
class DetectorEntry:
    """One registered detector; `error` says why it could not be imported, if it could not."""

    name: str
    target: str
    supervision: Optional[str]
    error: Optional[str]


def _entry_points():
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def list_detectors() -> list[DetectorEntry]:
    """Every registered detector, importable or not (`error` says why not): one broken plugin
    never hides the others. What `pyanom list` prints."""
    listed = []
    for name, ep in sorted(_entry_points().items()):
        try:
            cls = ep.load()
            listed.append(DetectorEntry(name, ep.value, cls.supervision, None))
        except Exception as exc:  # noqa: BLE001 - a plugin may fail in any way; report it
            listed.append(DetectorEntry(name, ep.value, None, f"{type(exc).__name__}: {exc}"))
    return listed


def detector_class(name: str):
    """The Detector subclass registered as `name`."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ValueError(f"unknown detector {name!r}; registered detectors: {known}")
    from pyanom.detector import Detector

    try:
        cls = eps[name].load()
    except Exception as exc:
        raise ImportError(f"detector {name!r} ({eps[name].value}) failed to import: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"detector {name!r} ({eps[name].value}) is not a pyanom.Detector subclass")
    return cls


def create(name: str, **kwargs):
    """A new, unfitted detector of the registered `name`: pyanom.create("patchcore", coreset_ratio=0.1).

    Keywords are the detector's settings (its Config fields; `pyanom info NAME` lists them) plus
    `device`. An unknown name or setting raises ValueError naming the ones that exist.
    """
    return detector_class(name)(**kwargs)


def describe(name: str) -> dict:
    """A detector's name, supervision and declared settings, as `pyanom info NAME --json` prints
    them and the docs' settings reference lists them."""
    from pyanom.settings import describe as settings_of

    cls = detector_class(name)
    return {"name": cls.name, "supervision": cls.supervision, "settings": settings_of(cls.Config)}


def load(path, *, device="cpu", runtime: str | None = None, skip: tuple[str, ...] = ()):
    """Open a model: a ``.pyanom`` file written by `Detector.save` (a Detector on ``device``; its
    plugin must be installed) or a folder written by `pyanom export` (a
    `pyanom.export.ExportedModel` run by onnxruntime or OpenVINO, ``runtime``, without PyTorch).
    Both predict the same kinds of input. Tensors named in ``skip`` are not read from a model file
    (the caller provides them: pyanom.distributed.load_sharded)."""
    from pyanom.export.runtime import ExportedModel, is_exported

    if is_exported(path):
        return ExportedModel(path, backend=runtime)
    if Path(path).is_dir():
        raise FileNotFoundError(f"{path} is a folder but not an exported model (it has no pyanom-export.json): "
                                "give a .pyanom model file, or a folder written by `pyanom export`")
    from pyanom.archive import ArchiveError, load_archive
    from pyanom.settings import SettingError

    config, tensors = load_archive(path, map_location=device, skip=skip)
    try:
        cls = detector_class(config["detector"])
        det = cls(cls.saved_config(config["config"]), device=device)
    except (KeyError, TypeError, SettingError) as exc:
        raise ArchiveError(f"{path}: detector config does not fit this pyanom version ({exc})") from exc
    det.load_state_tensors(tensors)
    det.threshold = config["threshold"]
    det.data_split = config.get("data_split")
    det.fitted_on = config.get("fitted_on")
    det.training_data = config.get("training_data")  # None in models saved before it was recorded
    return det
