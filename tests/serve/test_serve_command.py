"""`pyanom serve` as an operator runs it: start-up errors, the exposure warning, a real process
on a loopback port, and a graceful stop that lets the request in flight finish."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import pyanom
from pyanom.cli import main
from pyanom.data import open_images
from pyanom.serve.run import is_loopback, model_names


def test_a_model_that_fails_to_load_stops_start_up_with_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "missing.pyanom"
    assert main(["serve", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"pyanom serve: error: no such model file: {missing}"
    corrupt = tmp_path / "corrupt.pyanom"
    corrupt.write_bytes(b"not a model")
    assert main(["serve", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pyanom serve: error: {corrupt} is not a readable pyanom archive") and "\n" not in err


def test_help_states_each_command_s_own_pixel_limit(capsys):
    from pyanom.data.files import DEFAULT_MAX_PIXELS
    from pyanom.serve import ServeSettings

    for command, limit in (("serve", ServeSettings.max_pixels), ("predict", DEFAULT_MAX_PIXELS)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"(default {limit:,};" in " ".join(capsys.readouterr().out.split())


def test_model_names_and_loopback():
    assert model_names(["a/bottle.pyanom", "cap=b/x.pyanom"]) == {"bottle": Path("a/bottle.pyanom"),
                                                                 "cap": Path("b/x.pyanom")}
    with pytest.raises(ValueError, match="two models are named 'm'"):
        model_names(["a/m.pyanom", "b/m.pyanom"])
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")


def test_no_key_beyond_loopback_warns_at_start(bottle_model, monkeypatch, capsys):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(kw))  # bind nothing
    monkeypatch.delenv("PYANOM_API_KEY", raising=False)
    assert main(["serve", str(bottle_model), "--host", "0.0.0.0"]) == 0
    assert started["host"] == "0.0.0.0"
    assert "warning: listening on 0.0.0.0 without an API key" in capsys.readouterr().err
    monkeypatch.setenv("PYANOM_API_KEY", "k")
    assert main(["serve", str(bottle_model), "--host", "0.0.0.0"]) == 0
    assert main(["serve", str(bottle_model)]) == 0
    monkeypatch.delenv("PYANOM_API_KEY")
    assert main(["serve", str(bottle_model)]) == 0
    assert "warning" not in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_scores_like_the_library_and_stops_gracefully(bottle_model, bottle_images):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # a long batching wait keeps the last request in flight while the server is told to stop
    proc = subprocess.Popen([sys.executable, "-m", "pyanom.cli", "serve", str(bottle_model), "--port", str(port),
                             "--max-wait-ms", "1500", "--api-key", "k"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    auth = {"Authorization": "Bearer k", "content-type": "image/png"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 120 s"
            time.sleep(0.2)
        image = bottle_images[-1]
        expected = float(pyanom.load(bottle_model).predict(open_images(image, image_size=128)).image_scores[0])
        assert httpx.post(f"{url}/v1/models/bottle/predict", content=image.read_bytes()).status_code == 401

        in_flight = {}
        thread = threading.Thread(target=lambda: in_flight.update(response=httpx.post(
            f"{url}/v1/models/bottle/predict", content=image.read_bytes(), headers=auth, timeout=60)))
        thread.start()
        time.sleep(0.5)  # the request is waiting in the batcher
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    response = in_flight["response"]
    assert response.status_code == 200
    # Another process may run another number of threads, so float sums differ in their last bits:
    # equal to 1e-6 of the score (scores here are 10-60).
    assert response.json()["results"][0]["image_score"] == pytest.approx(expected, rel=1e-6)
    log = proc.stdout.read()
    assert "loaded bottle: patchcore" in log and "Shutting down" in log


def test_the_core_and_the_cli_do_not_import_the_serve_extra():
    code = ("import sys, pyanom, pyanom.cli, pyanom.report, pyanom.serve; pyanom.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
