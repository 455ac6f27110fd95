"""Siamese detector: losses against hand-computed values, unbiased in-batch pairs, the network's
structure, training on a small real magnetic-tile split, save/load, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import numpy as np
import pytest
import torch

import pyanom
from pyanom.cli import main
from pyanom.data import open_dataset
from pyanom.metrics import image_auroc
from pyanom_plugins.siamese.losses import (batch_composition, contrastive_loss, in_batch_pair_loss,
                                           make_pair_loss, pair_balanced_contrastive_loss, pair_type_shares)
from pyanom_plugins.siamese.network import AttentionModule, SiameseNetwork, VGG16Trunk, build_trunk

SIZE = 64


# -- losses ------------------------------------------------------------------------------
def test_contrastive_loss_by_hand():
    d = torch.tensor([0.5, 2.0, 0.3])
    same = torch.tensor([1, 0, 0])
    # 1/2 * 0.5^2; beyond the margin; 1/2 * (1 - 0.3)^2
    torch.testing.assert_close(contrastive_loss(d, same, margin=1.0), torch.tensor([0.125, 0.0, 0.245]))


def test_pair_balanced_contrastive_loss_by_hand():
    d = torch.tensor([0.5, 0.5, 0.3, 2.0])
    same = torch.tensor([1, 1, 0, 0])  # (normal, normal), (defect, defect), (normal, defect) x2
    has_normal = torch.tensor([1, 0, 1, 1])
    loss = pair_balanced_contrastive_loss(d, same, has_normal, margin=1.0, alpha=4.0, beta=2.0)
    # 1/2 * 0.25; 1/2 * alpha * 0.25; 1/2 * beta * 0.7^2; beyond the margin
    torch.testing.assert_close(loss, torch.tensor([0.125, 0.5, 0.49, 0.0]))


def test_pbcl_with_unit_weights_is_the_contrastive_loss():
    d, same = torch.rand(50) * 2, torch.randint(0, 2, (50,))
    has_normal = torch.where(same.bool(), torch.randint(0, 2, (50,)), torch.ones(50, dtype=torch.long))
    torch.testing.assert_close(pair_balanced_contrastive_loss(d, same, has_normal, margin=1.5, alpha=1, beta=1),
                               contrastive_loss(d, same, margin=1.5))


def test_in_batch_loss_by_hand():
    # 1-d embeddings: normals at 0 and 1, a defect at 1.5. Shares: 1 of 3 pairs normal-normal, 2 normal-defect.
    emb = torch.tensor([[0.0], [1.0], [1.5]])
    labels = torch.tensor([0, 0, 1])
    loss = in_batch_pair_loss(emb, labels, pair_type_shares(2, 1), make_pair_loss("cl", margin=1.0, alpha=4, beta=1))
    # normal-normal: 1/2 * 1^2; normal-defect: D = 1.5 (0) and 0.5 (1/2 * 0.5^2), mean 0.0625
    torch.testing.assert_close(loss, torch.tensor(1 / 3 * 0.5 + 2 / 3 * 0.0625))


def all_pairs_loss(emb, labels, pair_loss):
    """The paper's loss: mean over every pair of the training set, pair by pair."""
    values = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        d = torch.linalg.vector_norm(emb[i] - emb[j])[None]
        same = torch.tensor([int(labels[i] == labels[j])])
        has_normal = torch.tensor([int(labels[i] == 0 or labels[j] == 0)])
        values.append(pair_loss(d, same, has_normal))
    return torch.cat(values).mean()


@pytest.mark.parametrize("name", ["cl", "pbcl"])
def test_pair_weighting_equals_all_pairs_loss_in_expectation(name):
    torch.manual_seed(0)
    n_normal, n_defect = 6, 3
    emb = torch.randn(n_normal + n_defect, 4, dtype=torch.float64)
    labels = torch.tensor([0] * n_normal + [1] * n_defect)
    pair_loss = make_pair_loss(name, margin=3.0, alpha=4.0, beta=1.0)
    shares = pair_type_shares(n_normal, n_defect)
    k_normal, k_defect = batch_composition(n_normal, n_defect, 5)
    assert (k_normal, k_defect) == (3, 2)
    weighted, unweighted = [], []
    # Exact expectation: every batch the sampler can draw is equally likely.
    for normal in itertools.combinations(range(n_normal), k_normal):
        for defect in itertools.combinations(range(n_normal, n_normal + n_defect), k_defect):
            index = list(normal + defect)
            weighted.append(in_batch_pair_loss(emb[index], labels[index], shares, pair_loss))
            # the plain mean over the batch's pairs, for contrast
            unweighted.append(all_pairs_loss(emb[index], labels[index], pair_loss))
    target = all_pairs_loss(emb, labels, pair_loss)
    torch.testing.assert_close(torch.stack(weighted).mean(), target)
    assert abs(float(torch.stack(unweighted).mean() - target)) > 1e-3  # the weights are needed


