"""The evaluation report's own logic on a small synthetic set (the bottle report is in tests/serve)."""

from __future__ import annotations

import base64
import io
import re
from types import SimpleNamespace

import torch
from PIL import Image

from pyanom.data import open_dataset
from pyanom.detector import Prediction
from pyanom.metrics import evaluate
from pyanom.report import write_report


def _report(texture_set, tmp_path, with_maps: bool):
    test = open_dataset(texture_set, "test", image_size=64)
    labels = test.labels.bool()
    # defects score 2..7, good 0..5: one defect missed (2 < 2.5), two good ones false alarms (3, 5)
    scores = torch.where(labels, torch.arange(len(test)) % 6 + 2.0, torch.arange(len(test)) % 6 + 0.0)
    maps = torch.rand(len(test), 64, 64) * scores[:, None, None] if with_maps else None
    pred = Prediction(scores, maps, scores >= 2.5)
    metrics = evaluate(test.labels, scores, masks=test.masks() if with_maps else None, maps=maps,
                       defect_types=test.defect_types)
    path = write_report(tmp_path / "r", test, pred, SimpleNamespace(name="fake", threshold=2.5), metrics,
                        title="t", worst=3)
    return path.read_text(), labels, scores


def test_report_counts_misses_and_false_alarms_at_the_threshold(texture_set, tmp_path):
    page, labels, scores = _report(texture_set, tmp_path, with_maps=True)
    missed = int((labels & (scores < 2.5)).sum())
    alarms = int((~labels & (scores >= 2.5)).sum())
    n_defect, n_good = int(labels.sum()), int((~labels).sum())
    assert missed and alarms
    assert f"{missed} of {n_defect} (" in page and f"{alarms} of {n_good} (" in page
    assert page.count("MISSED") == min(3, missed) and page.count("FALSE ALARM") == min(3, alarms)
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) == 6
    assert all(Image.open(io.BytesIO(base64.b64decode(p))).size == (64, 64) for p in pictures)
    assert page.count("<svg") == 3 and "threshold 2.5" in page


def test_report_without_anomaly_maps_shows_the_plain_images(texture_set, tmp_path):
    page, _, _ = _report(texture_set, tmp_path, with_maps=False)
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 6
    assert "Heatmap colours" not in page and "<td>-</td>" in page
