"""The HTTP API: same scores as the library, batching, bad input, back-pressure, API key, probes."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import pyanom
from pyanom.data import open_images
from pyanom.serve import ServeSettings, create_app


def _app(model_path, **settings):
    return create_app({"bottle": pyanom.load(model_path)}, ServeSettings(**settings))


def _png(width, height, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width, height) -> bytes:
    """A valid grey PNG of width x height zeros: tiny on disk, width*height bytes once decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * ((width + 1) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _post_image(client, data, *, query="", ctype="image/png", headers=None):
    return client.post(f"/v1/models/bottle/predict{query}", content=data,
                       headers={"content-type": ctype, **(headers or {})})


def test_scores_equal_the_library_and_heatmaps_are_pngs(bottle_model, bottle_images):
    det = pyanom.load(bottle_model)
    expected = det.predict(open_images(*bottle_images, image_size=det.image_size))
    files = [("files", (p.parent.name + "_" + p.name, p.read_bytes(), "image/png")) for p in bottle_images]
    with TestClient(_app(bottle_model)) as client:
        body = client.post("/v1/models/bottle/predict?heatmap=png", files=files).json()
        single = _post_image(client, bottle_images[-1].read_bytes()).json()["results"][0]
    results = body["results"]
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    np.testing.assert_allclose([r["image_score"] for r in results], expected.image_scores.numpy(), rtol=1e-6)
    assert [r["label"] == "defect" for r in results] == expected.labels.tolist()
    assert {r["threshold"] for r in results} == {det.threshold}
    # Alone, the image goes through the backbone in a batch of one: another summation order.
    assert single["image_score"] == pytest.approx(float(expected.image_scores[-1]), rel=1e-6)
    assert "heatmap_png" not in single
    # the bottle test set: some good images pass, defects are flagged
    assert {r["label"] for r in results} == {"good", "defect"}
    for r in results:  # at the image's own size, as `pyanom predict` writes them
        heat = Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"])))
        assert heat.format == "PNG" and heat.size == (900, 900)


def test_heatmaps_are_drawn_as_pyanom_predict_draws_them_or_at_a_requested_size(bottle_model, bottle_images,
                                                                                tmp_path):
    from pyanom.runs import predict_folder

    image = bottle_images[-1]
    predict_folder(bottle_model, [image], tmp_path / "out", say=lambda *_: None)
    (written,) = (tmp_path / "out" / "heatmaps").iterdir()
    with TestClient(_app(bottle_model)) as client:
        own = _post_image(client, image.read_bytes(), query="?heatmap=png").json()["results"][0]
        small = _post_image(client, image.read_bytes(), query="?heatmap=png&heatmap_size=256").json()["results"][0]
        tall = _post_image(client, _png(300, 450), query="?heatmap=png&heatmap_size=150").json()["results"][0]
        refused = _post_image(client, image.read_bytes(), query="?heatmap=png&heatmap_size=0")
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(own["heatmap_png"]))))
    np.testing.assert_array_equal(served, np.asarray(Image.open(written)))
    assert Image.open(io.BytesIO(base64.b64decode(small["heatmap_png"]))).size == (256, 256)
    assert Image.open(io.BytesIO(base64.b64decode(tall["heatmap_png"]))).size == (100, 150)
    assert refused.status_code == 400 and refused.json()["error"] == (
        "heatmap_size must be a number of pixels >= 1, got 0: ask for e.g. ?heatmap=png&heatmap_size=512, or leave "
        "it out for the image's own size")


def test_a_large_heatmap_is_drawn_in_strips(monkeypatch):
    """Strips give the very pixels of one overlay over the whole picture."""
    from pyanom.serve import images
    from pyanom.data.transforms import to_array
    from pyanom.visualize import heatmap_scale, overlay, resize_map

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (301, 517, 3), dtype=np.uint8))
    anomaly_map = rng.random((32, 32), dtype=np.float32) * 3
    monkeypatch.setattr(images, "STRIP_PIXELS", 517 * 7)  # 43 strips, the last one short
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(images.heatmap_png(picture, anomaly_map, 1.0)))))
    low, high = heatmap_scale(1.0, float(anomaly_map.min()))
    whole = overlay(to_array(picture), resize_map(anomaly_map, (301, 517)), vmin=low, vmax=high)
    np.testing.assert_array_equal(drawn, whole)


def test_models_lists_what_is_served(bottle_model):
    with TestClient(_app(bottle_model)) as client:
        (info,) = client.get("/v1/models").json()
    det = pyanom.load(bottle_model)
    assert info["name"] == "bottle" and info["detector"] == "patchcore" and info["heatmap"] is True
    assert info["threshold"] == det.threshold and info["input_size"] == [128, 128]
    assert info["hyper_parameters"]["coreset_ratio"] == 0.05
    assert info["fitted_on"] == {"train_images": 15, "train_defective": 0,
                                 "threshold_images": 5, "threshold_defective": 0}
    assert info["scored"] == {"images": 0, "batches": 0}  # the warm-up is not counted
    assert info["queue"] == {"waiting": 0, "max": 64}
    assert info["source"] is None and info["reloads"] == 0 and info["file_changed"] is False


