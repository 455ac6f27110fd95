"""The small JSON result files under benchmarks/results/ that the docs' plots are drawn from.

Every file has one shape: {"benchmark": NAME, "about": SENTENCE, "entries": [ENTRY, ...]}, each
entry a flat dict of figures plus "case" (what was measured, unique in the file), "command" (what
produced it), "machine" and "date". A benchmark that writes its results calls `record`, which
replaces the entries of the same cases and keeps the others, so re-running one case refreshes it.

Benchmarks that write JSON of their own are turned into results files by this script:
pytest-benchmark suites (`--benchmark-json=F`) into native-vs-twin ratios, and
`bench_export.py --json F` into the runtimes' ms per image:

    python3 -P -m pytest benchmarks/bench_channel_self_attention.py --benchmark-json=/tmp/cs.json
    python3 -P benchmarks/results.py kernels /tmp/cs.json [more.json ...] [--command "..."]
    python3 -P benchmarks/results.py runtimes export-bench.json --command "..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# In each pytest-benchmark group the native kernel is compared with the first of these present.
TWINS = ("torch", "reference", "torch_backend")


def machine() -> str:
    """CPU model, core count and the ISA level pyanom loaded: what a figure was measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import pyanom

        isa = f", pyanom ISA {pyanom.build_info()['cpu_isa']}"
    except Exception:  # noqa: BLE001 - the description must never stop a benchmark
        isa = ""
    return f"{model}, {os.cpu_count()} cores{isa}"


def command() -> str:
    """The command line of this process, as a user would type it again."""
    return "python3 -P " + " ".join(shlex.quote(a) for a in sys.argv)


def record(name: str, about: str, entries: list[dict], *, path: Path | None = None) -> Path:
    """Merge `entries` into benchmarks/results/NAME.json (or `path`), stamping each with the
    command, machine and date unless it already carries them."""
    path = Path(path or RESULTS / f"{name}.json")
    old = json.loads(path.read_text())["entries"] if path.exists() else []
    stamp = {"command": command(), "machine": machine(), "date": datetime.date.today().isoformat()}
    new = [{**e, **{k: v for k, v in stamp.items() if k not in e}} for e in entries]
    cases = {e["case"] for e in new}
    merged = [e for e in old if e["case"] not in cases] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "about": about, "entries": merged}, indent=1) + "\n")
    return path


def kernel_entries(report: dict, command: str | None = None) -> list[dict]:
    """Native-vs-twin entries of one pytest-benchmark JSON report: per group, the native
    kernel's min and median against the twin's, in ms. `command` says how the report was made
    (pytest-benchmark does not keep it); by default the bare pytest call of its files."""
    groups: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        impl = bench["params"].get("impl") or bench["params"].get("backend")
        groups.setdefault(bench["group"], {})[impl] = bench
    files = sorted({b["fullname"].split("::")[0] for b in report["benchmarks"]})
    cpu = report.get("machine_info", {}).get("cpu", {}).get("brand_raw")
    entries = []
    for group, impls in groups.items():
        twin = next((t for t in TWINS if t in impls), None)
        if "native" not in impls or twin is None:
            continue
        native, other = impls["native"]["stats"], impls[twin]["stats"]
        entries.append({
            "case": group, "op": group.split()[0], "twin": twin,
            "native_ms": round(native["min"] * 1e3, 3), "twin_ms": round(other["min"] * 1e3, 3),
            "ratio": round(other["min"] / native["min"], 2), "ratio_by": "min",
            "ratio_median": round(other["median"] / native["median"], 2),
            "command": command or "python3 -P -m pytest " + " ".join(files),
            **({"machine": f"{cpu}, {report['machine_info'].get('cpu', {}).get('count')} cores"} if cpu else {}),
            "date": report["datetime"][:10],
        })
    return entries


RUNNER_NAMES = {"native": "native float32", "native_bf16": "native bfloat16", "onnxruntime": "onnxruntime",
                "openvino": "OpenVINO"}


def runtime_entries(report: dict, command: str | None = None) -> list[dict]:
    """ms per image (minimum of the rounds) of each runner at batch 1 and 32, from the JSON that
    `bench_export.py --json` writes."""
    entries = []
    for detector, res in report.items():
        for runner, by_batch in res["ms_per_image"].items():
            name = RUNNER_NAMES.get(runner, runner)
            entries.append({"case": f"{detector} {name}", "detector": detector, "runner": name,
                            "ms_per_image_batch1": round(by_batch["1"]["min"], 2),
                            "ms_per_image_batch32": round(by_batch["32"]["min"], 2),
                            **({"command": command} if command else {})})
    return entries


KINDS = {
    "kernels": (kernel_entries, "Each op's native kernel against its pure-PyTorch twin (or reference) on the same "
                                "inputs in one run: ratio = twin time / native time."),
    "runtimes": (runtime_entries, "Predict time per image on MVTec AD bottle at 256 px (minimum of the interleaved "
                                  "rounds): pyanom's own predict against its ONNX and OpenVINO exports."),
}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="Turn a benchmark's own JSON into a benchmarks/results/ file.")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("reports", nargs="+", type=Path,
                   help="kernels: pytest-benchmark JSON files (--benchmark-json); runtimes: bench_export.py --json files")
    p.add_argument("--out", type=Path, help="results file (default benchmarks/results/KIND.json)")
    p.add_argument("--command", help="the command that wrote the reports, e.g. with OMP_NUM_THREADS=1")
    args = p.parse_args(argv)
    convert, about = KINDS[args.kind]
    entries = [e for r in args.reports for e in convert(json.loads(r.read_text()), args.command)]
    if not entries:
        raise SystemExit(f"nothing to record from {', '.join(map(str, args.reports))}")
    print(record(args.kind, about, entries, path=args.out))


if __name__ == "__main__":
    main(sys.argv[1:])
