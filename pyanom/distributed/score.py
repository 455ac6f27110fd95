"""Scoring a large folder across a Ray cluster: chunks of images go to workers (the model loaded
once per worker process), results are written as chunks finish, and a rerun after a failure
scores only the images the results do not hold yet.

Results are Parquet when pyarrow is present, CSV otherwise. A Parquet file is unreadable until
its footer is written, so results go to a folder of part files, one per finished chunk, each
written to a temporary name and renamed (readable as one table: pyarrow.dataset or
pandas.read_parquet of the folder); CSV rows are appended to one file and flushed.

A model whose memory bank exceeds its memory_budget_mb (or bank_parts > 0) has its bank read by
actors from the model file (pyanom.distributed.knn); workers then load the model without the
bank and query the actors, instead of each holding a copy.
"""

from __future__ import annotations

import csv
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from pyanom.distributed.cluster import connect

COLUMNS = ["path", "score", "defect", "decided_by", "error"]
FORMATS = ("auto", "csv", "parquet")


@lru_cache(maxsize=2)
def _worker_model(model: str, without_bank: bool):
    import pyanom

    from pyanom.memory import MemoryBankDetector

    return pyanom.load(model, skip=(MemoryBankDetector.MEMORY_BANK,) if without_bank else ())


def _score_chunk(model: str, paths: list[str], bank=None) -> list[list]:
    """Rows for a chunk; an unreadable image gets its error instead of a score."""
    import torch

    from pyanom.runs import score_files

    torch.set_num_threads(1)
    det = _worker_model(model, bank is not None)
    if bank is not None:
        det.attach_memory_bank(bank)
    errors, good, pred = score_files(det, [Path(p) for p in paths])
    rows = {str(p): [str(p), None, None, None, message] for p, message in errors.items()}
    for i, path in enumerate(good):
        rows[str(path)] = [str(path), float(pred.image_scores[i]), int(pred.labels[i]), pred.decided_by, None]
    return [rows[p] for p in paths]


