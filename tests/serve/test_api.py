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
    for r in results:
        heat = Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"])))
        assert heat.format == "PNG" and heat.size == (128, 128)


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


BAD = [  # (what, data, content type, query, status, words in the message)
    ("not an image", lambda: b"GIF? no, just text", "image/png", "", 415, "not an image"),
    ("empty", lambda: b"", "image/png", "", 400, "empty upload"),
    ("too many bytes", lambda: b"\x89PNG" + b"\0" * 700_000, "image/png", "", 413, "over the limit of 600000 bytes"),
    ("decompression bomb", lambda: _bomb_png(8000, 8000), "image/png", "", 413,
     "8000x8000 = 64000000 pixels is over the limit of 40000000 pixels (refused before decoding)"),
    ("bomb past Pillow's own limit", lambda: _bomb_png(14000, 14000), "image/png", "", 413, "refused before decoding"),
    ("stretched", lambda: _png(900, 100), "image/png", "", 422, "stretching it 9.0x"),
    ("wrong content type", lambda: b"...", "text/plain", "", 415, "content type 'text/plain'"),
    ("unknown heatmap format", lambda: _png(64, 64), "image/png", "?heatmap=jpg", 400, "heatmap must be 'png'"),
]


@pytest.mark.parametrize("what,data,ctype,query,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_that_says_why_and_the_service_keeps_serving(
        bottle_model, bottle_images, what, data, ctype, query, status, words):
    with TestClient(_app(bottle_model, max_bytes=600_000)) as client:
        response = _post_image(client, data(), ctype=ctype, query=query)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
        assert _post_image(client, _png(300, 300)).status_code == 200


def test_truncated_image_and_other_request_errors(bottle_model, bottle_images):
    data = bottle_images[0].read_bytes()
    with TestClient(_app(bottle_model)) as client:
        response = _post_image(client, data[: len(data) // 2])
        assert response.status_code == 400 and "truncated" in response.json()["error"]
        response = client.post("/v1/models/nope/predict", content=data, headers={"content-type": "image/png"})
        assert response.status_code == 404 and "no model named 'nope'" in response.json()["error"]
        response = client.post("/v1/models/bottle/predict", data={"field": "text"},
                               files=[("other", ("x.txt", b"", "text/plain"))])
        assert response.status_code == 400 and "empty upload" in response.json()["error"]
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
    app.state.models["bottle"].batcher._seconds_per_image = 10.0  # a slow model: waiting for decodes pays
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
    with live(app) as url:
        gate, predict = threading.Event(), model.detector.predict
        model.detector.predict = lambda images, **kw: (gate.wait(30), predict(images, **kw))[1]
        with httpx.Client(base_url=url, timeout=60) as client:
            waiting = [threading.Thread(target=lambda: results.append(client.post("/v1/models/bottle/predict",
                                                                                   **post)))
                       for _ in range(3)]
            results = []
            for t in waiting:
                t.start()
            deadline = time.monotonic() + 30  # one image is being scored (held at the gate), two wait
            while model.batcher.queued < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            busy = client.post("/v1/models/bottle/predict", **post)
            gate.set()
            for t in waiting:
                t.join(60)
    assert busy.status_code == 503 and "busy" in busy.json()["error"]
    assert int(busy.headers["Retry-After"]) >= 1
    assert [r.status_code for r in results] == [200] * 3
