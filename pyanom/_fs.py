"""Atomic file writes: a reader (or the next run) never sees a partial file, and a failed write
leaves the previous file as it was. The bottom layer: imports nothing of pyanom."""

from __future__ import annotations

import errno
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["OutputError", "WriteFailed", "atomic_path", "file_mode", "fsync_dir", "writable_folder"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to; renamed over ``path`` when the block
    succeeds, removed when it fails. ``durable``: flushed to disk before the rename and the
    folder entry after it, so a power cut leaves the old file or the new one (model files).
    An OSError of the write (a full disk, a read-only folder, an I/O error) comes out as
    `WriteFailed`, naming ``path`` and saying that the previous file is unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    existed = path.exists()
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise WriteFailed.of(path, err, existed) from err
    finally:
        _remove(tmp)
    if durable:
        fsync_dir(path.parent)


def _remove(tmp: Path) -> None:
    """Remove a temporary file if it is there; a folder that refuses (read-only) keeps it, and the
    error that brought us here is the one to report."""
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    except OSError:
        pass


def file_mode(path: Path) -> int:
    """The permissions a plain new file at ``path`` gets: those of the file it replaces, else
    0666 less the umask (some writers create 0600 files)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows."""
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


def writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) and prove it writable by creating a file in it;
    a ValueError naming ``what`` (the option) otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder}: exists and is not a folder; choose another {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".pyanom-write-test-{secrets.token_hex(4)}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{what} {folder}: cannot write there ({err.strerror or err}); "
                          f"choose another {what}") from None


class OutputError(ValueError):
    """An output that cannot be written as asked; the message names the path and what to do."""


class WriteFailed(OutputError, OSError):
    """A write the file system refused part-way (a full disk, a folder made read-only, an I/O
    error); ``errno`` is the system's. An OSError too, so callers that catch OSError still do."""

    @classmethod
    def of(cls, path: Path, err: OSError, existed: bool) -> "WriteFailed":
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EFBIG: "the file is larger than allowed"}.get(err.errno, err.strerror or str(err))
        kept = f"the previous {path.name} is unchanged" if existed else "no file was left"
        failed = cls(f"{path}: cannot write it: {reason}; {kept}")
        failed.errno, failed.filename = err.errno, str(path)
        return failed

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return self.args[0]
