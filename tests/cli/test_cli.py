"""The `pyanom` command as a user meets it: help, fit/evaluate/predict, demo, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pyanom.cli import main

JSON_KEYS = {"image_auroc", "pixel_auroc", "pixel_ap", "aupro", "ap", "f1_max", "threshold", "per_defect_type"}


def test_help_names_every_command():
    out = subprocess.run([sys.executable, "-m", "pyanom.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("list", "fit", "evaluate", "predict", "demo"):
        assert command in out
    assert "examples:" in out


def test_fit_evaluate_predict_on_a_synthetic_set(texture_set, tmp_path, capsys):
    model = tmp_path / "m.pyanom"
    assert main(["fit", "patchcore", str(texture_set), "--out", str(model),
                 "--set", "image_size=128", "--set", "coreset_ratio=0.05"]) == 0
    report_path = tmp_path / "metrics.json"
    assert main(["evaluate", str(model), str(texture_set), "--json", str(report_path),
                 "--heatmaps", str(tmp_path / "hm")]) == 0
    report = json.loads(report_path.read_text())
    assert JSON_KEYS <= set(report)
    assert set(report["per_defect_type"]) <= {"scratch", "spot", "crack"} and report["per_defect_type"]
    assert report["image_auroc"] >= 0.8
    assert len(list((tmp_path / "hm").rglob("*.png"))) == 12
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and "pixel_ap" in printed and "ms/image" in printed
    assert main(["predict", str(model), str(texture_set / "test" / "good"), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "scores.csv").read_text().count("\n") == 1 + 6


def test_a_layout_without_a_split_is_split_once_and_remembered(texture_set, tmp_path, capsys):
    """Labelled folders (good/, <defect>/) have no train/test split: fit splits them by
    --test-fraction and --seed, and evaluate, given no split options, scores the same test part."""
    from pyanom.data import open_dataset

    root = tmp_path / "folders"
    for image in texture_set.glob("t*/*/*.png"):  # train/good, test/good, test/<defect>
        folder = root / image.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / f"{image.parent.parent.name}_{image.name}")
    model = tmp_path / "m.pyanom"
    assert main(["fit", "patchcore", str(root), "--out", str(model), "--test-fraction", "0.4", "--seed", "3",
                 "--set", "image_size=128", "--set", "coreset_ratio=0.05"]) == 0
    split = dict(image_size=128, test_fraction=0.4, seed=3, train_defects=False)  # unsupervised: defects to test
    train, test = open_dataset(root, "train", **split), open_dataset(root, "test", **split)
    assert not {s.image for s in train.samples} & {s.image for s in test.samples}
    assert f"on {len(train.normal())} images" in capsys.readouterr().out
    report_path = tmp_path / "metrics.json"
    assert main(["evaluate", str(model), str(root), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["count"] == len(test) and report["count"] != len(open_dataset(root, "test", image_size=128))
    assert set(report["per_defect_type"]) == {"scratch", "spot", "crack"} and report["image_auroc"] >= 0.8


def test_demo_runs_offline(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert JSON_KEYS <= set(report)
    assert report["image_auroc"] >= 0.9
    assert any((tmp_path / "heatmaps").rglob("*.png"))
    assert main(["demo", "--out", str(tmp_path)]) == 2  # a second demo asks for --overwrite
    (tmp_path / "heatmaps" / "stale.png").write_bytes(b"")  # not pyanom's: stays
    assert main(["demo", "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "heatmaps" / "stale.png").exists() and (tmp_path / "model.pyanom").is_file()


@pytest.mark.parametrize("argv, message", [
    (["fit", "patchcore", "/nonexistent/data", "--out", "x.pyanom"], "/nonexistent/data"),
    (["fit", "nope", "/tmp", "--out", "x.pyanom"], "unknown detector 'nope'"),
    (["fit", "patchcore", "/tmp", "--out", "x.pyanom", "--set", "coreset_ratio=2"], "coreset_ratio"),
    (["evaluate", "/nonexistent/model.pyanom", "/tmp"], "/nonexistent/model.pyanom"),
])
def test_bad_input_is_a_clear_error_naming_the_culprit(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_set_syntax_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "patchcore", "/tmp", "--out", "x.pyanom", "--set", "novalue"]) == 2
    assert "--set expects key=value, got 'novalue'" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ("coreset_ratio=abc", "coreset_ratio must be a float in (0, 1], got 'abc'"),
    ("blur_sigma=abc", "blur_sigma must be a float in [0, inf), got 'abc'"),
    ("reweight=maybe", "reweight must be a bool, got 'maybe'"),
    ("batch_size=2.5", "batch_size must be an int in [1, inf), got 2.5"),
    ("backbone=vgg99", "backbone must be one of efficientnet_lite0, resnet18, wide_resnet50_2, got 'vgg99'"),
    ("colour=3", "--set colour: no such setting; known: backbone, batch_size"),
])
def test_set_is_checked_against_the_declarations_before_any_data_is_read(setting, message, capsys, tmp_path,
                                                                          monkeypatch):
    """One line naming the setting, its type and bounds; the data root does not even exist."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "patchcore", "/nonexistent/data", "--out", "x.pyanom", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyanom fit: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "x.pyanom").exists()
