"""A real browser (Debian's chromium + chromium-driver, driven by selenium) on the operator page
and on the evaluation report. Screenshots are kept in test-artifacts/ (or $PYANOM_TEST_ARTIFACTS)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import pyanom
from pyanom.cli import main
from pyanom.data import open_images
from pyanom.serve import ServeSettings, create_app

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PYANOM_TEST_ARTIFACTS") or REPO / "test-artifacts")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are needed: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def _screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path))
    return path


_BROKEN_IMAGES = """return Array.from(document.images)
    .filter((i) => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).map((i) => i.id)"""


def test_operator_page_asks_for_the_key_in_the_page_and_shows_verdicts_heatmaps_and_rejections(
        browser, bottle_model, bottle_root, live, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    defect = bottle_root / "test" / "broken_large" / "000.png"
    good = bottle_root / "test" / "good" / "000.png"
    det = pyanom.load(bottle_model)
    app = create_app({"bottle": det}, ServeSettings(api_key="line-7"))
    with live(app) as url:
        browser.get(url + "/")
        key = browser.find_element(By.ID, "api-key")
        wait.until(lambda b: key.is_displayed())  # the page asks for the key in a field, never a dialog
        assert not ec.alert_is_present()(browser)
        assert "needs an API key" in browser.find_element(By.ID, "key-message").text
        assert browser.execute_script(_BROKEN_IMAGES) == []  # the empty page shows no broken image
        assert browser.find_element(By.ID, "no-history").is_displayed()
        _screenshot(browser, "operator_page_empty.png")
        key.send_keys("wrong", Keys.ENTER)
        wait.until(lambda b: "refused that API key" in b.find_element(By.ID, "key-message").text)
        key.send_keys("line-7", Keys.ENTER)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
        assert not key.is_displayed() and not ec.alert_is_present()(browser)
        assert "patchcore" in browser.find_element(By.ID, "model-info").text
        for image, verdict in ((good, None), (defect, "DEFECT")):
            rows = len(browser.find_elements(By.CSS_SELECTOR, "#history tr"))
            browser.find_element(By.ID, "file").send_keys(str(image))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#history tr")) == rows + 1)
            shown = browser.find_element(By.ID, "verdict").text
            assert shown in ("GOOD", "DEFECT") and (verdict is None or shown == verdict)
        wait.until(lambda b: b.execute_script(
            "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0"))
        assert browser.execute_script("return document.getElementById('heatmap').naturalWidth") == 900  # own size
        score_text = browser.find_element(By.ID, "score-text").text
        shot = _screenshot(browser, "operator_page.png")

        not_an_image = tmp_path / "garbage.bin"
        not_an_image.write_bytes(b"this is not a picture")
        browser.find_element(By.ID, "file").send_keys(str(not_an_image))
        wait.until(lambda b: b.find_element(By.ID, "verdict").get_attribute("class") == "error")
        reason = "garbage.bin is not an image pyanom can read (unknown or corrupt header): send a PNG, JPEG, BMP or TIFF image"
        assert browser.find_element(By.ID, "verdict").text == f"Not inspected: {reason}"
        row = browser.find_elements(By.CSS_SELECTOR, "#history tr")[0].find_elements(By.TAG_NAME, "td")
        assert [td.text.split("\n")[0] for td in row[1:]] == ["garbage.bin", "\u2013", "rejected"]
        assert row[3].find_element(By.CLASS_NAME, "why").text == reason
        assert browser.execute_script(_BROKEN_IMAGES) == []
        _screenshot(browser, "operator_page_rejected.png")
    expected = float(det.predict(open_images(defect, image_size=128)).image_scores[0])
    assert re.search(r"score ([\d.]+) against threshold ([\d.]+)", score_text)
    assert float(score_text.split()[1]) == pytest.approx(expected, rel=1e-3)
    assert Image.open(shot).size[0] >= 1000


def test_api_page_renders_offline(browser, bottle_model, live):
    """/docs is FastAPI's Swagger UI with its scripts served by the app: this machine has no internet,
    so a page that needed a CDN would stay blank."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app({"bottle": pyanom.load(bottle_model)}, ServeSettings(api_key="k"))
    with live(app) as url:
        browser.get(url + "/docs")
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = {e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/models", "/v1/models/{name}/predict", "/healthz"} <= paths
        assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # the key can be given on the page
        _screenshot(browser, "api_docs.png")


@pytest.fixture(scope="module")
def bottle_report(bottle_model, bottle_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["evaluate", str(bottle_model), str(bottle_root), "--report", str(out)]) == 0
    return out / "index.html"


def test_report_on_bottle_is_self_contained(bottle_report):
    page = bottle_report.read_text()
    # One page, beside the output policy's own record of what it wrote.
    assert sorted(p.name for p in bottle_report.parent.iterdir()) == [".pyanom-outputs.json", "index.html"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the report must not fetch anything"
    assert "<script" not in page
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) == 12  # six worst misses and six worst false alarms
    for data in pictures:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (128, 128)
    assert page.count("<svg") == 3  # ROC, PR, histogram
    for name in ("broken_large", "broken_small", "contamination"):
        assert f"<td>{name}</td>" in page


def test_report_loads_in_the_browser(browser, bottle_report):
    from selenium.webdriver.common.by import By

    browser.get(bottle_report.as_uri())
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    assert len(images) == 12
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth === 128", i)
               for i in images)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.plot polyline")) == 2
    assert browser.find_element(By.ID, "summary").text.startswith("decision threshold")
    browser.set_window_size(1280, 2600)
    _screenshot(browser, "report.png")
