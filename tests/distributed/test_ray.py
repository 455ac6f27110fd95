"""pyanom on a local Ray cluster (two CPUs): the same shards as on one machine give the same
memory bank, a killed worker is retried, a sharded bank answers exact kNN, batch scoring resumes,
and variants fit one model each."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import pyanom
from pyanom.cli import main
from pyanom.data import open_dataset
from pyanom.ops import knn_scores

SHARDED = dict(image_size=64, coreset_ratio=0.1, coreset_mode="sharded", shard_images=5)


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of two CPUs on loopback (Ray is in the test extra)."""
    from pyanom.distributed import connect

    ray = connect(None, num_cpus=2)
    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def train(texture_set):
    return open_dataset(texture_set, "train", image_size=64).normal()


@contextmanager
def one_thread():
    """Ray runs each task and actor on one thread (OMP_NUM_THREADS=1); the local reference does
    the same, so float sums come in the same order and results compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_bank(train):
    """The sharded fit on one machine."""
    with one_thread():
        det = pyanom.create("patchcore", **SHARDED)
        det._fit(train, progress=False)
    return det.memory_bank


@pytest.mark.parametrize("k, parts", [(1, 3), (5, 2), (9, 4), (300, 3)])
def test_sharded_knn_equals_single_process_knn(cluster, k, parts):
    from pyanom.distributed.knn import ShardedMemoryBank

    g = torch.Generator().manual_seed(k)
    bank, queries = torch.randn(1000, 40, generator=g), torch.randn(77, 40, generator=g)
    bank[500] = bank[10]  # a duplicate across parts: ties go to the lower index
    queries[0] = bank[10]
    dist, index = ShardedMemoryBank(bank, parts).knn(queries, k)
    ref_dist, ref_index = knn_scores(queries, bank, k)
    # The same distances to float32 rounding: each part's distance GEMM is blocked for its own
    # shape, so the last bit may differ from the whole bank's; at distance 0 (the duplicate) the
    # ||q||^2 - 2 q.b + ||b||^2 form leaves up to ~sqrt(eps) * ||q|| (0.003 here).
    torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-2)
    # The same entries, except where distances tie to that rounding (a duplicate, or among 300
    # of 1000 random points): entries clearly inside the k nearest are the same set.
    for d, i, rd, ri in zip(dist, index, ref_dist, ref_index):
        inside = rd < rd[-1] - 1e-4
        assert set(i[d < rd[-1] - 1e-4].tolist()) == set(ri[inside].tolist())
    assert index[0, :2].tolist() == [10, 500][:k]


def test_fit_on_ray_equals_the_local_sharded_fit(cluster, train, local_bank):
    det = pyanom.create("patchcore", **SHARDED).use_ray()
    det._fit(train, progress=False)
    assert det.memory_plan.mode == "sharded" and len(det.memory_plan.shards) == 5
    assert torch.equal(det.memory_bank, local_bank)


def _running_shard_tasks() -> list[int]:
    """PIDs of Ray workers executing a shard right now (Ray names the process after its task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ray::_shard_rows" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def test_a_worker_killed_mid_fit_is_retried_and_the_result_unchanged(cluster, texture_set):
    # Larger images and more shards than above, so that shards stay running long enough to be caught.
    settings = dict(SHARDED, image_size=128, shard_images=3)
    train = open_dataset(texture_set, "train", image_size=128).normal()
    with one_thread():
        local = pyanom.create("patchcore", **settings)
        local._fit(train, progress=False)
    det = pyanom.create("patchcore", **settings).use_ray()
    fit = threading.Thread(target=det._fit, args=(train, False))
    fit.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and fit.is_alive() and time.monotonic() < deadline:
        running = _running_shard_tasks()
        if running:
            os.kill(running[0], signal.SIGKILL)
            killed = running[0]
        time.sleep(0.005)
    fit.join(timeout=300)
    assert killed is not None, "no shard task was seen running: nothing was killed"
    assert torch.equal(det.memory_bank, local.memory_bank)


def test_predict_on_ray_writes_as_it_goes_and_resumes(cluster, texture_set, tmp_path):
    model = tmp_path / "m.pyanom"
    assert main(["fit", "patchcore", str(texture_set), "--out", str(model), "--set", "image_size=64",
                 "--set", "coreset_ratio=0.05"]) == 0
    out = tmp_path / "out"
    assert main(["predict", str(model), str(texture_set / "test"), "--ray", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 12
    # Lose half the rows, as a crash would: the rerun scores only those.
    kept = rows[:5]
    with open(out / "scores.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    from pyanom.distributed.score import score_on_ray

    paths = sorted((texture_set / "test").rglob("*.png"))
    scored, failed = score_on_ray(model, paths, out / "scores.csv", progress=False)
    assert (scored, failed) == (7, 0)
    again = {r["path"]: float(r["score"]) for r in csv.DictReader((out / "scores.csv").open())}
    assert len(again) == 12
    det = pyanom.load(model)
    expected = det.predict(pyanom.data.open_images(*paths, image_size=det.image_size)).image_scores
    for path, score in zip(paths, expected.tolist()):
        assert again[str(path)] == pytest.approx(score, rel=1e-5)


@pytest.mark.parametrize("on_ray", [False, True])
def test_each_variant_gets_its_own_model(cluster, texture_set, tmp_path, capsys, on_ray):
    root = tmp_path / "variants"
    for name in ("red", "blue"):
        shutil.copytree(texture_set, root / name)
    (root / "broken").mkdir()  # no images: a failed row, the others still fit
    argv = ["fit", "patchcore", str(root), "--each", "--out", str(tmp_path / "models"), "--set", "image_size=64",
            "--set", "coreset_ratio=0.05"] + (["--ray"] if on_ray else [])
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert (tmp_path / "models" / "red.pyanom").is_file() and (tmp_path / "models" / "blue.pyanom").is_file()
    table = printed[printed.index("variant"):]
    assert "red" in table and "blue" in table and "broken" in table and "error" in table