def test_ready_only_after_warm_up_and_openapi_documents_the_api(bottle_model):
    app = _app(bottle_model)
    cold = TestClient(app)  # no lifespan: models not warmed up
    assert cold.get("/healthz").status_code == 200
    assert cold.get("/readyz").status_code == 503
    with TestClient(app) as client:
        assert client.get("/readyz").json() == {"status": "ready", "models": ["bottle"]}
        paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/models/{name}/predict", "/healthz", "/readyz"} <= set(paths)


def test_api_pages_load_nothing_from_outside_and_document_the_key(bottle_model):
    with TestClient(_app(bottle_model)) as client:
        schema = client.get("/openapi.json").json()
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            sources = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
            assert sources and all(src.startswith("/") for src in sources), (page, sources)
            for src in sources:
                assert client.get(src).status_code == 200, src
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/models"]["get"]["security"] == [{"HTTPBearer": []}]


BAD = [  # (what, data, content type, query, status, the message)
    ("not an image", lambda: b"GIF? no, just text", "image/png", "", 415,
     "the uploaded image is not an image pyanom can read (unknown or corrupt header): send a PNG, JPEG, BMP or TIFF "
     "image"),
    ("empty", lambda: b"", "image/png", "", 400, "the uploaded image is an empty upload (0 bytes): send the image "
                                                  "file's contents"),
    ("too many bytes", lambda: b"\x89PNG" + b"\0" * 700_000, "image/png", "", 413,
     "the request body is over the limit of 600000 bytes: send a smaller file, or start the service with a larger "
     "--max-bytes"),
    ("decompression bomb", lambda: _bomb_png(8000, 8000), "image/png", "", 413,
     "the uploaded image is 8000x8000 = 64000000 pixels, over the limit of 40000000 pixels (refused before "
     "decoding): send a smaller image, or start the service with a larger --max-pixels"),
    ("bomb past Pillow's own limit", lambda: _bomb_png(14000, 14000), "image/png", "", 413,
     ("the uploaded image was refused before decoding (", "): send a smaller image")),
    ("stretched", lambda: _png(900, 100), "image/png", "", 422,
     "the uploaded image is 900x100 (width x height) and cannot be resized to the model's 128x128 input without "
     "stretching it 9.0x (at most 2x): crop it to the model's aspect first"),
    ("wrong content type", lambda: b"...", "text/plain", "", 415,
     "content type 'text/plain' is not an upload: send multipart/form-data files or one image as the raw body with "
     "an image/* content type"),
    ("unknown heatmap format", lambda: _png(64, 64), "image/png", "?heatmap=jpg", 400,
     "heatmap must be 'png' or left out, got 'jpg': ask for ?heatmap=png"),
]


@pytest.mark.parametrize("what,data,ctype,query,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_that_says_what_to_do_and_the_service_keeps_serving(
        bottle_model, bottle_images, what, data, ctype, query, status, message):
    with TestClient(_app(bottle_model, max_bytes=600_000)) as client:
        response = _post_image(client, data(), ctype=ctype, query=query)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        if isinstance(message, tuple):  # (start, end): Pillow's own words in between
            assert error.startswith(message[0]) and error.endswith(message[1]), error
        else:
            assert error == message
        assert _post_image(client, _png(300, 300)).status_code == 200


def test_a_multipart_request_scores_its_good_files_and_says_why_the_others_were_not(bottle_model, bottle_images):
    good = [p.read_bytes() for p in bottle_images[:2]]
    files = [("files", ("a.png", good[0], "image/png")), ("files", ("garbage.bin", b"\x00junk" * 10, "image/png")),
             ("files", ("empty.png", b"", "image/png")), ("files", ("b.png", good[1], "image/png"))]
    with TestClient(_app(bottle_model)) as client:
        response = client.post("/v1/models/bottle/predict", files=files)
        alone = [_post_image(client, data).json()["results"][0]["image_score"] for data in good]
        all_bad = client.post("/v1/models/bottle/predict", files=files[1:3])
        one_bad = client.post("/v1/models/bottle/predict", files=files[1:2])
    assert response.status_code == 200
    a, garbage, empty, b = response.json()["results"]
    assert [a["image_score"], b["image_score"]] == pytest.approx(alone, rel=1e-5)
    assert a["label"] in ("good", "defect") and "error" not in a
    assert garbage == {"filename": "garbage.bin", "image_score": None, "label": None, "threshold": a["threshold"],
                       "status": 415, "error": "garbage.bin is not an image pyanom can read (unknown or corrupt "
                                                "header): send a PNG, JPEG, BMP or TIFF image"}
    assert empty["status"] == 400 and empty["error"].startswith("empty.png is an empty upload")
    # none could be scored: the request fails, with each file's reason
    assert all_bad.status_code == 415
    assert all_bad.json()["error"] == ("none of the 2 files could be scored (each result says why): fix or replace "
                                       "them and send them again")
    assert [r["status"] for r in all_bad.json()["results"]] == [415, 400]
    assert one_bad.status_code == 415 and one_bad.json()["error"] == garbage["error"]


