"""The service's faults, against `pyanom serve` running as its own process on a loopback port:
half a body then silence or a closed connection, slow clients, an image that makes the detector
raise, a burst over the queue bound, and the model file replaced on disk while serving.

The fault server (tests/serve/fault_server.py) is `pyanom serve` whose models raise on all-black
images and are slow on all-white ones; every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import shutil
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

import pyanom
from pyanom.data import open_images

BODY_TIMEOUT_S = 3
PREDICT = "/v1/models/bottle/predict"


def _png(value: int, size: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def faulty(bottle_model, tmp_path_factory, start_server):
    """The fault server: at most 4 images admitted, batches of 2, bodies within BODY_TIMEOUT_S."""
    root = tmp_path_factory.mktemp("faulty")
    server = start_server([f"bottle={bottle_model}", "--max-queue", "4", "--max-batch", "2",
                           "--body-timeout", str(BODY_TIMEOUT_S)], root / "serve.log", faults=True)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def good_png(bottle_images) -> bytes:
    return bottle_images[0].read_bytes()


def _head(port: int, length: int, path: str = PREDICT) -> socket.socket:
    """A connection that has sent a predict request's headers, announcing ``length`` body bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def _response(sock: socket.socket, timeout: float) -> tuple[int, dict, dict, bool]:
    """(status, headers, JSON body, whether the server then closed the connection), read within ``timeout``."""
    deadline, data = time.monotonic() + timeout, b""
    closed = False
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            if len(rest) >= int(headers.get("content-length", 0)):
                break
        left = deadline - time.monotonic()
        assert left > 0, f"no whole response in {timeout} s; got {data!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            closed = True
            assert sep, f"the server closed the connection without a response; got {data!r}"
            break
        data += chunk
    if not closed:
        sock.settimeout(5)
        try:
            closed = sock.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            closed = False
    return int(lines[0].split()[1]), headers, json.loads(rest[:int(headers["content-length"])]), closed


