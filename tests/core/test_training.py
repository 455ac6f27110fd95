"""The training engine (pyanom.training), on the README's trained example and on every bundled
trained detector: the training set decoded once, resuming to the bit (also after a real Ctrl-C of
`pyanom fit`), another run's checkpoint refused by name, the NaN guard, weight averaging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyanom
from pyanom.cli import main
from pyanom.data import InspectionSet, open_dataset
from pyanom.archive import ArchiveError, load_archive
from pyanom.training import (ShuffledBatches, Stage, StratifiedBatches, Trainer, decode_once, load_module,
                             module_tensors, seeded)


@pytest.fixture
def tiny(install_plugin, readme_detector_examples):
    """The README's TinyAutoencoder installed as a third-party plugin `tiny_autoencoder`."""
    install_plugin("my_trained", readme_detector_examples[1], {"tiny_autoencoder": "my_trained:TinyAutoencoder"})


@pytest.fixture
def train(texture_set):
    return open_dataset(texture_set, "train", image_size=32)


def _tensors(det) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in det.state_tensors().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)


def test_readme_trained_detector_learns_and_resumes_to_the_bit(tiny, train, tmp_path):
    ckpt = str(tmp_path / "tiny.ckpt")
    straight = pyanom.create("tiny_autoencoder", epochs=6).fit(train, progress=False)
    assert straight.history["loss"][-1] < 0.5 * straight.history["loss"][0]
    pyanom.create("tiny_autoencoder", epochs=3, checkpoint=ckpt).fit(train, progress=False)
    resumed = pyanom.create("tiny_autoencoder", epochs=6, checkpoint=ckpt).fit(train, progress=False)
    _assert_same(_tensors(straight), _tensors(resumed))
    assert resumed.history == straight.history and resumed.threshold == straight.threshold


def test_training_set_is_decoded_once(tiny, train, monkeypatch):
    decoded = []
    original = InspectionSet.__getitem__

    def counting(self, index):
        item = original(self, index)
        decoded.append(item["path"])
        return item

    monkeypatch.setattr(InspectionSet, "__getitem__", counting)
    learn, validation = train.subset(range(16)), train.subset(range(16, len(train)))
    pyanom.create("tiny_autoencoder", epochs=5, batch_size=4).fit(learn, validation=validation, progress=False)
    learned = [str(s.image) for s in learn.samples]
    assert sorted(p for p in decoded if p in learned) == sorted(learned)  # each once, not once per epoch


def test_cache_is_uint8_when_the_images_are_8_bit(train):
    data = decode_once(train.subset(range(4)), progress=False)
    assert data.images.dtype == torch.uint8 and data.nbytes == 4 * 3 * 32 * 32 + 4 * 8
    torch.testing.assert_close(data.floats(), torch.stack([train[i]["image"] for i in range(4)]), rtol=0, atol=0)
    resized = decode_once(train.subset(range(4)), size=16, progress=False)
    assert resized.images.dtype == torch.float32 and resized.images.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("name, settings, message", [
    ("tiny_autoencoder", dict(lr=1e30), r"the training loss loss became (nan|inf) in epoch 1 \(step 2\); "
                                            "lower the learning rate"),
    ("autoencoder", dict(image_size=32, width=8, latent_dim=16, lr=1e30),
     r"the training loss loss became (nan|inf) in epoch 1 \(step 2\)"),
])
def test_nan_loss_stops_naming_stage_epoch_and_loss(tiny, train, name, settings, message):
    det = pyanom.create(name, epochs=3, batch_size=8, **settings)
    with pytest.raises(FloatingPointError, match=message):
        det.fit(train, progress=False)


def test_checkpoint_of_other_settings_or_detector_is_refused(tiny, train, tmp_path):
    ckpt = str(tmp_path / "tiny.ckpt")
    pyanom.create("tiny_autoencoder", epochs=1, checkpoint=ckpt).fit(train, progress=False)
    with pytest.raises(ValueError, match=r"tiny\.ckpt belongs to another run \(lr: 0\.01 there, 0\.001 now\)"):
        pyanom.create("tiny_autoencoder", epochs=2, lr=0.001, checkpoint=ckpt).fit(train, progress=False)
    with pytest.raises(ArchiveError, match="not a autoencoder training checkpoint"):
        pyanom.create("autoencoder", image_size=32, width=8, latent_dim=16, epochs=1,
                      checkpoint=ckpt).fit(train, progress=False)


def test_weight_average_is_the_mean_of_the_last_epochs(tiny, train):
    det = pyanom.create("tiny_autoencoder")
    data = decode_once(train, progress=False)
    optimizer = torch.optim.SGD(det.net.parameters(), lr=0.1)
    after_each_epoch = []

    def step(batch, ctx):  # one batch per epoch: the weights after the step are the epoch's
        x = data.floats(batch)
        loss = (det.net(x) - x).pow(2).mean()
        ctx.minimise(loss, optimizer)
        after_each_epoch.append([p.detach().clone() for p in det.net.parameters()])
        return {"loss": loss}

    Trainer(det, data, progress=False).run([Stage("training", "epochs", 4, {"net": det.net}, {"net": optimizer},
                                                  ShuffledBatches(len(data), len(data)), step, average_last=3)])
    for p, *snapshots in zip(det.net.parameters(), *after_each_epoch[1:]):
        torch.testing.assert_close(p, torch.stack(snapshots).mean(0))


