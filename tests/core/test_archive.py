"""pyanom.archive: round trips, atomic writes, equal bytes for equal models, clear errors on bad files."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pyanom
from pyanom import _fs, archive
from pyanom.archive import ArchiveError, load_archive, save_archive

CONFIG = {"detector": "patchcore", "hparams": {"k": 9, "ratio": 0.1, "taps": ["s8", "s16"],
                                               "blur": {"sigma": 4.0, "on": True}, "seed": None},
          "threshold": 1.25, "name": "flasche-Ü"}


def tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    return {"memory_bank": torch.randn(50, 16, generator=g),
            "stats": torch.randn(3, dtype=torch.float64, generator=g),
            "indices": torch.randint(0, 100, (7,), generator=g),
            "flags": torch.tensor([True, False]), "pixels": torch.arange(5, dtype=torch.uint8),
            "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
            "base": base, "transposed": base.t(), "rows": base[:3],  # views of one buffer
            "from_numpy": np.arange(4, dtype=np.int32)}


def test_round_trip(tmp_path):
    path = tmp_path / "model.pyanom"
    assert save_archive(path, CONFIG, tensors()) == path
    config, loaded = load_archive(path)
    assert config == CONFIG
    want = tensors()
    assert set(loaded) == set(want)
    for name, t in want.items():
        t = torch.as_tensor(t)
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert torch.equal(loaded[name], t), name
    assert os.listdir(tmp_path) == ["model.pyanom"]


def test_round_trip_details(tmp_path):
    path = tmp_path / "m.pyanom"
    save_archive(str(path), {"shape": (2, 3)}, {})
    config, loaded = load_archive(path, map_location=torch.device("cpu"))
    assert config == {"shape": [2, 3]} and loaded == {}  # JSON: tuples come back as lists
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_keeps_permissions(tmp_path):
    path = tmp_path / "m.pyanom"
    save_archive(path, {"v": 1}, {})
    path.chmod(0o640)
    save_archive(path, {"v": 2}, {})
    assert load_archive(path)[0] == {"v": 2}
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_location_cuda(tmp_path):
    save_archive(tmp_path / "m.pyanom", {}, {"x": torch.ones(3)})
    _, loaded = load_archive(tmp_path / "m.pyanom", map_location="cuda")
    assert loaded["x"].device.type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_map_location_cuda_unavailable(tmp_path):
    save_archive(tmp_path / "m.pyanom", {}, {"x": torch.ones(3)})
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_archive(tmp_path / "m.pyanom", map_location="cuda")


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "model.pyanom"
    save_archive(path, {"v": 1}, {"x": torch.ones(3)})
    before = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # a partial file, then the disk fills up
        raise OSError(28, "No space left on device")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    if fail_at == "write":
        monkeypatch.setattr(archive, "save_file", broken_save_file)
    else:
        monkeypatch.setattr(_fs.os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_archive(path, {"v": 2}, {"x": torch.zeros(1000)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pyanom"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_fs.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        save_archive(tmp_path / "new.pyanom", {}, {"x": torch.ones(2)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("keep", [0, 5, 8, 60, -1])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "model.pyanom"
    save_archive(path, CONFIG, {"x": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(ArchiveError, match="truncated or corrupt") as err:
        load_archive(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_not_safetensors(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"x": torch.ones(2)}, path)  # a pickle: must be refused, never unpickled
    with pytest.raises(ArchiveError, match="not a readable pyanom archive"):
        load_archive(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, path)
    with pytest.raises(ArchiveError, match="safetensors file but not a pyanom archive"):
        load_archive(path)
    save_file({"w": torch.ones(2)}, path, metadata={"format": "pt"})
    with pytest.raises(ArchiveError, match="not a pyanom archive"):
        load_archive(path)


def _write_header(path, header: dict) -> None:
    save_file({}, path, metadata={"pyanom": archive.canonical_json(header)})


def test_other_format_version(tmp_path):
    path = tmp_path / "future.pyanom"
    _write_header(path, {"format": "pyanom-archive", "format_version": 99, "pyanom_version": "9.0", "config": {}})
    with pytest.raises(ArchiveError) as err:
        load_archive(path)
    message = str(err.value)
    assert str(path) in message
    assert "written by pyanom 9.0 in archive format 99" in message
    assert f"this pyanom ({pyanom.__version__}) reads formats 1, 2, 3" in message


def test_format_1_is_still_read(tmp_path):
    """Models saved before the one-key header (one metadata key per field) load unchanged."""
    path = tmp_path / "old.pyanom"
    save_file({"x": torch.ones(2)}, path, metadata={"format": "pyanom-archive", "format_version": "1",
                                                    "pyanom_version": "0.1.0", "config": '{"a": [1, 2]}'})
    config, tensors_ = load_archive(path)
    assert config == {"a": [1, 2]} and torch.equal(tensors_["x"], torch.ones(2))
    assert archive.is_archive(path) and archive.read_header(path) == {"a": [1, 2]}


def test_format_2_without_a_digest_is_still_read(tmp_path):
    path = tmp_path / "two.pyanom"
    save_file({"x": torch.ones(2)}, path, metadata={"pyanom": archive.canonical_json(
        {"format": "pyanom-archive", "format_version": 2, "pyanom_version": "0.1.0", "config": {"a": 1}})})
    config, tensors_ = load_archive(path)
    assert config == {"a": 1} and torch.equal(tensors_["x"], torch.ones(2))


def test_a_changed_weight_is_refused_by_the_digest(tmp_path):
    """A flipped bit in the tensor data keeps the file well-formed; only the digest catches it."""
    path = tmp_path / "m.pyanom"
    save_archive(path, CONFIG, {"w": torch.zeros(64)})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="is damaged: its bytes do not match the SHA-256") as err:
        load_archive(path)
    assert str(path) in str(err.value)
    assert archive.read_header(path) == CONFIG  # the header alone is not checked: it reads no tensor


def test_the_digest_is_of_the_file_as_written(tmp_path):
    """file_sha256 is the SHA-256 of the file with its own 64 characters as zeros: checkable
    with any SHA-256 tool."""
    import hashlib
    import json

    path = tmp_path / "m.pyanom"
    save_archive(path, CONFIG, tensors())
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    digest = json.loads(json.loads(data[8:8 + n])["__metadata__"]["pyanom"])["file_sha256"]
    assert hashlib.sha256(data.replace(digest.encode(), b"0" * 64)).hexdigest() == digest


def test_equal_models_are_equal_files(tmp_path):
    """Safetensors keeps metadata in a hash map: one canonical key makes the bytes repeatable,
    whatever order the config's keys were built in."""
    a, b = tmp_path / "a.pyanom", tmp_path / "b.pyanom"
    save_archive(a, {"x": 1, "y": {"p": 2, "q": 3}, "z": "ü"}, tensors())
    save_archive(b, {"z": "ü", "y": {"q": 3, "p": 2}, "x": 1}, dict(reversed(list(tensors().items()))))
    assert a.read_bytes() == b.read_bytes()