def test_truncated_image_and_other_request_errors(bottle_model, bottle_images):
    data = bottle_images[0].read_bytes()
    with TestClient(_app(bottle_model)) as client:
        response = _post_image(client, data[: len(data) // 2])
        assert response.status_code == 400
        assert response.json()["error"].startswith("the uploaded image is truncated or corrupt (")
        assert response.json()["error"].endswith("): send the whole file again")
        response = client.post("/v1/models/nope/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 404
        assert response.json()["error"] == "no model named 'nope': use one of bottle (GET /v1/models lists them)"
        response = client.post("/v1/models/bottle/predict", data={"field": "text"},
                               files=[("other", ("x.txt", b"", "text/plain"))])
        assert response.status_code == 400 and "x.txt is an empty upload" in response.json()["error"]
        response = client.post("/v1/models/bottle/predict", data={"field": "text"})
        assert response.status_code in (400, 415)
        assert _post_image(client, data).status_code == 200


def test_api_key_guards_v1_only(bottle_model, bottle_images):
    data = bottle_images[0].read_bytes()
    with TestClient(_app(bottle_model, api_key="s3cret")) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.get("/v1/models", headers=headers)
            assert response.status_code == 401 and "API key" in response.json()["error"]
            assert _post_image(client, data, headers=headers).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=right).status_code == 200
        assert _post_image(client, data, headers=right).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def _count_predict_calls(app):
    """Wrap the served detector's predict; returns the list of batch sizes it is called with."""
    det = app.state.models["bottle"].detector
    calls, predict = [], det.predict

    def counted(images, **kwargs):
        calls.append(len(images))
        return predict(images, **kwargs)

    det.predict = counted
    return calls


async def _post_together(url: str, images: list[bytes]) -> list:
    """One request per image, all sent at once."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*[
            client.post("/v1/models/bottle/predict", content=data, headers={"content-type": "image/png"})
            for data in images])


def test_requests_arriving_together_are_scored_in_one_predict_call(bottle_model, bottle_images, live):
    app = _app(bottle_model, max_batch=6, max_wait_ms=2000)
    images = [p.read_bytes() for p in bottle_images[:6]]

    with live(app) as url:
        calls = _count_predict_calls(app)
        responses = asyncio.run(_post_together(url, images))
        scored = httpx.get(url + "/v1/models").json()[0]["scored"]
    assert [r.status_code for r in responses] == [200] * 6
    assert calls == [6], f"six requests sent together were scored in batches of {calls}"
    assert scored == {"images": 6, "batches": 1}
    det = pyanom.load(bottle_model)
    expected = det.predict(open_images(*bottle_images[:6], image_size=128)).image_scores
    np.testing.assert_allclose([r.json()["results"][0]["image_score"] for r in responses], expected, rtol=1e-6)


def test_a_batch_waits_for_images_still_being_decoded(bottle_model, bottle_images, live, monkeypatch):
    """Without company in sight a batch leaves at once (max_wait_ms=0), but images already received
    and still being decoded join it: the clients answered by one batch come back together."""
    import pyanom.serve.app as served

    app = _app(bottle_model, max_batch=6, max_wait_ms=0)
    app.state.models["bottle"].batcher.seconds_per_image = 10.0  # a slow model: waiting for decodes pays
    order = iter(range(6))
    decode = served.decode
    monkeypatch.setattr(served, "decode", lambda *a, **kw: (time.sleep(0.2 * next(order)), decode(*a, **kw))[1])
    images = [p.read_bytes() for p in bottle_images[:6]]

    with live(app) as url:
        calls = _count_predict_calls(app)
        responses = asyncio.run(_post_together(url, images))
    assert [r.status_code for r in responses] == [200] * 6
    assert calls == [6], f"six requests decoded one after another were scored in batches of {calls}"


def test_a_full_queue_answers_503_with_retry_after(bottle_model, bottle_images, live):
    app = _app(bottle_model, max_batch=1, max_wait_ms=0, max_queue=2)
    model = app.state.models["bottle"]
    data = bottle_images[0].read_bytes()
    post = dict(content=data, headers={"content-type": "image/png"})

    def until(condition):
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    with live(app) as url:
        gate, predict = threading.Event(), model.detector.predict
        model.detector.predict = lambda images, **kw: (gate.wait(30), predict(images, **kw))[1]
        with httpx.Client(base_url=url, timeout=60) as client:
            results = []
            waiting = [threading.Thread(target=lambda: results.append(client.post("/v1/models/bottle/predict",
                                                                                   **post)))
                       for _ in range(3)]
            waiting[0].start()
            until(lambda: model.batcher.batches == 1)  # one image is being scored (held at the gate) ...
            for t in waiting[1:]:
                t.start()
            until(lambda: model.batcher.queued == 2)  # ... and two wait: the queue is full
            busy = client.post("/v1/models/bottle/predict", **post)
            gate.set()
            for t in waiting:
                t.join(60)
    assert busy.status_code == 503 and "busy" in busy.json()["error"]
    assert int(busy.headers["Retry-After"]) >= 1
    assert [r.status_code for r in results] == [200] * 3