def test_stratified_batches_draw_each_class_without_replacement():
    labels = torch.tensor([0] * 6 + [1] * 3)
    batches = list(StratifiedBatches(labels, {0: 3, 1: 2}, steps=50).epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == 50
    for b in batches:
        assert labels[b].tolist() == [0, 0, 0, 1, 1] and len(set(b.tolist())) == 5
    assert set(torch.cat(batches).tolist()) == set(range(9))


# -- a real Ctrl-C of `pyanom fit`, then the same command again ---------------------------------
@pytest.fixture(scope="module")
def labelled_folders(tmp_path_factory) -> Path:
    """Good and cracked 32 px parts (a bright square, its mask beside the image): 8 of each."""
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(0)
    for name in ("good", "crack"):
        (root / name).mkdir()
        for i in range(8):
            image = rng.integers(80, 120, (32, 32), dtype=np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            if name == "crack":
                y, x = rng.integers(0, 20, 2)
                image[y:y + 10, x:x + 10] = 250
                mask[y:y + 10, x:x + 10] = 255
            Image.fromarray(image).save(root / name / f"{i}.jpg", quality=95)
            Image.fromarray(mask).save(root / name / f"{i}.png")
    return root


# Each runs long enough (a second or more) that the Ctrl-C after its first checkpoint lands
# mid-training; checkpoints every few epochs keep the file writes from dominating.
RUNS = {
    "autoencoder": ("texture", ["image_size=32", "width=8", "latent_dim=16", "batch_size=8", "epochs=60",
                                "checkpoint_every=5"], "training", 60),
    "fanogan": ("texture", ["image_size=32", "gan_size=16", "width=8", "latent_dim=8", "batch_size=8",
                            "n_critic=2", "gan_epochs=40", "encoder_epochs=3", "checkpoint_every=5"], "WGAN-GP", 40),
    "segdec": ("folders", ["image_size=32", "seg_epochs=40", "dec_epochs=3", "batch_size=4", "seg_lr=0.001",
                           "dec_lr=0.001", "swa_epochs=30", "augment=true", "checkpoint_every=5"], "segmentation", 40),
    "siamese": ("folders", ["image_size=32", "epochs=10", "batch_size=16", "learning_rate=0.0001", "augment=true",
                            "checkpoint_every=2"], "training", 10),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_ctrl_c_then_the_same_command_gives_the_uninterrupted_model(name, texture_set, labelled_folders, tmp_path,
                                                                   capsys):
    data, settings, stage, epochs = RUNS[name]
    root = texture_set if data == "texture" else labelled_folders
    ckpt = tmp_path / "run.ckpt"
    command = ["fit", name, str(root), "--out", str(tmp_path / "resumed.pyanom")]
    for setting in settings + [f"checkpoint={ckpt}"]:
        command += ["--set", setting]
    proc = subprocess.Popen([sys.executable, "-P", "-m", "pyanom.cli", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert f"checkpoint written to {ckpt}: run the same command again to continue" in err
    stopped = load_archive(ckpt)[0]["progress"][stage]["epochs"]
    assert 1 <= stopped < epochs

    # At the default thread count, as the interrupted process ran: the same command continues.
    assert main([*command, "--set", "seed=1"]) == 2  # another run's checkpoint: refused, by name
    assert "belongs to another run (seed: 0 there, 1 now)" in capsys.readouterr().err
    assert main(command) == 0
    resumed = (tmp_path / "resumed.pyanom").read_bytes()
    ckpt.unlink()  # the same command from nothing, never interrupted
    assert main(command + ["--force"]) == 0
    assert (tmp_path / "resumed.pyanom").read_bytes() == resumed


def test_seeded_builds_repeat_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = seeded(lambda: torch.nn.Linear(4, 3), seed=7)
    b = seeded(lambda: torch.nn.Linear(4, 3), seed=7)
    c = seeded(lambda: torch.nn.Linear(4, 3), seed=8)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_tensors_round_trip_under_their_prefix():
    src, dst = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    tensors = {**module_tensors("net", src), "other.weight": torch.zeros(1)}
    assert set(tensors) == {"net.weight", "net.bias", "other.weight"}
    load_module("net", dst, tensors)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


def test_tensors_of_another_network_are_an_error_naming_the_prefix():
    with pytest.raises(ValueError, match="net: saved tensors do not fit"):
        load_module("net", torch.nn.Linear(4, 3), module_tensors("net", torch.nn.Linear(5, 3)))
    with pytest.raises(ValueError, match="net: saved tensors do not fit"):
        load_module("net", torch.nn.Linear(4, 3), {"net.weight": torch.zeros(3, 4)})
