"""A small PatchCore fitted on real bottle images, and uvicorn servers on loopback ports: in a
thread of the test process (live), or `pyanom serve` as a process of its own (serve_process)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def bottle_root(shared_data):
    return shared_data / "mvtec" / "bottle"


@pytest.fixture(scope="session")
def bottle_model(bottle_root, tmp_path_factory):
    """PatchCore at 128 px on 20 good bottle images (a few seconds): fast, and real."""
    import pyanom
    from pyanom.data import open_dataset

    train = open_dataset(bottle_root, "train", image_size=128)
    det = pyanom.create("patchcore", image_size=128, coreset_ratio=0.05)
    det.fit(train.subset(range(0, 200, 10)), holdout_fraction=0.25, progress=False)
    return det.save(tmp_path_factory.mktemp("model") / "bottle.pyanom")


@pytest.fixture(scope="session")
def bottle_images(bottle_root):
    """Two images of each test folder (good and every defect type)."""
    return [p for folder in sorted((bottle_root / "test").iterdir()) for p in sorted(folder.glob("*.png"))[:2]]


@contextlib.contextmanager
def live_server(app):
    """Run the app on a real uvicorn bound to 127.0.0.1 (a free port) in a thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def live():
    """live_server, for tests: `with live(app) as url: ...`."""
    return live_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`pyanom serve` running as its own process; its output goes to a file (``log()`` reads it)."""

    def __init__(self, args: list[str], log_path: Path, *, faults: bool = False, ready_s: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        program = [str(HERE / "fault_server.py")] if faults else ["-m", "pyanom.cli"]
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-P", *program, "serve", *args, "--port", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        self._wait_ready(ready_s)

    def _wait_ready(self, seconds: float) -> None:
        import httpx

        deadline = time.monotonic() + seconds
        while True:
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready in {seconds} s:\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit status (killed past ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def start_server():
    """start_server(args, log_path, faults=False) -> a ServeProcess (its user stops it)."""
    return ServeProcess


@pytest.fixture
def serve_process(tmp_path):
    """serve_process(*args, faults=False) -> a ServeProcess, stopped at the end of the test."""
    started = []

    def start(*args: str, faults: bool = False) -> ServeProcess:
        started.append(ServeProcess(list(args), tmp_path / f"serve-{len(started)}.log", faults=faults))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def no_serving(monkeypatch) -> dict:
    """uvicorn.Server.run records what it was given and returns at once (as if started and
    stopped); the dict it fills: app, address."""
    import uvicorn

    started = {}

    def run(server, sockets=None):
        server.started = True
        started.update(app=server.config.app, address=sockets[0].getsockname())

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return started
