"""Reproducible by default: for every bundled detector, two `fit` + `predict` runs in separate
processes, with the same data, settings, seed and thread count, the second while another process
keeps every core busy, write byte-identical model files, scores tables and heatmaps. A finished
training run extended to more epochs equals the longer run where the schedule allows it.

The sizes are tiny but each trained detector's batches are big enough to cross PyTorch's parallel
grain (32768 elements), so a kernel that adds in thread-arrival order would show here (the
siamese pair loss did: its backward scatter-added into repeated rows with atomics).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RUN = """
import sys
from pyanom import runs
name, data, images, out, results, *settings = sys.argv[1:]
runs.fit_folder(name, data, out, settings=settings, say=None, progress=False, force=True)
runs.predict_folder(out, [images], results, say=None)
"""

# Keeps every core busy with float work until killed.
LOAD = """
import torch
x = torch.randn(384, 384)
while True:
    x = torch.tanh(x @ x)
"""

DETECTORS = {
    "patchcore": ("texture", ["image_size=64"]),
    "sa_patchcore": ("texture", ["image_size=64"]),
    "autoencoder": ("texture", ["image_size=32", "width=8", "latent_dim=16", "batch_size=8", "epochs=2"]),
    "fanogan": ("texture", ["image_size=32", "gan_size=16", "width=8", "latent_dim=8", "batch_size=8",
                            "n_critic=2", "gan_epochs=2", "encoder_epochs=1"]),
    "siamese": ("folders", ["image_size=32", "epochs=2", "batch_size=16", "learning_rate=0.0001", "augment=true"]),
    "segdec": ("folders", ["image_size=32", "seg_epochs=2", "dec_epochs=1", "batch_size=4", "seg_lr=0.001",
                           "dec_lr=0.001", "swa_epochs=1", "augment=true"]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """Good and cracked 32 px parts with their masks: 20 good, 12 cracked."""
    root = tmp_path_factory.mktemp("parts")
    rng = np.random.default_rng(3)
    for name, count in (("good", 20), ("crack", 12)):
        (root / name).mkdir()
        for i in range(count):
            image = rng.integers(70, 130, (32, 32), dtype=np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            if name == "crack":
                y, x = rng.integers(0, 22, 2)
                image[y:y + 9, x:x + 9] = 245
                mask[y:y + 9, x:x + 9] = 255
            Image.fromarray(image).save(root / name / f"{i:02d}.jpg", quality=95)
            Image.fromarray(mask).save(root / name / f"{i:02d}.png")
    return root


def _run(name: str, data: Path, images: Path, where: Path, settings: list[str]) -> dict[str, bytes]:
    """fit + predict in a fresh process; every file it wrote, by path relative to `where`."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-P", "-c", RUN, name, str(data), str(images), str(where / "m.pyanom"),
                           str(where / "results"), *settings], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*")) if p.is_file()}


def _same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert a.keys() == b.keys()
    assert "m.pyanom" in a and "results/scores.csv" in a
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"differ between two runs: {different}"


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_two_runs_give_the_same_bytes_even_under_load(name, texture_set, folders, tmp_path):
    kind, settings = DETECTORS[name]
    data = texture_set if kind == "texture" else folders
    images = data / "test" if kind == "texture" else data
    quiet = _run(name, data, images, tmp_path / "quiet", settings)
    load = subprocess.Popen([sys.executable, "-P", "-c", LOAD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        loaded = _run(name, data, images, tmp_path / "loaded", settings)
    finally:
        load.kill()
        load.wait()
    _same(quiet, loaded)


# -- extending a finished run --------------------------------------------------------------------------
# The setting that may grow after a finished run, for the detectors whose schedule does not depend on
# the total: fanogan's and segdec's first stage cannot grow once the second has trained on it, and
# segdec's averaging window (swa_epochs) is the last epochs of the total.
EXTEND = {"autoencoder": ("epochs", 1, 2), "siamese": ("epochs", 1, 2), "fanogan": ("encoder_epochs", 1, 2),
          "segdec": ("dec_epochs", 1, 2)}


@pytest.mark.parametrize("name", sorted(EXTEND))
def test_a_finished_run_extended_equals_the_longer_run(name, texture_set, folders, tmp_path):
    kind, settings = DETECTORS[name]
    data = texture_set if kind == "texture" else folders
    images = data / "test" if kind == "texture" else data
    key, short, long = EXTEND[name]
    base = [s for s in settings if not s.startswith(f"{key}=")]
    ckpt = tmp_path / "run.ckpt"
    with_ckpt = base + [f"checkpoint={ckpt}"]
    _run(name, data, images, tmp_path / "short", with_ckpt + [f"{key}={short}"])
    extended = _run(name, data, images, tmp_path / "extended", with_ckpt + [f"{key}={long}"])
    ckpt.unlink()  # the same command from nothing
    straight = _run(name, data, images, tmp_path / "straight", with_ckpt + [f"{key}={long}"])
    _same(extended, straight)


def test_the_engine_restores_the_callers_determinism_setting():
    import torch

    from pyanom.training import deterministic_kernels

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


def test_no_thread_count_is_forced(monkeypatch):
    """The tests above run at the machine's default thread count, as a user's fit does."""
    assert "OMP_NUM_THREADS" not in os.environ or os.environ["OMP_NUM_THREADS"] != "1"
