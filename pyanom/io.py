"""One-file archives for fitted detectors: a safetensors file whose header metadata holds a
JSON config. Nothing is ever unpickled, so loading a file from anywhere runs no code.

Header metadata (all strings, as safetensors requires):
  format          "pyanom-archive": tells a pyanom file from any other safetensors file
  format_version  the archive layout version (an integer); a reader accepts only its own
  pyanom_version  the pyanom release that wrote the file, for error messages
  config          the config as JSON
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pyanom import __version__
from pyanom.outputs import atomic_path

__all__ = ["FORMAT_VERSION", "ArchiveError", "is_archive", "save_archive", "load_archive"]

FORMAT_VERSION = 1
_FORMAT = "pyanom-archive"


class ArchiveError(ValueError):
    """A file that cannot be read as a pyanom archive; the message names the file."""


def _tensors_for_save(tensors: dict) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict of name -> tensor, got {type(tensors).__name__}")
    out, storages = {}, set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor or numpy array, "
                            f"got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory (views of one buffer): store copies.
        storage = t.untyped_storage().data_ptr()
        if t.numel() and storage in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _file_mode(path: Path) -> int:
    """The permissions a plain new file would get (safetensors writes 0600): those of the file
    being replaced, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_archive(path, config: dict, tensors: dict, *, format_version: int = FORMAT_VERSION) -> Path:
    """Write ``config`` (JSON-serialisable; tuples come back as lists) and ``tensors`` to one
    file at ``path``, atomically: a temporary file in the same folder is written, flushed to
    disk and renamed over ``path``, so a crash or error leaves the old file (or none) and no
    partial file. Returns the path.
    """
    path = Path(path)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        config_json = json.dumps(config, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config for {path} is not JSON-serialisable: {err}") from None
    metadata = {"format": _FORMAT, "format_version": str(int(format_version)),
                "pyanom_version": __version__, "config": config_json}
    tensors = _tensors_for_save(tensors)

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
    _fsync_dir(path.parent)
    return path


def is_archive(path) -> bool:
    """Whether ``path`` is a pyanom archive (of any format version): reads the header only."""
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == _FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def load_archive(path, *, map_location="cpu", format_version: int = FORMAT_VERSION,
                 skip: tuple[str, ...] = ()) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read an archive written by :func:`save_archive`; returns (config, tensors) with the
    tensors on ``map_location`` (a device or its name), less those named in ``skip`` (left in
    the file, e.g. a memory bank that actors read in parts). ``format_version`` is the layout the
    caller understands; a file of any other version is refused with an :class:`ArchiveError`
    saying which pyanom release wrote it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such archive: {path}")
    device = torch.device(map_location)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cannot load {path} to {device}: CUDA is not available")
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise ArchiveError(f"{path} is a safetensors file but not a pyanom archive "
                                   "(its header has no pyanom format marker)")
            written_by = metadata.get("pyanom_version", "an unknown version")
            version = metadata.get("format_version", "?")
            if version != str(format_version):
                raise ArchiveError(
                    f"{path} was written by pyanom {written_by} in archive format {version}; "
                    f"this reader supports format {format_version} (pyanom {__version__}). "
                    "Re-save it with a matching pyanom version.")
            try:
                config = json.loads(metadata["config"])
            except (KeyError, json.JSONDecodeError) as err:
                raise ArchiveError(f"{path} has a missing or corrupt config: {err}") from None
            tensors = {name: f.get_tensor(name) for name in f.keys() if name not in skip}
    except SafetensorError as err:
        raise ArchiveError(f"{path} is not a readable pyanom archive (not a safetensors file, "
                           f"or truncated or corrupt): {err}") from None
    return config, tensors
