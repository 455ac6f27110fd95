"""Detectors are found through entry points, third-party ones exactly like the bundled ones."""

from __future__ import annotations

import importlib

import pytest

import pyanom
from pyanom import registry
from pyanom.cli import main


@pytest.fixture
def third_party(install_plugin, readme_detector_examples):
    """The README's MeanColour as a third-party plugin, beside one whose module is missing."""
    install_plugin("my_detector", readme_detector_examples[0],
                   {"mean_colour": "my_detector:MeanColour", "broken": "my_detector_missing:Nope"})


def test_bundled_detectors_are_registered():
    names = {e.name: e for e in pyanom.list_detectors()}
    assert {"patchcore", "sa_patchcore"} <= set(names)
    assert names["patchcore"].error is None
    assert names["patchcore"].supervision == "unsupervised"


def test_broken_plugin_is_listed_with_its_error_and_others_still_work(third_party):
    names = {e.name: e for e in pyanom.list_detectors()}
    assert "ModuleNotFoundError" in names["broken"].error
    assert names["mean_colour"].error is None
    assert names["patchcore"].error is None
    with pytest.raises(ImportError, match="broken"):
        pyanom.create("broken")


def test_unknown_detector_and_hyper_parameter_are_clear_errors(third_party):
    with pytest.raises(ValueError, match="unknown detector 'nope'.*mean_colour"):
        pyanom.create("nope")
    with pytest.raises(ValueError, match="no setting colour"):
        pyanom.create("mean_colour", colour=3)


def test_third_party_detector_fits_and_predicts_through_the_cli(third_party, texture_set, tmp_path, capsys):
    model = tmp_path / "mean.pyanom"
    assert main(["fit", "mean_colour", str(texture_set), "--out", str(model), "--set", "image_size=32"]) == 0
    folders = [str(p) for p in sorted((texture_set / "test").iterdir())]
    assert main(["predict", str(model), *folders, "--out", str(tmp_path / "pred")]) == 0
    rows = (tmp_path / "pred" / "scores.csv").read_text().strip().splitlines()
    assert rows[0].startswith("path,score,defect") and len(rows) == 1 + 12
    assert len(list((tmp_path / "pred" / "heatmaps").rglob("*.png"))) == 12
    assert main(["list"]) == 0
    assert "mean_colour" in capsys.readouterr().out
    det = pyanom.load(model)
    assert type(det).__name__ == "MeanColour" and det.image_size == (32, 32)


def test_registry_rejects_a_non_detector(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "bad-0.1.dist-info").mkdir(parents=True)
    (site / "bad-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: bad\nVersion: 0.1\n")
    (site / "bad-0.1.dist-info" / "entry_points.txt").write_text("[pyanom.detectors]\nnot_a_detector = json:dumps\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(TypeError, match="not a pyanom.Detector"):
        registry.detector_class("not_a_detector")
