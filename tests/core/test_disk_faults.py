"""The writers on a disk that fills up or turns read-only part-way: saving a model, writing a
training checkpoint, the scores table and the heatmaps. Each failure is one error naming the file
and saying that the previous file is unchanged (pyanom._fs.WriteFailed, an OSError and a
ValueError); the previous file keeps its bytes and no partial or temporary file is left.

The disks are real: small tmpfs mounts, which needs root (CI runs as root); elsewhere these tests
are skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyanom
from pyanom import runs
from pyanom._fs import OutputError, WriteFailed
from pyanom.archive import load_archive, save_archive
from pyanom.data import open_dataset

PAGE = 4096


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform.startswith("linux")


@pytest.fixture
def small_disk(tmp_path):
    """disk(bytes) -> a folder on a fresh tmpfs of that size; disk.read_only(folder) remounts it
    read-only. Unmounted after the test."""
    if not _can_mount():
        if os.environ.get("CI"):
            pytest.fail("the disk-fault tests mount small tmpfs disks and need root, which CI has")
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    class Disk:
        def __call__(self, size: int) -> Path:
            folder = tmp_path / f"disk{len(mounted)}"
            folder.mkdir()
            size = -(-size // PAGE) * PAGE
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
            mounted.append(folder)
            return folder

        @staticmethod
        def read_only(folder: Path) -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    yield Disk()
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _big(n: int) -> dict[str, torch.Tensor]:
    return {"memory_bank": torch.arange(n, dtype=torch.float32)}


def test_a_model_too_big_for_the_disk_leaves_the_previous_one(small_disk):
    disk = small_disk(64 * 1024)
    path = disk / "model.pyanom"
    save_archive(path, {"v": 1}, _big(1000))
    before = path.read_bytes()
    with pytest.raises(WriteFailed) as err:
        save_archive(path, {"v": 2}, _big(40_000))  # 160 kB
    assert str(err.value) == f"{path}: cannot write it: the disk is full; the previous model.pyanom is unchanged"
    assert err.value.errno == 28 and isinstance(err.value, OSError) and isinstance(err.value, OutputError)
    assert path.read_bytes() == before and _files(disk) == ["model.pyanom"]
    assert load_archive(path)[0] == {"v": 1}


def test_a_model_into_a_folder_made_read_only(small_disk):
    disk = small_disk(64 * 1024)
    path = disk / "model.pyanom"
    save_archive(path, {"v": 1}, _big(10))
    before = path.read_bytes()
    small_disk.read_only(disk)
    with pytest.raises(WriteFailed, match="cannot write it: the file system is read-only; the previous "
                                          "model.pyanom is unchanged"):
        save_archive(path, {"v": 2}, _big(10))
    assert path.read_bytes() == before and _files(disk) == ["model.pyanom"]


def test_a_new_model_on_a_full_disk_leaves_no_file(small_disk):
    disk = small_disk(16 * 1024)
    with pytest.raises(WriteFailed, match="the disk is full; no file was left"):
        save_archive(disk / "new.pyanom", {}, _big(40_000))
    assert _files(disk) == []


@pytest.fixture(scope="module")
def train(texture_set):
    return open_dataset(texture_set, "train", image_size=32)


AE = {"image_size": 32, "width": 8, "latent_dim": 16, "batch_size": 8}


def test_a_checkpoint_the_disk_cannot_hold_twice_stops_training_and_keeps_the_last(small_disk, train, tmp_path):
    """The atomic write needs room for the old checkpoint and the new one: a disk of 1.5
    checkpoints takes the first epoch's and refuses the second's."""
    probe = tmp_path / "probe.ckpt"
    pyanom.create("autoencoder", epochs=1, checkpoint=str(probe), **AE).fit(train, progress=False)
    disk = small_disk(probe.stat().st_size * 3 // 2)
    ckpt = disk / "run.ckpt"
    det = pyanom.create("autoencoder", epochs=3, checkpoint=str(ckpt), **AE)
    with pytest.raises(WriteFailed, match=f"{ckpt}: cannot write it: the disk is full; the previous run.ckpt "
                                          "is unchanged"):
        det.fit(train, progress=False)
    assert _files(disk) == ["run.ckpt"]
    assert load_archive(ckpt)[0]["progress"]["training"]["epochs"] == 1  # the last good one, whole (digest)


def test_a_read_only_checkpoint_folder_is_refused_before_the_first_epoch(small_disk, train):
    disk = small_disk(PAGE * 4)
    small_disk.read_only(disk)
    det = pyanom.create("autoencoder", epochs=1, checkpoint=str(disk / "run.ckpt"), **AE)
    with pytest.raises(OutputError, match=f"checkpoint {disk}: cannot write there"):
        det.fit(train, progress=False)


@pytest.fixture(scope="module")
def model(texture_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m.pyanom"
    runs.fit_folder("patchcore", texture_set, out, settings=["image_size=64"], say=None, progress=False)
    return out


def test_scores_table_on_a_full_disk(small_disk, model, texture_set):
    """Room for the output folder's manifest, not for the table."""
    disk = small_disk(PAGE * 3)
    (disk / "filler").write_bytes(b"\0" * PAGE * 2)
    with pytest.raises(WriteFailed, match=r"scores\.csv: cannot write it: the disk is full; no file was left"):
        runs.predict_folder(model, [texture_set / "test"], disk / "out", say=None)
    assert not [f for f in _files(disk) if f.endswith(".tmp")]
    assert "out/scores.csv" not in _files(disk)


def test_heatmaps_on_a_disk_that_fills_up_part_way(small_disk, model, texture_set):
    disk = small_disk(PAGE * 16)
    with pytest.raises(WriteFailed, match=r"heatmaps/.*\.png: cannot write it: the disk is full; no file was left"):
        runs.predict_folder(model, [texture_set / "test"], disk / "out", say=None)
    written = _files(disk)
    assert "out/scores.csv" in written and not [f for f in written if f.endswith(".tmp")]
    for name in written:
        if name.endswith(".png"):  # every heatmap that is there is whole
            from PIL import Image

            with Image.open(disk / name) as img:
                img.load()


def test_the_command_says_it_in_one_line(small_disk, model, texture_set, capsys):
    from pyanom.cli import main

    disk = small_disk(PAGE * 3)
    (disk / "filler").write_bytes(b"\0" * PAGE * 2)
    assert main(["predict", str(model), str(texture_set / "test"), "--out", str(disk / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pyanom predict: error: ") and "the disk is full" in err and "Errno" not in err