def test_batch_composition():
    assert batch_composition(80, 40, 16) == (11, 5)  # the set's 1:2 proportion
    assert batch_composition(100, 2, 16) == (14, 2)  # at least two defects for defect-defect pairs
    assert batch_composition(3, 1, 16) == (3, 1)  # a small set: all of it
    with pytest.raises(ValueError, match="batch_size"):
        batch_composition(10, 10, 3)


def test_batch_without_a_needed_pair_type_is_an_error():
    with pytest.raises(ValueError, match="defect-defect"):
        in_batch_pair_loss(torch.randn(3, 2), torch.tensor([0, 0, 1]), pair_type_shares(4, 2),
                           make_pair_loss("cl", margin=1.0, alpha=4, beta=1))


# -- network -----------------------------------------------------------------------------
def test_attention_reweights_features_by_one_plus_map():
    torch.manual_seed(0)
    module = AttentionModule(8).eval()
    x = torch.randn(2, 8, 5, 5)
    out, attention, output2 = module(x)
    assert attention.shape == (2, 1, 5, 5) and output2.shape == (2, 2)
    assert bool(((attention > 0) & (attention < 1)).all())
    torch.testing.assert_close(out, (1 + attention) * x)


@pytest.mark.parametrize("backbone, layer, stage", [("efficientnet_lite0", "stride8", "blocks.2"),
                                                    ("vgg16", "stride8", "conv10"), ("vgg16", "conv4", "conv4")])
def test_twin_outputs(backbone, layer, stage):
    net = SiameseNetwork(backbone, layer, pretrained=False).eval()
    assert net.attention_layer == stage
    with torch.no_grad():
        out = net(torch.rand(2, 3, SIZE, SIZE))
    assert out["embedding"].shape == (2, 512) and out["output2"].shape == (2, 2)
    stride = net.trunk.strides[stage]
    assert out["attention"].shape == (2, 1, SIZE // stride, SIZE // stride)


def test_no_attention_is_method_one():
    net = SiameseNetwork("efficientnet_lite0", None, pretrained=False).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, SIZE, SIZE))
    assert out["output2"] is None and out["attention"] is None and not hasattr(net, "attention")


def test_vgg16_has_torchvision_names_and_loads_a_weights_file(tmp_path):
    trunk = VGG16Trunk()
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's indices in vgg16.features
    assert sorted(trunk.state_dict()) == sorted(f"features.{i}.{p}" for i in convs for p in ("weight", "bias"))
    # A torchvision-style file, classifier included, made locally.
    state = {k: torch.randn_like(v) for k, v in trunk.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(8, 4)
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = build_trunk("vgg16", weights=str(tmp_path / "vgg16.pth"))
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, state[k])
    del state["features.28.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="features.28.bias"):
        build_trunk("vgg16", weights=str(tmp_path / "broken.pth"))


def test_unknown_attention_layer_names_the_choices():
    with pytest.raises(ValueError, match="conv99.*stride"):
        SiameseNetwork("vgg16", "conv99", pretrained=False)


# -- the detector on real data -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiles(shared_data):
    """A small seeded few-shot split of magnetic tile at 64 px: 24 normal + 12 defective images to
    train on, 200 + 200 unseen images to test on (enough that the AUROC of one run is stable)."""
    data = open_dataset(shared_data / "magnetic_tile", "all", layout="folders", image_size=SIZE)
    labels = data.labels.numpy()
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.flatnonzero(labels == 0))
    defect = rng.permutation(np.flatnonzero(labels == 1))
    train = data.subset(np.concatenate([normal[:24], defect[:12]]).tolist())
    test = data.subset(np.concatenate([normal[24:224], defect[12:212]]).tolist())
    return train, test


def fit_tiles(train, **settings):
    det = pyanom.create("siamese", image_size=SIZE, batch_size=12, **settings)
    return det.fit(train, validation=train, progress=False)


@pytest.fixture(scope="module")
def trained(tiles):
    return fit_tiles(tiles[0], epochs=12, learning_rate=3e-4)


