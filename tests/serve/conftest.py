"""A small PatchCore fitted on real bottle images, and a uvicorn server on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest



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
