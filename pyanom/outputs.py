"""Where a command may write: one policy for every file pyanom writes (a model, a checkpoint, the
metrics JSON, an output folder), checked before any work starts, so a refused, failed or repeated
run loses nothing.

- An output is never an input: not a file the run reads (the model, an image), and not inside a
  data set the run reads, where the next run would read it as data.
- An existing file is replaced only when pyanom wrote it (a model file only with ``force`` too);
  anything else is refused with a one-line message naming the path and what to do.
- An output folder keeps a manifest (``.pyanom-outputs.json``) of the files pyanom wrote there; the
  next run into it removes those files, and only those, and refuses to write over any other file.

Files are written atomically (pyanom._fs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

from pyanom._fs import OutputError, atomic_path, writable_folder

MODEL_SUFFIX = ".pyanom"
MANIFEST = ".pyanom-outputs.json"

__all__ = ["MODEL_SUFFIX", "MANIFEST", "NOTHING_READ", "OutputError", "Reading", "check_file_target", "check_model_target",
           "common_root", "output_name", "OutputFolder", "writable_folder"]


def _absolute(path: str | os.PathLike) -> Path:
    """The path with symlinks resolved, so two names of one file compare equal."""
    return Path(path).resolve()


class Reading:
    """What a run reads, so that no output lands on it.

    files: {path: what it is} (the model, an image), never written over. data: data set folders;
    nothing is written inside them. folders: folders of images to score; an output folder may lie
    inside one (its files are left out of the scoring) but may not be one.
    """

    def __init__(self, *, files: Mapping[str | os.PathLike, str] | None = None,
                 data: Iterable[str | os.PathLike] = (), folders: Iterable[str | os.PathLike] = ()):
        self.files = {_absolute(p): role for p, role in (files or {}).items()}
        self.data = [(Path(p), _absolute(p)) for p in data]
        self.folders = {_absolute(p) for p in folders}

    def check(self, path: str | os.PathLike, what: str) -> None:
        """An OutputError when writing ``path`` (as option ``what``) would change something this run reads."""
        target = _absolute(path)
        if target in self.files:
            raise OutputError(f"{what} {path}: is {self.files[target]}; choose another {what}")
        for root, resolved in self.data:
            if target == resolved or resolved in target.parents:
                raise OutputError(f"{what} {path}: is inside the data being read ({root}), where it would be read "
                                  f"as data next time; choose a {what} outside {root}")
        if target in self.folders:
            raise OutputError(f"{what} {path}: is a folder of images being scored; choose another {what}")


NOTHING_READ = Reading()


def _check_creatable(folder: Path, what: str) -> None:
    """That ``folder`` is, or can be made, a writable folder, without creating anything yet."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder}: exists and is not a folder; choose another {what}")
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{what} {folder}: {existing} is a file, not a folder; choose another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {folder}: cannot write in {existing} (permission denied); choose another {what}")


def check_model_target(path: str | os.PathLike, *, force: bool = False, reading: Reading = NOTHING_READ,
                       what: str = "--out") -> Path:
    """Check a model file target before fitting: it ends in .pyanom, is no input of the run, its
    folder exists or is created and is writable, and it is not an existing file unless that file
    is a pyanom model and ``force`` is set. Returns the path."""
    from pyanom.archive import is_archive

    path = Path(path)
    if path.suffix != MODEL_SUFFIX:
        raise OutputError(f"{what} {path}: a model file must end in {MODEL_SUFFIX} "
                          f"(e.g. {path.with_suffix(MODEL_SUFFIX).name}); nothing was written")
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name ending in {MODEL_SUFFIX}")
    reading.check(path, what)
    if path.exists():
        if not is_archive(path):
            raise OutputError(f"{what} {path}: exists and is not a pyanom model; refusing to overwrite it")
        if not force:
            raise OutputError(f"{what} {path}: a model already exists there; pass --force to replace it")
    writable_folder(path.parent, what)
    return path


