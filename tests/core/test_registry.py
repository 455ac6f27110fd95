"""Detectors are found through entry points, third-party ones exactly like the bundled ones."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

import pyanom
from pyanom import registry
from pyanom.cli import main

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The custom-detector example from the README, so the docs are what the test runs."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Write your own detector"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install a throwaway plugin package: a module plus a *.dist-info with entry_points.txt."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_detector.py").write_text(readme_example())
    info = site / "my_detector-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-detector\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pyanom.detectors]\nmean_colour = my_detector:MeanColour\nbroken = my_detector_missing:Nope\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("my_detector", None)


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
    with pytest.raises(ValueError, match="unknown hyper-parameter.*'colour'"):
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
