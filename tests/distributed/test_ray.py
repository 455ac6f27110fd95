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
from pyanom.distributed import shard_memory_bank, use_ray
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


@pytest.mark.parametrize("parts", [2, 3])
def test_sharded_knn_equals_single_process_knn(cluster, parts):
    from pyanom.distributed.knn import ShardedMemoryBank

    g = torch.Generator().manual_seed(parts)
    bank, queries = torch.randn(1000, 40, generator=g), torch.randn(77, 40, generator=g)
    bank[500] = bank[10]  # a duplicate across parts: ties go to the lower index
    queries[0] = bank[10]
    sharded = ShardedMemoryBank(bank, parts)  # one set of actors (a process each) for every k
    for k in (1, 5, 9, 300):
        dist, index = sharded.knn(queries, k)
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
    rows = torch.tensor([[999, 0], [500, 333]])
    assert torch.equal(sharded[rows], bank[rows])  # rows fetched from the parts that hold them


def test_fit_on_ray_equals_the_local_sharded_fit(cluster, train, local_bank):
    det = use_ray(pyanom.create("patchcore", **SHARDED))
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
    det = use_ray(pyanom.create("patchcore", **settings))
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


@pytest.fixture(scope="module")
def models(texture_set, tmp_path_factory):
    """A fitted patchcore and sa_patchcore model file each (64 px: banks of a few hundred rows)."""
    folder = tmp_path_factory.mktemp("models")
    files = {}
    for name in ("patchcore", "sa_patchcore"):
        files[name] = folder / f"{name}.pyanom"
        assert main(["fit", name, str(texture_set), "--out", str(files[name]), "--set", "image_size=64",
                     "--set", "coreset_ratio=0.05"]) == 0
    return files


@pytest.mark.parametrize("name, parts, from_file", [("patchcore", 3, False), ("sa_patchcore", 2, True)])
def test_scores_against_a_bank_on_actors_equal_the_local_scores(cluster, models, texture_set, name, parts,
                                                                 from_file):
    from pyanom.distributed import ShardedMemoryBank, load_sharded

    test = open_dataset(texture_set, "test", image_size=64)
    local = pyanom.load(models[name])
    expected = local.predict(test)
    # From a model file, each actor reads its own rows and this process none of them.
    det = load_sharded(models[name], parts) if from_file else shard_memory_bank(pyanom.load(models[name]), parts)
    assert isinstance(det.memory_bank, ShardedMemoryBank) and len(det.memory_bank.parts) == parts
    pred = det.predict(test)
    # Exact top-k merged from the parts: to float32 rounding, with the reweighting's
    # neighbourhood (k = num_neighbors) found and fetched through the actors too.
    torch.testing.assert_close(pred.image_scores, expected.image_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.anomaly_maps, expected.anomaly_maps, rtol=1e-5, atol=1e-5)
    assert torch.equal(pred.labels, expected.labels)
    assert torch.equal(det.memory_bank.gather(), local.memory_bank)  # what save writes


def _rows(results: Path) -> list[dict]:
    """The results' rows, as strings, from scores.csv or a scores.parquet folder."""
    if results.suffix == ".csv":
        return list(csv.DictReader(results.open()))
    import pyarrow.parquet as pq

    table = pq.read_table(results)  # the folder of part files, as one table
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in table.to_pylist()]


def _lose_half(results: Path, rows: list[dict]) -> None:
    """Keep the first 5 rows only, as a crash would leave them."""
    if results.suffix == ".csv":
        with open(results, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[:5])
        return
    import pyarrow.parquet as pq

    keep = {r["path"] for r in rows[:5]}
    for part in results.glob("part-*.parquet"):
        table = pq.read_table(part)
        mask = [p in keep for p in table.column("path").to_pylist()]
        if any(mask):
            pq.write_table(table.filter(mask), part)
        else:
            part.unlink()
    (results / ".part-000099.parquet.tmp").write_bytes(b"PAR1 half-written")  # a crash mid-write


def test_predict_on_ray_writes_parquet_as_it_goes(cluster, models, texture_set, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(models["patchcore"]), str(texture_set / "test"), "--ray", "--out", str(out)]) == 0
    parts = sorted((out / "scores.parquet").glob("part-*.parquet"))
    assert len(parts) == 1 and not (out / "scores.csv").exists()  # 12 images: one chunk
    assert len(_rows(out / "scores.parquet")) == 12


def test_bank_parts_is_refused_without_ray(models, texture_set, tmp_path, capsys):
    argv = ["predict", str(models["patchcore"]), str(texture_set / "test"), "--out", str(tmp_path), "--bank-parts", "2"]
    assert main(argv) == 2
    assert "--bank-parts: give a number >= 0, together with --ray" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, bank_parts", [("csv", 0), ("parquet", 2)])
def test_predict_on_ray_resumes_without_rescoring(cluster, models, texture_set, tmp_path, fmt, bank_parts):
    from pyanom.distributed.score import results_path, score_on_ray

    model = models["patchcore"]
    paths = sorted((texture_set / "test").rglob("*.png"))
    results = results_path(tmp_path, fmt)
    # Chunks of 4: three part files (parquet) or three flushed appends (csv).
    assert score_on_ray(model, paths, results, chunk=4, bank_parts=bank_parts, progress=False) == (12, 0)
    if fmt == "parquet":
        assert len(list(results.glob("part-*.parquet"))) == 3
    rows = _rows(results)
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    _lose_half(results, rows)
    assert score_on_ray(model, paths, results, chunk=4, bank_parts=bank_parts, progress=False) == (7, 0)
    assert score_on_ray(model, paths, results, chunk=4, bank_parts=bank_parts, progress=False) == (0, 0)
    again = {r["path"]: float(r["score"]) for r in _rows(results)}
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
