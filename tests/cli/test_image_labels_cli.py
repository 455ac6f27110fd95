"""`pyanom fit` / `evaluate` on a train/test split of class folders with no masks at all."""

from __future__ import annotations

import json
import shutil

from pyanom.cli import main


def test_fit_and_evaluate_a_split_without_masks(texture_set, tmp_path, capsys):
    root = tmp_path / "labels_only"
    shutil.copytree(texture_set, root, ignore=shutil.ignore_patterns("ground_truth"))
    model = tmp_path / "m.pyanom"
    assert main(["fit", "patchcore", str(root), "--out", str(model),
                 "--set", "image_size=64", "--set", "coreset_ratio=0.05"]) == 0
    out = capsys.readouterr().out
    assert f"{root}: layout mvtec, image labels only (no masks); train good 24; test " in out
    report_path = tmp_path / "metrics.json"
    assert main(["evaluate", str(model), str(root), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["image_auroc"] >= 0.8
    assert report["pixel_auroc"] is None and report["pixel_ap"] is None and report["aupro"] is None
    assert report["pixel_metrics_unavailable"] == f"no masks in {root}"
    assert f"pixel metrics unavailable: no masks in {root}" in capsys.readouterr().out

    assert main(["fit", "segdec", str(root), "--out", str(tmp_path / "s.pyanom"), "--set", "image_size=32"]) == 2
    err = capsys.readouterr().err
    assert f"segdec learns from pixel masks, but {root} has image labels only" in err and err.count("\n") == 1