def _new_log(server, since: int, words: str, timeout: float = 15) -> str:
    """The server's log after offset ``since``, once it holds ``words`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while words not in server.log()[since:]:
        assert time.monotonic() < deadline, f"{words!r} not logged in {timeout} s:\n{server.log()[since:]}"
        time.sleep(0.1)
    return server.log()[since:]


def test_half_a_body_then_silence_gets_408_and_others_are_served_meanwhile(faulty, good_png):
    sock = _head(faulty.port, len(good_png))
    start = time.monotonic()
    sock.sendall(good_png[: len(good_png) // 2])
    other = httpx.post(faulty.url + PREDICT, content=good_png, headers={"content-type": "image/png"}, timeout=60)
    assert other.status_code == 200  # while the stalled client holds its connection
    status, headers, body, closed = _response(sock, BODY_TIMEOUT_S + 30)
    waited = time.monotonic() - start
    sock.close()
    assert status == 408, body
    assert body["error"] == (f"the request body did not arrive within {BODY_TIMEOUT_S} s (only {len(good_png) // 2} "
                             f"of {len(good_png)} bytes came): check the connection and send it again")
    assert closed and headers["connection"] == "close"  # the stalled connection is not kept
    assert waited >= BODY_TIMEOUT_S - 0.5


def test_half_a_body_then_gone_is_one_log_line_and_the_next_request_is_served(faulty, good_png):
    since = len(faulty.log())
    sock = _head(faulty.port, len(good_png))
    sock.sendall(good_png[: len(good_png) // 2])
    time.sleep(0.5)
    sock.close()
    log = _new_log(faulty, since, "closed the connection after")
    assert log.count("closed the connection after") == 1 and "nothing was scored" in log
    response = httpx.post(faulty.url + PREDICT, content=good_png, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200
    assert "Traceback" not in faulty.log()[since:]


def _trickle(port: int, body: bytes, pieces: int, pause: float) -> tuple[int, dict, float]:
    """Send ``body`` in ``pieces`` with ``pause`` seconds between them (stopping once an answer
    comes); (status, JSON body, seconds from the first byte to the answer)."""
    sock = _head(port, len(body))
    start, step = time.monotonic(), -(-len(body) // pieces)
    for i in range(0, len(body), step):
        if select.select([sock], [], [], 0)[0]:
            break  # answered before the body was complete
        sock.sendall(body[i:i + step])
        time.sleep(pause)
    status, _, answer, _ = _response(sock, BODY_TIMEOUT_S + 60)
    sock.close()
    return status, answer, time.monotonic() - start


def test_a_slow_client_is_served_a_slower_one_gets_408_and_neither_holds_up_the_others(faulty, good_png,
                                                                                      bottle_model, bottle_images):
    slow = {}
    thread = threading.Thread(target=lambda: slow.update(zip(("status", "body", "took"),
                                                             _trickle(faulty.port, good_png, 10, 0.15))))
    thread.start()
    time.sleep(0.3)
    other = httpx.post(faulty.url + PREDICT, content=good_png, headers={"content-type": "image/png"}, timeout=60)
    other_done = thread.is_alive()
    thread.join(BODY_TIMEOUT_S + 60)
    assert other.status_code == 200 and other_done, "a request sent during the trickle waited for it"
    assert slow["status"] == 200, slow
    expected = pyanom.load(bottle_model).predict(open_images(bottle_images[0], image_size=128)).image_scores[0]
    assert slow["body"]["results"][0]["image_score"] == pytest.approx(float(expected), rel=1e-5)

    status, body, took = _trickle(faulty.port, good_png, 40, 0.25)  # would need 10 s
    assert status == 408 and "did not arrive within" in body["error"]
    assert BODY_TIMEOUT_S - 0.5 <= took < 10


def test_an_image_that_breaks_the_detector_gets_500_with_a_request_id_logged_once(faulty, good_png):
    since = len(faulty.log())
    black = _png(0)
    response = httpx.post(faulty.url + PREDICT, content=black, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 500
    body = response.json()
    request_id = body["request_id"]
    assert response.headers["x-request-id"] == request_id
    assert body["error"] == (f"the detector failed on the uploaded image (RuntimeError: planted fault: this detector "
                             f"breaks on all-black images); it is logged as request {request_id}: check that the image "
                             "shows what this model inspects, and report the request id if it keeps failing")
    log = _new_log(faulty, since, "planted fault")
    assert log.count(request_id) == 1 and log.count("Traceback") == 1, log

    # among good images in one request (and one batch), only the bad one fails
    files = [("files", ("good.png", good_png, "image/png")), ("files", ("black.png", black, "image/png")),
             ("files", ("also-good.png", good_png, "image/png"))]
    results = httpx.post(faulty.url + PREDICT, files=files, timeout=60).json()["results"]
    assert [r["filename"] for r in results] == ["good.png", "black.png", "also-good.png"]
    assert results[1]["status"] == 500 and results[1]["image_score"] is None and "black.png" in results[1]["error"]
    assert results[0]["image_score"] == pytest.approx(results[2]["image_score"], rel=1e-5)
    assert httpx.post(faulty.url + PREDICT, content=good_png, headers={"content-type": "image/png"},
                      timeout=60).status_code == 200


async def _burst(url: str, body: bytes, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=count)) as client:
        return await asyncio.gather(*[client.post(PREDICT, content=body, headers={"content-type": "image/png"})
                                      for _ in range(count)])


def _scored(server) -> int:
    return httpx.get(server.url + "/v1/models", timeout=30).json()[0]["scored"]["images"]


def test_a_burst_over_the_queue_bound_gets_503_and_loses_nothing_accepted(faulty, good_png):
    white = _png(255)  # the fault server scores it slowly, so the queue fills
    before = _scored(faulty)
    responses = asyncio.run(_burst(faulty.url, white, 12))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"].startswith("model 'bottle' is busy: ")
            assert r.json()["error"].endswith(" images are waiting (at most 4); send this again in a few seconds")
        else:
            assert r.json()["results"][0]["label"] in ("good", "defect")
    assert _scored(faulty) - before == statuses.count(200)  # every accepted image was scored, and only those


def test_a_full_queue_refuses_before_reading_the_body(faulty, good_png):
    """Requests still sending their bodies count against the bound: a full service holds no more
    bodies in memory, and answers the next request at once, without waiting for its body."""
    stalled = [_head(faulty.port, len(good_png)) for _ in range(4)]
    for sock in stalled:
        sock.sendall(good_png[:1000])
    deadline = time.monotonic() + BODY_TIMEOUT_S
    while httpx.get(faulty.url + "/v1/models", timeout=30).json()[0]["queue"]["waiting"] < 4:
        assert time.monotonic() < deadline, "the stalled uploads were not counted"
        time.sleep(0.02)
    sock = _head(faulty.port, len(good_png))  # headers only: its body never comes
    status, headers, body, _ = _response(sock, BODY_TIMEOUT_S)
    assert status == 503 and int(headers["retry-after"]) >= 1 and "is busy" in body["error"]
    for s in (*stalled, sock):
        s.close()
    deadline = time.monotonic() + BODY_TIMEOUT_S + 30
    while httpx.get(faulty.url + "/v1/models", timeout=30).json()[0]["queue"]["waiting"] > 0:
        assert time.monotonic() < deadline, "the stalled uploads were never released"
        time.sleep(0.1)
    assert httpx.post(faulty.url + PREDICT, content=good_png, headers={"content-type": "image/png"},
                      timeout=60).status_code == 200


def _score(server, image: bytes) -> float:
    response = httpx.post(server.url + PREDICT, content=image, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["image_score"]


def test_a_model_file_replaced_on_disk_serves_on_until_an_atomic_reload(bottle_model, tmp_path, bottle_root,
                                                                        bottle_images, serve_process):
    from pyanom.data import open_dataset

    other = tmp_path / "other.pyanom"  # fitted on other images: other scores and threshold
    train = open_dataset(bottle_root, "train", image_size=128)
    det = pyanom.create("patchcore", image_size=128, coreset_ratio=0.05)
    det.fit(train.subset(range(5, 200, 25)), holdout_fraction=0.25, progress=False)
    det.save(other)
    served = tmp_path / "bottle.pyanom"
    shutil.copyfile(bottle_model, served)
    image = bottle_images[-1]
    old, new = (float(pyanom.load(p).predict(open_images(image, image_size=128)).image_scores[0])
                for p in (bottle_model, other))
    assert old != pytest.approx(new, rel=1e-3)
    server = serve_process(str(served))
    data = image.read_bytes()
    assert _score(server, data) == pytest.approx(old, rel=1e-5)

    shutil.copyfile(other, served)  # rewritten in place (same file), as `cp` does
    assert _score(server, data) == pytest.approx(old, rel=1e-5)
    with open(served, "r+b") as fh:
        fh.truncate(10)  # cut short
    assert _score(server, data) == pytest.approx(old, rel=1e-5)
    (info,) = httpx.get(server.url + "/v1/models").json()
    assert info["file_changed"] is True and info["reloads"] == 0 and info["source"] == str(served)

    refused = httpx.post(server.url + "/v1/models/bottle/reload", timeout=120)
    assert refused.status_code == 422
    assert refused.json()["error"].startswith(f"{served} could not be loaded (")
    assert refused.json()["error"].endswith("model 'bottle' keeps serving the model loaded before: fix or replace "
                                            "the file and ask for the reload again")
    assert _score(server, data) == pytest.approx(old, rel=1e-5)

    os.replace(shutil.copyfile(other, tmp_path / "incoming.pyanom"), served)  # replaced whole
    assert _score(server, data) == pytest.approx(old, rel=1e-5)
    scores, stop = [], threading.Event()

    def keep_asking():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                r = client.post(PREDICT, content=data, headers={"content-type": "image/png"})
                scores.append(r.json()["results"][0]["image_score"] if r.status_code == 200 else r.status_code)

    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        reloaded = httpx.post(server.url + "/v1/models/bottle/reload", timeout=120)
        after = len(scores)
        deadline = time.monotonic() + 60
        while len(scores) < after + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        asking.join(60)
    assert reloaded.status_code == 200, reloaded.text
    info = reloaded.json()
    assert info["threshold"] == pyanom.load(other).threshold and info["reloads"] == 1 and not info["file_changed"]
    # every answer came wholly from the old model or the new one, and none failed
    assert all(s == pytest.approx(old, rel=1e-5) or s == pytest.approx(new, rel=1e-5) for s in scores), scores
    assert scores[-1] == pytest.approx(new, rel=1e-5)
    assert _score(server, data) == pytest.approx(new, rel=1e-5)
    assert server.stop() == 0
