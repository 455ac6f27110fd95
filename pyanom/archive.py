"""The model file format: one safetensors file whose header holds the detector's config as JSON.

Nothing is ever unpickled, so loading a file from anywhere runs no code. The header metadata has
one key, ``pyanom``, whose value is canonical JSON (sorted keys, no spaces):

  format          "pyanom-archive": tells a pyanom file from any other safetensors file
  format_version  the archive layout version (an integer)
  pyanom_version  the pyanom release that wrote the file, for error messages
  config          the config
  file_sha256     the SHA-256 of the whole file as written with these 64 characters all "0"

One key, canonically written, so equal models are equal files (safetensors keeps its metadata in a
hash map, whose order varies from run to run). The digest covers every byte, so a file changed
anywhere (a flipped bit in a weight, a cut, an edit) is refused on load instead of scoring with
wrong numbers, and an auditor can check a model file's integrity with pyanom alone. Formats 1 (one
metadata key per field) and 2 (no digest) are still read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pyanom import __version__
from pyanom._fs import atomic_path, file_mode

__all__ = ["FORMAT_VERSION", "ArchiveError", "is_archive", "save_archive", "load_archive", "read_header"]

FORMAT_VERSION = 3
_READS = (1, 2, 3)
_FORMAT = "pyanom-archive"
_KEY = "pyanom"
_DIGEST = "file_sha256"
_UNSET = "0" * 64
_CHUNK = 1 << 22


class ArchiveError(ValueError):
    """A file that cannot be read as a pyanom archive; the message names the file."""


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: one text for one value."""
    return json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":"))


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


def save_archive(path, config: dict, tensors: dict) -> Path:
    """Write ``config`` (JSON-serialisable; tuples come back as lists) and ``tensors`` to one
    file at ``path``, atomically and durably: a crash or error leaves the old file (or none)
    and no partial file. Equal inputs give equal bytes. Returns the path.
    """
    path = Path(path)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    header = {"format": _FORMAT, "format_version": FORMAT_VERSION, "pyanom_version": __version__,
              "config": config, _DIGEST: _UNSET}
    try:
        metadata = {_KEY: canonical_json(header)}
    except (TypeError, ValueError) as err:
        raise ValueError(f"config for {path} is not JSON-serialisable: {err}") from None
    tensors = _tensors_for_save(tensors)
    mode = file_mode(path)
    with atomic_path(path, durable=True) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as err:  # its I/O errors are not OSErrors: make them one (atomic_path names the file)
            code = re.search(r"os error (\d+)", str(err))
            raise OSError(int(code.group(1)) if code else errno.EIO, str(err)) from None
        with open(tmp, "rb+") as f:
            at = _digest_offset(f, _UNSET)
            digest = _file_sha256(f, at)
            f.seek(at)
            f.write(digest.encode())
        tmp.chmod(mode)
    return path


def _digest_offset(f, digest: str) -> int:
    """Where in the file the header's digest value starts. The header's keys are sorted and the
    config sorts first, so the top-level digest is the last "file_sha256" entry of the header."""
    f.seek(0)
    (length,) = struct.unpack("<Q", f.read(8))
    raw = f.read(length)
    marker = f'{_DIGEST}\\":\\"{digest}'.encode()  # escaped: the header is a JSON string in JSON
    at = raw.rfind(marker)
    if at < 0:
        raise ArchiveError(f"{f.name}: the header's {_DIGEST} was not found")
    return 8 + at + len(marker) - len(digest)


def _file_sha256(f, at: int) -> str:
    """SHA-256 of the whole file with the 64 characters at offset `at` read as "0"."""
    h = hashlib.sha256()
    f.seek(0)
    h.update(f.read(at))
    h.update(_UNSET.encode())
    f.seek(at + len(_UNSET))
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _check_digest(path: Path, header: dict) -> None:
    """Refuse a file whose bytes are not those it was written with (formats 1 and 2 carry no digest)."""
    digest = header.get(_DIGEST)
    if digest is None and str(header.get("format_version")) in ("1", "2"):
        return
    if not isinstance(digest, str) or len(digest) != 64:
        raise ArchiveError(f"{path} has a damaged header (no valid {_DIGEST})")
    with open(path, "rb") as f:
        actual = _file_sha256(f, _digest_offset(f, digest))
    if actual != digest:
        raise ArchiveError(f"{path} is damaged: its bytes do not match the SHA-256 it was written with "
                           "(changed or corrupted since it was saved); save or copy the model again")


def _header(path: Path, metadata: dict) -> dict:
    """The archive header of a file's safetensors metadata, either format; ArchiveError if none."""
    if _KEY in metadata:
        try:
            header = json.loads(metadata[_KEY])
        except json.JSONDecodeError as err:
            raise ArchiveError(f"{path} has a corrupt pyanom header: {err}") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise ArchiveError(f"{path} has a corrupt pyanom header (no format marker)")
        return header
    if metadata.get("format") != _FORMAT:
        raise ArchiveError(f"{path} is a safetensors file but not a pyanom archive "
                           "(its header has no pyanom format marker)")
    header = {"format": _FORMAT, "format_version": metadata.get("format_version"),
              "pyanom_version": metadata.get("pyanom_version")}
    try:
        header["config"] = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ArchiveError(f"{path} has a missing or corrupt config: {err}") from None
    return header


def _checked_version(path: Path, header: dict) -> None:
    version = header.get("format_version")
    if str(version) not in {str(v) for v in _READS}:
        raise ArchiveError(
            f"{path} was written by pyanom {header.get('pyanom_version') or 'of an unknown version'} in archive "
            f"format {version}; this pyanom ({__version__}) reads formats {', '.join(map(str, _READS))}. "
            "Re-save it with a matching pyanom version.")
    if not isinstance(header.get("config"), dict):
        raise ArchiveError(f"{path} has a missing or corrupt config")


def is_archive(path) -> bool:
    """Whether ``path`` is a pyanom archive (of any format version): reads the header only."""
    try:
        with safe_open(path, framework="pt") as f:
            _header(Path(path), f.metadata() or {})
        return True
    except (SafetensorError, OSError, ValueError):
        return False


def read_header(path) -> dict:
    """The config of an archive without reading its tensors (names and shapes stay in the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            header = _header(path, f.metadata() or {})
    except SafetensorError as err:
        raise ArchiveError(f"{path} is not a readable pyanom archive (not a safetensors file, "
                           f"or truncated or corrupt): {err}") from None
    _checked_version(path, header)
    return header["config"]


def load_archive(path, *, map_location="cpu", skip: tuple[str, ...] = ()) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read an archive written by :func:`save_archive`: (config, tensors) with the tensors on
    ``map_location`` (a device or its name), less those named in ``skip`` (left in the file,
    e.g. a memory bank that actors read in parts). A file of a format this version does not
    read is refused with an :class:`ArchiveError` saying which pyanom release wrote it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    device = torch.device(map_location)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cannot load {path} to {device}: CUDA is not available")
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            header = _header(path, f.metadata() or {})
            _checked_version(path, header)
            _check_digest(path, header)
            # on the CPU, copies rather than views of the mapped file: a file rewritten in place
            # (`cp new.pyanom old.pyanom`) must not change, or crash, a model already loaded from it
            own = torch.Tensor.clone if device.type == "cpu" else (lambda t: t)
            tensors = {name: own(f.get_tensor(name)) for name in f.keys() if name not in skip}
    except SafetensorError as err:
        raise ArchiveError(f"{path} is not a readable pyanom archive (not a safetensors file, "
                           f"or truncated or corrupt): {err}") from None
    return header["config"], tensors
