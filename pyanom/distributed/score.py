"""Scoring a large folder across a Ray cluster: chunks of images go to workers (the model loaded
once per worker process), rows are appended to the results file as chunks finish, and a rerun
after a failure scores only the images the file does not hold yet."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from tqdm.auto import tqdm

from pyanom.distributed import connect

COLUMNS = ["path", "score", "defect", "decided_by", "error"]


@lru_cache(maxsize=2)
def _worker_model(model: str):
    import pyanom

    return pyanom.load(model)


def _score_chunk(model: str, paths: list[str]) -> list[list]:
    """Rows for a chunk; an unreadable image gets its error instead of a score."""
    import torch

    from pyanom.data import ImageList
    from pyanom.data.files import checked_size

    torch.set_num_threads(1)
    det = _worker_model(model)
    rows, readable = {}, []
    for path in paths:
        try:
            checked_size(Path(path))
            readable.append(path)
        except (ValueError, OSError) as err:
            rows[path] = [path, "", "", "", str(err)]
    if readable:
        pred = det.predict(ImageList(readable, image_size=det.image_size, validate=False))
        for i, path in enumerate(readable):
            rows[path] = [path, f"{float(pred.image_scores[i]):.6g}", int(pred.labels[i]), pred.decided_by, ""]
    return [rows[p] for p in paths]


def done_paths(results: Path) -> set[str]:
    """The images a results file already holds a row for (scored or failed)."""
    if not results.is_file():
        return set()
    with open(results, newline="") as fh:
        return {row["path"] for row in csv.DictReader(fh) if row.get("path")}


def score_on_ray(model: str | Path, paths: list[Path], results: str | Path, *, address: str | None = None,
                 num_cpus: int | None = None, chunk: int = 64, progress: bool = True) -> tuple[int, int]:
    """Score ``paths`` with the model file ``model`` on a Ray cluster, appending rows to the CSV
    ``results`` as chunks finish; images already in it are skipped (resume). Returns (scored now,
    failed now)."""
    ray = connect(address, num_cpus=num_cpus)
    results = Path(results)
    done = done_paths(results)
    todo = [str(p) for p in paths if str(p) not in done]
    task = ray.remote(num_cpus=1, max_retries=3)(_score_chunk)
    pending = [task.remote(str(Path(model).resolve()), todo[i:i + chunk]) for i in range(0, len(todo), chunk)]
    fresh = not results.is_file() or results.stat().st_size == 0
    scored = failed = 0
    with open(results, "a", newline="") as fh, tqdm(total=len(todo), desc="scoring on ray",
                                                     disable=not progress) as bar:
        writer = csv.writer(fh)
        if fresh:
            writer.writerow(COLUMNS)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows = ray.get(ready[0])
            writer.writerows(rows)
            fh.flush()  # a crash after this loses no finished chunk
            failed += sum(1 for r in rows if r[-1])
            scored += len(rows)
            bar.update(len(rows))
    return scored, failed