def test_training_separates_the_classes(tiles, trained):
    train, test = tiles
    untrained = fit_tiles(train, epochs=0)
    # Twelve epochs from one start diverge with the CPU's float rounding (CI once gave 0.69 on
    # 24 + 24 images where this machine gave 0.78-0.81), so the floors sit under the spread of seeds
    # 0-9 on 200 + 200: training images 0.68 -> 1.00 in every run, unseen images 0.57-0.59 ->
    # 0.70-0.79, last/first loss 0.43-0.54.
    assert image_auroc(train.labels, untrained.predict(train).image_scores) < 0.8
    assert image_auroc(train.labels, trained.predict(train).image_scores) > 0.95
    before = image_auroc(test.labels, untrained.predict(test).image_scores)
    after = image_auroc(test.labels, trained.predict(test).image_scores)
    assert after >= before + 0.06 and after >= 0.66, (before, after)
    assert trained.history["loss"][-1] < 0.7 * trained.history["loss"][0]


def test_augmentation_is_seeded_and_changes_training(tiles):
    train = tiles[0]
    augmented = fit_tiles(train, epochs=1, augment=True).history["loss"]
    # Equal up to the order of threaded float sums: one run to the next differs by ~1e-7.
    assert fit_tiles(train, epochs=1, augment=True).history["loss"] == pytest.approx(augmented, rel=1e-5)
    assert fit_tiles(train, epochs=1).history["loss"] != pytest.approx(augmented, rel=1e-3)


def test_prediction_has_no_maps_and_nearest_neighbour_labels(tiles, trained):
    test = tiles[1]
    pred = trained.predict(test)
    assert pred.anomaly_maps is None and pred.labels.dtype == torch.bool
    embeddings = trained.embed(test)
    nearest = torch.cdist(embeddings, trained.train_embeddings).argmin(dim=1)
    assert torch.equal(pred.labels, trained.train_labels[nearest].bool())
    accuracy = float((pred.labels == test.labels.bool()).float().mean())
    assert accuracy > 0.55, accuracy  # 0.59-0.68 over seeds 0-7; chance 0.5
    maps = trained.explain(torch.stack([test[i]["image"] for i in range(2)]))
    assert maps.shape == (2, SIZE, SIZE)


def test_save_load_gives_identical_predictions(tiles, trained, tmp_path):
    test = tiles[1]
    loaded = pyanom.load(trained.save(tmp_path / "siamese.pyanom"))
    assert loaded.config == trained.config and loaded.threshold == trained.threshold
    a, b = trained.predict(test), loaded.predict(test)
    torch.testing.assert_close(a.image_scores, b.image_scores, rtol=0, atol=0)
    assert torch.equal(a.labels, b.labels)


# -- bad input -----------------------------------------------------------------------------
def test_training_set_without_defects_is_refused(texture_set, tmp_path, capsys):
    det = pyanom.create("siamese", image_size=SIZE, epochs=1)
    with pytest.raises(ValueError, match="few-shot.*needs a few defective"):
        det.fit(open_dataset(texture_set, "train", image_size=SIZE), progress=False)
    # The CLI passes the whole training part (normal images only here) and reports the error.
    assert main(["fit", "siamese", str(texture_set), "--out", str(tmp_path / "m.pyanom"),
                 "--set", f"image_size={SIZE}"]) == 2
    assert "needs a few defective" in capsys.readouterr().err


def test_unreadable_class_folder_is_named(tmp_path, texture_set, capsys):
    root = tmp_path / "folders"
    shutil.copytree(texture_set / "train" / "good", root / "good")
    (root / "defect").mkdir()  # a class folder with no image in it
    assert main(["fit", "siamese", str(root), "--out", str(tmp_path / "m.pyanom")]) == 2
    assert f"{root / 'defect'}: folder holds no images" in capsys.readouterr().err


@pytest.mark.parametrize("settings, match", [
    (dict(attention_layer=None), "attention_branch_loss needs"),
    (dict(pair_loss="triplet"), "pair_loss"),
    (dict(backbone="resnet18"), "backbone"),
    (dict(batch_size=2), "batch_size"),
    (dict(margin=0), "margin"),
    (dict(learning_rate=-1.0), "learning_rate"),
])
def test_bad_hyper_parameters(settings, match):
    with pytest.raises(ValueError, match=match):
        pyanom.create("siamese", **settings)


def test_bad_images_and_unfitted_use(trained):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        trained.predict(torch.rand(3, SIZE, SIZE))
    with pytest.raises(RuntimeError, match="fit"):
        pyanom.create("siamese").predict(torch.rand(1, 3, SIZE, SIZE))


def test_labels_come_from_the_decide_hook(tiles, trained, tmp_path):
    """Nearest training image by default; decision=threshold labels by the calibrated threshold."""
    test = tiles[1].subset(range(0, 400, 10))
    assert trained.predict(test).decided_by == "nearest_training_image"
    det = pyanom.load(trained.save(tmp_path / "siamese.pyanom"))
    det.config = dataclasses.replace(det.config, decision="threshold")
    pred = det.predict(test)
    assert pred.decided_by == "threshold" and torch.equal(pred.labels, pred.image_scores >= det.threshold)
