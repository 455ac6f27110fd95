"""The documentation site builds with `mkdocs build --strict`, offline, and holds what it promises:
the API reference, the settings reference, the benchmark plots, and nothing fetched from elsewhere."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
API_PAGES = ["pyanom", "detector", "data", "metrics", "ops", "serve", "export", "training"]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The site as CI builds it (strict: any warning, broken link or missing page fails)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail('mkdocs is not installed: pip install ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-P", "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _text(page: Path) -> str:
    return re.sub(r"<[^>]+>", " ", page.read_text())


def test_api_reference_documents_the_public_api(site):
    for name in API_PAGES:
        assert (site / "api" / f"{name}.html").is_file(), f"api/{name}.html missing"
    ops = _text(site / "api" / "ops.html")
    for op in ("greedy_coreset", "knn_scores", "self_attention", "channel_self_attention", "concentrated_loss"):
        assert op in ops
    assert "k-center greedy coreset" in ops  # greedy_coreset's docstring, not only its name
    top = _text(site / "api" / "pyanom.html")
    assert all(name in top for name in ("create", "load", "list_detectors"))
    assert "create_app" in _text(site / "api" / "serve.html")


def test_settings_reference_lists_every_detector(site):
    from pyanom.registry import list_detectors

    text = (site / "reference" / "settings.html").read_text()
    for entry in list_detectors():
        if entry.error is None:
            assert f'id="{entry.name}"' in text, f"no settings section for {entry.name}"
    assert "coreset_ratio" in text and "checkpoint_every" in text


def test_benchmark_plots_are_drawn_and_shown(site):
    figures = sorted((site / "benchmarks" / "figures").glob("*.png"))
    assert len(figures) >= 4, figures
    page = (site / "benchmarks" / "index.html").read_text()
    for figure in figures:
        assert f'src="figures/{figure.name}"' in page, f"{figure.name} drawn but not shown"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "python3 -P benchmarks/bench_knn.py" in page  # RESULTS.md's figures, with their commands


def test_nothing_is_fetched_from_elsewhere(site):
    external = re.compile(r"^(https?:)?//", re.I)
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        html = page.read_text()
        for tag in re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", html, re.I):
            url = re.search(r"\b(?:src|href)=[\"']([^\"']*)", tag)
            rel = re.search(r"\brel=[\"']([^\"']*)", tag)
            if rel and "preconnect" in rel.group(1).lower():
                pytest.fail(f"{page.relative_to(site)}: preconnect link {tag}")
            if url and external.match(url.group(1)) and (tag.lower().startswith(("<script", "<img", "<iframe"))
                                                        or (rel and rel.group(1).lower() != "canonical")):
                pytest.fail(f"{page.relative_to(site)}: loads {url.group(1)} from elsewhere: {tag}")
        assert "@import url(http" not in html and "fonts.googleapis" not in html
