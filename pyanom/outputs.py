"""Where the command writes, checked before any work starts, so a failed or repeated run loses
nothing: model files that cannot overwrite an input, output folders that describe exactly one run,
written atomically (pyanom._fs).

An output folder keeps a manifest (``.pyanom-outputs.json``) of the files pyanom wrote there;
the next run into that folder first removes those files, and only those: anything else in the
folder is left alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from pyanom._fs import OutputError, atomic_path, writable_folder

MODEL_SUFFIX = ".pyanom"
MANIFEST = ".pyanom-outputs.json"

__all__ = ["MODEL_SUFFIX", "MANIFEST", "OutputError", "check_model_target", "output_name", "OutputFolder",
           "common_root", "writable_folder"]


def check_model_target(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Check a model file target before fitting: it ends in .pyanom, its folder exists or is
    created and is writable, and it is not an existing file unless that file is a pyanom model
    and ``force`` is set. Returns the path."""
    from pyanom.archive import is_archive

    path = Path(path)
    if path.suffix != MODEL_SUFFIX:
        raise OutputError(f"--out {path}: a model file must end in {MODEL_SUFFIX} "
                          f"(e.g. {path.with_suffix(MODEL_SUFFIX).name}); nothing was written")
    if path.is_dir():
        raise OutputError(f"--out {path}: is a folder; give a file name ending in {MODEL_SUFFIX}")
    if path.exists():
        if not is_archive(path):
            raise OutputError(f"--out {path}: exists and is not a pyanom model; refusing to overwrite it")
        if not force:
            raise OutputError(f"--out {path}: a model already exists there; pass --force to replace it")
    writable_folder(path.parent, "--out")
    return path


def output_name(image: str | os.PathLike, root: str | os.PathLike, suffix: str = ".png") -> Path:
    """The relative output path of an input image: its path under ``root`` with ``suffix``
    appended to the full file name, so ``a/000.png`` and ``a/000.jpg`` stay apart
    (``a/000.png.png``, ``a/000.jpg.png``) and the input is found again by dropping the suffix."""
    rel = Path(os.path.relpath(Path(image).resolve(), Path(root).resolve()))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{image} is not under {root}")
    return rel.with_name(rel.name + suffix)


def common_root(paths: Iterable[str | os.PathLike]) -> Path:
    """The deepest folder holding every path: output names are made relative to it."""
    folders = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


class OutputFolder:
    """A folder that holds the outputs of one run.

    ``OutputFolder(path).start(planned)`` creates the folder if needed, removes the files an
    earlier pyanom run listed in its manifest (never other files), and writes the new manifest
    listing ``planned`` before anything else is written, so even an interrupted run leaves a
    folder the next run can clean.
    """

    def __init__(self, path: str | os.PathLike, what: str = "--out"):
        self.path = Path(path)
        self.what = what

    def _manifest(self) -> list[str]:
        try:
            listed = json.loads((self.path / MANIFEST).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [f for f in listed if isinstance(f, str)]

    def _inside(self, rel: str) -> Path | None:
        target = (self.path / rel).resolve()
        root = self.path.resolve()
        return target if target != root and root in target.parents else None

    def start(self, planned: Iterable[str | os.PathLike]) -> "OutputFolder":
        writable_folder(self.path, self.what)
        for rel in self._manifest():
            target = self._inside(rel)
            if target is not None and target.is_file():
                target.unlink()
                self._prune(target.parent)
        planned = sorted({Path(p).as_posix() for p in planned})
        with atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"files": planned}, indent=1))
        return self

    def _prune(self, folder: Path) -> None:
        """Remove folders emptied by the clean-up, up to (not including) the output folder."""
        root = self.path.resolve()
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def file(self, rel: str | os.PathLike) -> Path:
        """The absolute path of an output, its sub-folders created."""
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
