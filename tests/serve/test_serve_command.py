"""`pyanom serve` as an operator runs it: start-up errors, the exposure warning, a real process
on a loopback port, and a graceful stop that lets the request in flight finish."""

from __future__ import annotations

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


HINT = "give a .pyanom file written by `pyanom fit` or a folder written by `pyanom export`"


def test_a_model_that_fails_to_load_stops_start_up_with_one_line_that_says_what_to_do(tmp_path, capsys):
    missing = tmp_path / "missing.pyanom"
    assert main(["serve", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (f"pyanom serve: error: model 'missing' ({missing}) cannot be served: "
                                               f"no such model file: {missing}; {HINT}")
    corrupt = tmp_path / "corrupt.pyanom"
    corrupt.write_bytes(b"not a model")
    assert main(["serve", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pyanom serve: error: model 'corrupt' ({corrupt}) cannot be served: {corrupt} is not a "
                          "readable pyanom archive") and err.endswith(HINT) and "\n" not in err
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pyanom serve: error: model '{tmp_path.name}' ({tmp_path}) cannot be served: {tmp_path} is "
                          "a folder but not an exported model") and err.endswith(HINT)


def test_a_port_in_use_stops_start_up_with_one_line_that_says_what_to_do(bottle_model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(bottle_model), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"pyanom serve: error: cannot listen on 127.0.0.1:{port} (Address already in use): another program (or another "
        "pyanom serve) uses that port, or it is not an address of this machine; stop that program or choose another "
        "--port or --host")


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


def test_no_key_beyond_loopback_warns_at_start(bottle_model, monkeypatch, capsys, no_serving):
    started = no_serving
    monkeypatch.delenv("PYANOM_API_KEY", raising=False)
    assert main(["serve", str(bottle_model), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert started["address"][0] == "0.0.0.0"
    assert "warning: listening on 0.0.0.0 without an API key" in capsys.readouterr().err
    monkeypatch.setenv("PYANOM_API_KEY", "k")
    assert main(["serve", str(bottle_model), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert main(["serve", str(bottle_model), "--port", "0"]) == 0
    monkeypatch.delenv("PYANOM_API_KEY")
    assert main(["serve", str(bottle_model), "--port", "0"]) == 0
    assert started["address"][0] == "127.0.0.1"
    assert "warning" not in capsys.readouterr().err


def test_real_server_scores_like_the_library_and_sigterm_drains_then_exits_0(bottle_model, bottle_images,
                                                                             serve_process):
    # a long batching wait keeps the requests in flight while the server is told to stop
    server = serve_process(str(bottle_model), "--max-wait-ms", "5000", "--api-key", "k")
    auth = {"Authorization": "Bearer k", "content-type": "image/png"}
    images = bottle_images[-3:]
    expected = pyanom.load(bottle_model).predict(open_images(*images, image_size=128)).image_scores.tolist()
    assert httpx.post(f"{server.url}/v1/models/bottle/predict", content=images[0].read_bytes()).status_code == 401

    answers = {}

    def ask(i):
        answers[i] = httpx.post(f"{server.url}/v1/models/bottle/predict", content=images[i].read_bytes(),
                                headers=auth, timeout=60)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/v1/models", headers=auth).json()[0]["queue"]["waiting"] < 3:
        assert time.monotonic() < deadline, "the three requests never reached the batcher"
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)  # while the three wait in the batcher
    for t in threads:
        t.join(60)
    assert server.proc.wait(60) == 0  # a stop asked for and drained is a clean exit
    assert [answers[i].status_code for i in range(3)] == [200] * 3
    # Another process may run another number of threads, so float sums differ in their last bits:
    # equal to 1e-6 of the score (scores here are 10-60).
    assert [answers[i].json()["results"][0]["image_score"] for i in range(3)] == pytest.approx(expected, rel=1e-5)
    log = server.log()
    assert "loaded bottle: patchcore" in log and "Shutting down" in log and "Traceback" not in log


def test_the_core_and_the_cli_do_not_import_the_serve_extra():
    code = ("import sys, pyanom, pyanom.cli, pyanom.report, pyanom.serve; pyanom.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