def has_parquet() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def results_path(out: Path, format: str = "auto") -> Path:
    """Where the results go in the folder ``out``: scores.csv, or the folder scores.parquet/."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "auto":
        format = "parquet" if has_parquet() else "csv"
    return out / ("scores.parquet" if format == "parquet" else "scores.csv")


class _CsvResults:
    def __init__(self, path: Path):
        self.path = path

    def done(self) -> set[str]:
        if not self.path.is_file():
            return set()
        with open(self.path, newline="") as fh:
            return {row["path"] for row in csv.DictReader(fh) if row.get("path")}

    def __enter__(self):
        fresh = not self.path.is_file() or self.path.stat().st_size == 0
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.writer(self.fh)
        if fresh:
            self.writer.writerow(COLUMNS)
        return self

    def write(self, rows: list[list]) -> None:
        self.writer.writerows([[p, "" if s is None else f"{s:.6g}", "" if d is None else d, by or "", err or ""]
                               for p, s, d, by, err in rows])
        self.fh.flush()  # a crash after this loses no finished chunk

    def __exit__(self, *exc):
        self.fh.close()


class _ParquetResults:
    def __init__(self, path: Path):
        self.path = path

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []

    def done(self) -> set[str]:
        import pyarrow.parquet as pq

        return {p for part in self._parts() for p in pq.read_table(part, columns=["path"]).column("path").to_pylist()}

    def __enter__(self):
        self.path.mkdir(exist_ok=True)
        parts = self._parts()
        self.next = 1 + max((int(p.stem.split("-")[1]) for p in parts), default=-1)
        return self

    def write(self, rows: list[list]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("path", pa.string()), ("score", pa.float64()), ("defect", pa.int8()),
                            ("decided_by", pa.string()), ("error", pa.string())])
        table = pa.Table.from_pylist([dict(zip(COLUMNS, r)) for r in rows], schema=schema)
        final = self.path / f"part-{self.next:06d}.parquet"
        tmp = self.path / f".{final.name}.tmp"  # a crash mid-write leaves no part that looks finished
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self.next += 1

    def __exit__(self, *exc):
        pass


def _results(path: Path):
    return _ParquetResults(path) if path.suffix == ".parquet" else _CsvResults(path)


def done_paths(results: Path) -> set[str]:
    """The images a results file (or Parquet folder) already holds a row for (scored or failed)."""
    return _results(Path(results)).done()


def score_on_ray(model: str | Path, paths: list[Path], results: str | Path, *, address: str | None = None,
                 num_cpus: int | None = None, chunk: int = 64, bank_parts: int | None = None,
                 progress: bool = True) -> tuple[int, int]:
    """Score ``paths`` with the model file ``model`` on a Ray cluster, writing rows to
    ``results`` (scores.csv, or a scores.parquet folder: results_path) as chunks finish; images
    already there are skipped (resume). ``bank_parts``: actors holding a memory bank (0: a
    copy in every worker; None: as many as keep each within the model's memory_budget_mb when
    the bank exceeds it, else 0). Returns (scored now, failed now)."""
    ray = connect(address, num_cpus=num_cpus)
    model, results = str(Path(model).resolve()), Path(results)
    bank = _bank_on_actors(model, bank_parts, address, num_cpus)
    store = _results(results)
    done = store.done()
    todo = [str(p) for p in paths if str(p) not in done]
    task = ray.remote(num_cpus=1, max_retries=3)(_score_chunk)
    pending = [task.remote(model, todo[i:i + chunk], bank) for i in range(0, len(todo), chunk)]
    scored = failed = 0
    with store, tqdm(total=len(todo), desc="scoring on ray", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows = ray.get(ready[0])
            store.write(rows)
            failed += sum(1 for r in rows if r[-1])
            scored += len(rows)
            bar.update(len(rows))
    return scored, failed


def _bank_on_actors(model: str, bank_parts: int | None, address, num_cpus):
    """The model's memory bank on actors, or None where workers should each load it."""
    from safetensors import safe_open

    from pyanom.archive import read_header
    from pyanom.distributed.knn import ShardedMemoryBank, parts_for
    from pyanom.memory import MemoryBankDetector

    if bank_parts == 0:
        return None
    name = MemoryBankDetector.MEMORY_BANK
    with safe_open(model, framework="pt") as f:
        shape = f.get_slice(name).get_shape() if name in f.keys() else None
    if shape is None:
        if bank_parts:
            raise ValueError(f"{model}: bank_parts needs a memory-bank model (patchcore, sa_patchcore)")
        return None
    if bank_parts is None:
        budget_mb = read_header(model)["config"].get("memory_budget_mb")
        bank_parts = parts_for(shape[0] * shape[1] * 4, budget_mb << 20) if budget_mb else 1
        if bank_parts == 1:
            return None
    return ShardedMemoryBank.from_archive(model, name, bank_parts, address=address, num_cpus=num_cpus)


def predict_folder_on_ray(model, images: Sequence, out, *, recursive: bool = True, address: str | None = None,
                          bank_parts: int | None = None, say=print) -> tuple[int, int, int, Path]:
    """`pyanom predict --ray`: image files and folders scored across a Ray cluster into ``out``
    (scores.parquet/ or scores.csv, rows appended as chunks finish; a rerun scores only the images
    not there yet; no heatmaps). Returns (scored now, already there, could not be read, results)."""
    import pyanom
    from pyanom.data.files import find_images
    from pyanom.memory import MemoryBankDetector
    from pyanom.outputs import OutputFolder
    from pyanom.runs import predict_inputs, sayer

    say = sayer(say)
    if bank_parts is not None and bank_parts < 0:
        raise ValueError("--bank-parts: give a number >= 0, together with --ray")
    pyanom.load(model, skip=(MemoryBankDetector.MEMORY_BANK,))  # a bad model file fails here, before the cluster
    out = Path(out)
    reading = predict_inputs(model, images)
    reading.check(out, "--out")
    out_dir = out.resolve()
    paths = [p for p in find_images(*images, recursive=recursive) if out_dir not in p.resolve().parents]
    results = results_path(out)
    OutputFolder(out, reading=reading).start([results.name], keep=True)  # a rerun resumes: earlier results stay
    scored, failed = score_on_ray(model, paths, results, address=address, bank_parts=bank_parts)
    how = " (read it with pandas.read_parquet: pip install 'pyanom[parquet]')" if results.suffix == ".parquet" else ""
    say(f"wrote {results} ({scored} images scored now, {len(paths) - scored} already there; "
        f"{failed} could not be read){how}")
    return scored, len(paths) - scored, failed, results
