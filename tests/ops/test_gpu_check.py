"""benchmarks/gpu/check.sh, the one-call GPU check of issue 30, in its --dry-run: every step that
needs no GPU (argument parsing, the CMake configuration with CUDA, the collection of the CUDA
tests, each benchmark's code on CPU tensors of toy sizes, the JSON and the table), so that the
script is known to work before a GPU's few minutes are spent on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "check.sh"
STEPS = ["build", "env", "tests", "sanitize", "coreset", "knn", "attention", "concentrated", "patchcore"]
BENCHMARKS = ["coreset", "knn", "attention", "concentrated", "patchcore"]


def check(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable})


# The installed-wheel stage of CI runs a copy of tests/ without the benchmarks beside it.
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"{SCRIPT} is not beside this copy of the tests")


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None,
                    reason="the dry run configures the CUDA build: it needs nvcc and cmake")
def test_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    done = check("--dry-run", "--out", str(tmp_path))
    log = (tmp_path / "check.log").read_text() if (tmp_path / "check.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log[-5000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dry_run"] is True
    assert [(s["step"], s["status"]) for s in results["steps"]] == [(name, "ok") for name in STEPS]
    assert "CUDA kernels ON (90)" in log  # the configuration a GPU build runs
    records = results["results"]
    assert all(r["dry_run"] is True for r in records.values())
    for case in BENCHMARKS:
        assert records[case]["command"].startswith(f"python3 -P benchmarks/gpu/bench.py --dry-run {case} ")
        for row in records[case]["rows"]:
            assert row["native_s"] > 0 and row["baseline_s"] > 0
            if case != "patchcore":  # every kernel's floor is counted
                assert row["floor"]["bytes"] > 0 and row["of_floor"] > 0
    assert records["coreset"]["rows"][0]["selection_equals_cpu_kernel"] is True
    assert set(records["sanitize"]["dtypes"]) == {"float32", "float64"}
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("# GPU check (DRY RUN on the CPU: no figure here is a GPU measurement)")
    rows = sum(len(records[case]["rows"]) for case in BENCHMARKS)
    assert rows == 9 and table.count("\n| ") == 1 + rows + 1 + len(STEPS)  # a header, rows, a header, steps


def test_arguments_and_budget_are_checked(tmp_path):
    bad = check("--dry-run", "--out", str(tmp_path), "--frobnicate")
    assert bad.returncode == 2 and "unknown argument '--frobnicate'" in bad.stderr
    assert check("--dry-run", "--budget", "soon", "--out", str(tmp_path)).returncode == 2
    no_out = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "OUT"})
    assert no_out.returncode == 2 and "give --out DIR" in no_out.stderr
    assert "--dry-run" in check("--help").stdout
    # Nothing left of the budget: every step is reported as not run, the table still comes, and
    # the check fails (a step that did not run is no pass).
    spent = check("--dry-run", "--budget", "0", "--out", str(tmp_path))
    assert spent.returncode == 1
    steps = json.loads((tmp_path / "results.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["not run: budget spent"] * len(STEPS)