def check_file_target(path: str | os.PathLike, what: str, *, written_by_pyanom: Callable[[Path], bool],
                      kind: str, example: str, reading: Reading = NOTHING_READ) -> Path:
    """Check a single output file (``kind``, e.g. "metrics JSON") before any work: not a folder
    (``example`` names a file to give instead), no input of the run, not an existing file unless
    ``written_by_pyanom(path)`` says pyanom wrote it, and its folder exists or is created and is
    writable. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give a file name, e.g. {what} {path / example}")
    reading.check(path, what)
    if path.exists() and not written_by_pyanom(path):
        from pyanom.archive import is_archive

        if is_archive(path):
            raise OutputError(f"{what} {path}: is a pyanom model; refusing to overwrite it with the {kind}")
        raise OutputError(f"{what} {path}: exists and is not a {kind} pyanom wrote; refusing to overwrite it "
                          f"(move it, or choose another {what})")
    writable_folder(path.parent, what)
    return path


def output_name(image: str | os.PathLike, root: str | os.PathLike, suffix: str = ".png") -> Path:
    """The relative output path of an input image: its path under ``root`` with ``suffix``
    appended to the full file name, so ``a/000.png`` and ``a/000.jpg`` stay apart
    (``a/000.png.png``, ``a/000.jpg.png``) and the input is found again by dropping the suffix.
    Symlinks are not followed: an image reached through a linked folder keeps its name under root."""
    rel = Path(os.path.relpath(os.path.abspath(image), os.path.abspath(root)))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{image} is not under {root}")
    return rel.with_name(rel.name + suffix)


def common_root(paths: Iterable[str | os.PathLike]) -> Path:
    """The deepest folder holding every path: output names are made relative to it."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


class OutputFolder:
    """A folder that holds the outputs of one run.

    ``check(planned)`` refuses, before any work, a folder that is an input of the run (``reading``)
    or holds a file at a planned name that pyanom did not write (neither in its manifest nor in
    ``earlier``: outputs of a pyanom that wrote no manifest). ``start()`` then creates the folder,
    removes the files the last run listed in its manifest (never other files; ``keep=True`` keeps
    them, for a run that resumes) and writes the new manifest before anything else is written, so
    even an interrupted run leaves a folder the next run can clean.
    """

    def __init__(self, path: str | os.PathLike, what: str = "--out", *, reading: Reading = NOTHING_READ):
        self.path = Path(path)
        self.what = what
        self.reading = reading
        self.planned: list[str] | None = None
        self.earlier: set[str] = set()

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

    def check(self, planned: Iterable[str | os.PathLike], *, earlier: Iterable[str] = ()) -> "OutputFolder":
        """Refuse the folder now if the run could not write ``planned`` (paths relative to it) there."""
        _check_creatable(self.path, self.what)
        self.reading.check(self.path, self.what)
        self.planned = sorted({Path(p).as_posix() for p in planned})
        self.earlier = set(self._manifest()) | set(earlier)
        if not self.path.is_dir():
            return self
        foreign = [rel for rel in self.planned if self._foreign(rel)]
        if foreign:
            others = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputError(f"{self.what} {self.path}: already holds {foreign[0]}{others}, which pyanom did not "
                              f"write; move them, or choose an empty or new {self.what}")
        return self

    def _foreign(self, rel: str) -> bool:
        """Whether writing ``rel`` would replace something pyanom did not write: the file, or a file
        standing where one of its folders would be."""
        parts = Path(rel).parts
        for i in range(1, len(parts) + 1):
            sub = Path(*parts[:i])
            target = self.path / sub
            if i < len(parts):
                if target.exists() and not target.is_dir():
                    return sub.as_posix() not in self.earlier
            elif target.exists() or target.is_symlink():
                return sub.as_posix() not in self.earlier
        return False

    def start(self, planned: Iterable[str | os.PathLike] | None = None, *, keep: bool = False) -> "OutputFolder":
        """Check (unless done), clean up the last run's outputs, write the manifest."""
        if planned is not None or self.planned is None:
            self.check(planned or ())
        writable_folder(self.path, self.what)
        listed = self.planned
        if keep:
            listed = sorted(set(listed) | set(self._manifest()))
        else:
            for rel in self.earlier:
                target = self._inside(rel)
                if target is not None and target.is_file():
                    target.unlink()
                    self._prune(target.parent)
        with atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"files": listed}, indent=1))
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