def test_corrupt_config(tmp_path):
    path = tmp_path / "m.pyanom"
    save_file({}, path, metadata={"format": "pyanom-archive", "format_version": "1", "config": "{not json"})
    with pytest.raises(ArchiveError, match="corrupt config"):
        load_archive(path)
    save_file({}, path, metadata={"pyanom": "{not json"})
    with pytest.raises(ArchiveError, match="corrupt pyanom header"):
        load_archive(path)
    _write_header(path, {"format": "pyanom-archive", "format_version": 2, "config": [1]})
    with pytest.raises(ArchiveError, match="corrupt config"):
        load_archive(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pyanom"):
        load_archive(tmp_path / "nope.pyanom")


@pytest.mark.parametrize("config, tensors_, error, match", [
    ({"x": object()}, {}, ValueError, "not JSON-serialisable"),
    ({"x": float("nan")}, {}, ValueError, "not JSON-serialisable"),
    ([1, 2], {}, TypeError, "config must be a dict"),
    ({}, {"x": [1, 2]}, TypeError, "must be a torch.Tensor"),
    ({}, {1: torch.ones(1)}, TypeError, "names must be strings"),
])
def test_bad_save_arguments(tmp_path, config, tensors_, error, match):
    with pytest.raises(error, match=match):
        save_archive(tmp_path / "m.pyanom", config, tensors_)
    assert os.listdir(tmp_path) == []


def test_archive_knows_no_detector():
    """archive.py reads and writes archives only: no import circle detector -> archive -> registry."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(archive.__file__)).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"pyanom.detector", "pyanom.registry"}
