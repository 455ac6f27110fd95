"""The steps of benchmarks/gpu/check.sh that run Python: one case per call, each writing one JSON.

    python3 -P benchmarks/gpu/bench.py CASE --out FILE [--env ENV.json] [--dry-run] [--data DIR]

CASE: env (the GPU, its measured copy bandwidth and its fp32 peak, which the floors use), coreset,
knn, attention, concentrated, patchcore (the figures of issue 30, each native beside its torch
baseline on the same GPU), sanitize (one small call of every native kernel, run under
compute-sanitizer), table (merges a folder of results into results.json and table.md), pack-data
(a 256 px copy of an MVTec category, small enough to travel with the working tree).

GPU timings are CUDA events around each call after warm-up, the median of several. --dry-run
runs the same code on CPU tensors of toy sizes: its figures say nothing of any GPU, and every
record it writes says "dry_run": true.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: bench_coreset's synthetic patch features

# fp32 FMA peaks without tensor cores (FLOP/s), from the vendors' data sheets, by device name.
FP32_PEAK = {"H100 80GB HBM3": 66.9e12, "H100 SXM": 66.9e12, "H100 PCIe": 51.2e12, "H100 NVL": 60.0e12,
             "H200": 66.9e12, "A100": 19.5e12, "L40S": 91.6e12, "L4": 30.3e12, "A10": 31.2e12}
DRY_PEAK = 1e11  # stands in for a peak in a dry run (not a measurement)
DRY_REPS = 2  # timed runs of anything in a dry run (whose figures mean nothing)


# ---- timing and records ----

def median_time(fn, device: str, *, warmup: int = 2, reps: int = 10) -> float:
    """Median seconds of fn(): CUDA events on a GPU, perf_counter on the CPU (a dry run)."""
    if device == "cpu":
        warmup, reps = 1, DRY_REPS
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synced(fn, device: str):
    """fn's result and its wall seconds, the device drained before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def floor(env: dict, *, flops: float = 0.0, bytes_moved: float = 0.0) -> dict:
    """The least time the work can take on this GPU: its FLOPs at the fp32 peak or its bytes at
    the measured copy bandwidth, whichever is longer."""
    peak = env.get("fp32_peak_flops")
    seconds = max(flops / peak if peak else 0.0, bytes_moved / env["copy_bandwidth_bytes_s"])
    return {"flops": flops, "bytes": bytes_moved, "s": seconds,
            "bound": "compute" if peak and flops / peak >= bytes_moved / env["copy_bandwidth_bytes_s"] else "memory"}


def row(name: str, native_s: float, baseline: str, baseline_s: float, *, speedup_target: float | None = None,
        floor_info: dict | None = None, floor_target: float | None = None, **extra) -> dict:
    """One line of the table: native beside its baseline and, where given, its floor."""
    out = {"name": name, "native_s": native_s, "baseline": baseline, "baseline_s": baseline_s,
           "speedup": baseline_s / native_s if native_s > 0 else None, "speedup_target": speedup_target}
    if floor_info is not None:
        out["floor"] = floor_info
        out["of_floor"] = native_s / floor_info["s"] if floor_info["s"] > 0 else None
        out["floor_target"] = floor_target
    out.update(extra)
    return out


def write(path: str, record: dict) -> None:
    Path(path).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(record, default=str))


# ---- cases ----

def case_env(args) -> dict:
    """The device, versions, and what the floors use: a device-to-device copy's bandwidth
    (bytes read and written over its time) and the fp32 peak from FP32_PEAK."""
    from pyanom import build_info

    device = "cpu" if args.dry_run else "cuda"
    n = (1 << 24) if args.dry_run else (1 << 30)  # floats: 64 MiB here, 4 GiB on the GPU
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, reps=5 if args.dry_run else 20)
    record = {"case": "env", "dry_run": args.dry_run, "torch": torch.__version__, "pyanom": build_info(),
              "copy_bandwidth_bytes_s": 2 * 4 * n / seconds}
    if args.dry_run:
        record.update(device="dry run on the CPU (no GPU)", fp32_peak_flops=DRY_PEAK)
    else:
        props = torch.cuda.get_device_properties(0)
        record.update(device=props.name, multiprocessors=props.multi_processor_count,
                      memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                      driver=_driver_version(), capability=f"{props.major}.{props.minor}",
                      tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                      fp32_peak_flops=next((v for k, v in FP32_PEAK.items() if k in props.name), None))
    return record


def _driver_version() -> str | None:
    try:
        import subprocess
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def case_coreset(args, env) -> dict:
    """N = 214,016 patch features, D = 1536 -> 128, ratio 0.1 (k = 21,401): the whole native op
    (projection included) against the reference loop on the same GPU (timed over LOOP iterations,
    its total extrapolated), and the selection against the CPU kernel's on the same projected
    points. Floor: each step reads m (8 B) and the nearest center (4 B) of every point."""
    from bench_coreset import patch_features

    from pyanom.ops import greedy_coreset, reference

    device, dry = _device(args)
    n, d, ratio, loop = (3000, 64, 0.1, 10) if dry else (214_016, 1536, 0.1, 50)
    k = int(n * ratio)
    x = patch_features(n, d, latent=min(96, d)).to(device)
    greedy_coreset(x[:512], 16, backend="native")  # module load, context, custom-op set-up
    times, selection = [], None
    for _ in range(3):
        selection, t = synced(lambda: greedy_coreset(x, k, seed=0, backend="native"), device)
        times.append(t)
    native_s = min(times)
    projected, projection_s = synced(lambda: reference.random_projection(x, 128, 0), device)
    start = reference.coreset_start(n, 0)
    _, loop_s = synced(lambda: reference.greedy_select(projected, loop + 1, start), device)
    torch_s = projection_s + k * loop_s / (loop + 1)
    # The CPU kernel on the very points the GPU selected from (D = 128: no projection either side).
    cpu_selection = greedy_coreset(projected.cpu(), k, projection_dim=128, seed=0, backend="native")
    equal = bool(torch.equal(selection.cpu(), cpu_selection))
    return {"case": "coreset", "dry_run": dry, "n": n, "d": d, "k": k, "rows": [row(
        f"greedy_coreset N={n} D={d}->128 k={k}", native_s, f"torch loop (extrapolated from {loop} iterations)",
        torch_s, speedup_target=8.0, floor_info=floor(env, bytes_moved=12.0 * n * k), native_target_s=0.25,
        selection_equals_cpu_kernel=equal, grid_syncs=2 * k)]}


def case_knn(args, env) -> dict:
    """32 x 1024 queries against 21,401 x 1536 (bottle's 10% bank), k = 1 and 9: native (exact fp32
    FMA, no tensor cores) against torch.cdist + topk on the same GPU, distances compared."""
    from pyanom.ops import knn_scores

    device, dry = _device(args)
    q, n, d = (64, 500, 32) if dry else (32 * 1024, 21_401, 1536)
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(q, d, generator=gen).to(device), torch.randn(n, d, generator=gen).to(device)
    rows = []
    for k in (1, 9):
        native_s = median_time(lambda: knn_scores(queries, bank, k, backend="native"), device)
        cdist_s = median_time(lambda: torch.cdist(queries, bank).topk(k, largest=False), device)
        got = knn_scores(queries[:256], bank, k, backend="native")[0].double()
        want = torch.cdist(queries[:256].double(), bank.double()).topk(k, largest=False).values
        rows.append(row(f"knn_scores Q={q} N={n} D={d} k={k}", native_s, "torch.cdist + topk", cdist_s,
                        speedup_target=2.0, floor_info=floor(env, flops=2.0 * q * n * d,
                                                             bytes_moved=4.0 * (q + n) * d + 12.0 * q * k),
                        max_abs_error_vs_float64=float((got - want).abs().max())))
    return {"case": "knn", "dry_run": dry, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "rows": rows}


def case_attention(args, env) -> dict:
    """self_attention B = 32, C = 1024 at 16x16 and 32x32 against SDPA on the [B, 1, HW, C] view.
    Floor: 4 B L^2 C FLOPs (two products), or reading x and writing the output."""
    from pyanom.ops import reference, self_attention

    device, dry = _device(args)
    b, c, sides = (2, 16, (4, 6)) if dry else (32, 1024, (16, 32))
    rows = []
    for side in sides:
        x = torch.randn(b, c, side, side, generator=torch.Generator().manual_seed(side)).to(device)
        tokens = x.reshape(b, c, side * side).transpose(1, 2).unsqueeze(1)
        with torch.no_grad():
            native_s = median_time(lambda: self_attention(x, backend="native"), device)
            sdpa_s = median_time(lambda: F.scaled_dot_product_attention(tokens, tokens, tokens,
                                                                        scale=1.0 / math.sqrt(c)), device)
            error = float((self_attention(x, backend="native") - reference.self_attention(x)).abs().max())
        positions = side * side
        rows.append(row(f"self_attention B={b} C={c} {side}x{side}", native_s, "torch SDPA", sdpa_s,
                        speedup_target=2.0, floor_target=2.0, max_abs_error_vs_reference=error,
                        floor_info=floor(env, flops=4.0 * b * positions**2 * c, bytes_moved=8.0 * b * c * positions)))
    return {"case": "attention", "dry_run": dry, "rows": rows}


def case_concentrated(args, env) -> dict:
    """concentrated_loss B = 32 at 512 x 512, forward and backward (the public call and
    torch.autograd.grad) against autograd through the reference. Bytes moved by the call: the
    input checks read logits and target (8 B a pixel), the forward kernel reads them again (8 B),
    the backward reads them and writes the gradient (12 B)."""
    from pyanom.ops import concentrated_loss

    device, dry = _device(args)
    b, h, w = (2, 16, 16) if dry else (32, 512, 512)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(b, h, w, generator=gen) * 3).to(device).requires_grad_()
    target = (torch.rand(b, h, w, generator=gen) > 0.9).float().to(device)

    def step(backend):
        return torch.autograd.grad(concentrated_loss(logits, target, backend=backend), logits)[0]

    native_s = median_time(lambda: step("native"), device, reps=20)
    torch_s = median_time(lambda: step("torch"), device, reps=20)
    error = float((step("native") - step("torch")).abs().max())
    pixels = b * h * w
    return {"case": "concentrated", "dry_run": dry, "rows": [row(
        f"concentrated_loss fwd+bwd B={b} {h}x{w}", native_s, "autograd through the reference", torch_s,
        speedup_target=5.0, floor_info=floor(env, bytes_moved=28.0 * pixels), floor_target=2.0,
        kernel_bytes=20.0 * pixels, max_abs_grad_difference=error)]}


def case_patchcore(args, env) -> dict:
    """PatchCore (Lite0, 256 px, coreset ratio 0.1) on the GPU: fit time on the training images
    and predict throughput at batch 1 and 64, native kernels beside the torch backend."""
    import pyanom
    from pyanom.data import open_dataset

    device, dry = _device(args)
    data, source = _patchcore_data(args)
    train, test = open_dataset(data, "train").normal(), open_dataset(data, "test")
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    batch = 8 if dry else 64
    big = images.repeat(math.ceil(batch / len(images)), 1, 1, 1)[:batch]
    rows, scores, figures = [], {}, {}
    for backend in ("native", "torch"):
        os.environ["PYANOM_BACKEND"] = backend
        det = pyanom.create("patchcore", device=device, coreset_ratio=0.1, **({"image_size": 64} if dry else {}))
        _, fit_s = synced(lambda: det.fit(train, progress=False), device)
        det.predict(images[:2], batch_size=2)  # warm-up
        one_s = median_time(lambda: det.predict(images[:1], batch_size=1), device, reps=20)
        batch_s = median_time(lambda: det.predict(big, batch_size=batch), device, reps=10)
        scores[backend] = det.predict(images, batch_size=batch).image_scores.cpu()
        figures[backend] = {"fit_s": fit_s, "batch1_images_s": 1 / one_s, "batch64_images_s": batch / batch_s}
    os.environ.pop("PYANOM_BACKEND")
    n, t = figures["native"], figures["torch"]
    rows.append(row(f"PatchCore fit ({len(train)} images, {source})", n["fit_s"], "torch backend", t["fit_s"]))
    rows.append(row("PatchCore predict, batch 1 (s per image)", 1 / n["batch1_images_s"], "torch backend",
                    1 / t["batch1_images_s"], images_per_s=n["batch1_images_s"],
                    baseline_images_per_s=t["batch1_images_s"]))
    rows.append(row(f"PatchCore predict, batch {batch} (s per image)", 1 / n["batch64_images_s"], "torch backend",
                    1 / t["batch64_images_s"], images_per_s=n["batch64_images_s"],
                    baseline_images_per_s=t["batch64_images_s"], images_per_s_target=2000))
    return {"case": "patchcore", "dry_run": dry, "data": source, "figures": figures, "rows": rows,
            "max_score_difference": float((scores["native"] - scores["torch"]).abs().max())}


def _patchcore_data(args) -> tuple[Path, str]:
    """The MVTec category folder to use, and what it is (a dry run makes a tiny synthetic set)."""
    if args.dry_run:
        from pyanom.data.synthetic import make_inspection_set

        root = Path(tempfile.mkdtemp(prefix="pyanom-gpu-dry-"))
        return make_inspection_set(root, n_train=6, n_test_good=2, n_test_defect=2, size=64), "synthetic (dry run)"
    if not args.data or not Path(args.data, "train").is_dir():
        raise SystemExit(f"patchcore: no MVTec category folder at {args.data!r} (pass --data DIR; "
                         "`bench.py pack-data` makes a copy small enough to travel)")
    return Path(args.data), Path(args.data).name


def case_sanitize(args) -> dict:
    """Every native kernel once on small inputs (both dtypes, tails of every tile, k past the
    sorted lists' limit), for compute-sanitizer's memcheck and racecheck."""
    from pyanom.ops import (channel_self_attention, concentrated_loss, greedy_coreset, knn_scores,
                            self_attention)

    device, dry = _device(args)
    gen = torch.Generator().manual_seed(0)
    ran = []
    for dtype in (torch.float32, torch.float64):
        def r(*shape):
            return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

        greedy_coreset(r(2000, 40), 60, backend="native")
        knn_scores(r(70, 37), r(300, 37), 5, backend="native")
        knn_scores(r(9, 20), r(500, 20), 40, backend="native")  # a heap above 32 neighbours
        with torch.no_grad():
            self_attention(r(2, 24, 7, 9), backend="native")
            channel_self_attention(r(2, 5, 11, 13), backend="native")
        z = r(2, 33, 70).requires_grad_()
        torch.autograd.grad(concentrated_loss(z, (r(2, 33, 70) > 0).to(dtype), detach_factor=False,
                                              backend="native"), z)
        ran.append(str(dtype).replace("torch.", ""))
    if device == "cuda":
        torch.cuda.synchronize()
    return {"case": "sanitize", "dry_run": dry, "dtypes": ran,
            "ops": ["greedy_coreset", "knn_scores", "self_attention", "channel_self_attention", "concentrated_loss"]}


def _device(args) -> tuple[str, bool]:
    if args.dry_run:
        return "cpu", True
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device (run with --dry-run to check the script without one)")
    return "cuda", False


# ---- the table ----

def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def case_table(args) -> None:
    """results.json (every record of the folder args.results, steps.jsonl's step statuses) and
    table.md, both written to args.out (a folder)."""
    folder, out = Path(args.results), Path(args.out)
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    steps_file = folder / "steps.jsonl"
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    env = records.get("env", {})
    dry = any(r.get("dry_run") for r in records.values())
    lines = [f"# GPU check{' (DRY RUN on the CPU: no figure here is a GPU measurement)' if dry else ''}", "",
             f"Device: {env.get('device', '?')}, driver {env.get('driver', '?')}, torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda', '?')}; copy bandwidth {env.get('copy_bandwidth_bytes_s', 0) / 1e12:.3g} TB/s "
             f"(measured), fp32 peak {(env.get('fp32_peak_flops') or 0) / 1e12:.3g} TFLOP/s (data sheet).", "",
             "| case | native | baseline | speed-up (target) | floor (FLOPs, bytes) | native / floor (target) | notes |",
             "|---|---|---|---|---|---|---|"]
    for name, record in records.items():
        for r in record.get("rows", []):
            fl = r.get("floor")
            target = f" (>= {r['speedup_target']:g}x)" if r.get("speedup_target") else ""
            floor_cell = (f"{_seconds(fl['s'])} ({fl['bound']}: {fl['flops']:.3g}, {fl['bytes']:.3g} B)" if fl else "-")
            of_floor = (f"{r['of_floor']:.3g}x" + (f" (<= {r['floor_target']:g}x)" if r.get("floor_target") else "")
                        if r.get("of_floor") else "-")
            notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                              if k not in {"name", "native_s", "baseline", "baseline_s", "speedup", "speedup_target",
                                           "floor", "of_floor", "floor_target"})
            speedup = f"{r['speedup']:.3g}x{target}" if r.get("speedup") else "-"
            if r.get("speedup") and r.get("speedup_target"):
                speedup += "" if r["speedup"] >= r["speedup_target"] else " MISSED"
            if r.get("of_floor") and r.get("floor_target") and r["of_floor"] > r["floor_target"]:
                of_floor += " MISSED"
            if r.get("native_target_s") and r["native_s"] > r["native_target_s"]:
                notes += " (native_target_s MISSED)"
            if r.get("images_per_s_target") and r["images_per_s"] < r["images_per_s_target"]:
                notes += " (images_per_s_target MISSED)"
            lines.append(f"| {r['name']} | {_seconds(r['native_s'])} | {r['baseline']}: {_seconds(r['baseline_s'])} "
                         f"| {speedup} | {floor_cell} | {of_floor} | {notes} |")
    if steps:
        lines += ["", "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"dry_run": dry, "steps": steps, "results": records},
                                                 indent=2, default=str) + "\n")
    print(table)


def case_pack_data(args) -> None:
    """A copy of an MVTec category (train/good, test) at args.size px for carrying to a GPU machine."""
    from PIL import Image

    src, dst = Path(args.data), Path(args.out)
    for path in sorted(src.glob("train/good/*.png")) + sorted(src.glob("test/*/*.png")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").resize((args.size, args.size), Image.BILINEAR).save(target)
    print(f"{dst}: {sum(1 for _ in dst.rglob('*.png'))} images at {args.size} px")


CASES = {"coreset": case_coreset, "knn": case_knn, "attention": case_attention,
         "concentrated": case_concentrated, "patchcore": case_patchcore}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=["env", *CASES, "sanitize", "table", "pack-data"])
    parser.add_argument("--out", required=True, help="the JSON file to write (table, pack-data: a folder)")
    parser.add_argument("--env", help="env's JSON (the floors use it)")
    parser.add_argument("--results", help="table: the folder of JSON results")
    parser.add_argument("--data", help="patchcore, pack-data: an MVTec category folder")
    parser.add_argument("--size", type=int, default=256, help="pack-data: the side in pixels")
    parser.add_argument("--dry-run", action="store_true", help="CPU tensors, toy sizes: checks the code, not a GPU")
    args = parser.parse_args(argv)
    if args.case == "table":
        case_table(args)
    elif args.case == "pack-data":
        case_pack_data(args)
    elif args.case == "env":
        write(args.out, case_env(args))
    elif args.case == "sanitize":
        write(args.out, case_sanitize(args))
    else:
        if not args.env:
            parser.error(f"{args.case} needs --env (the env case's JSON)")
        env = json.loads(Path(args.env).read_text())
        if env.get("dry_run", False) != args.dry_run:
            parser.error("--env comes from a dry run and this is not one, or the reverse")
        record = CASES[args.case](args, env)
        record["command"] = " ".join(["python3 -P benchmarks/gpu/bench.py", *(argv or sys.argv[1:])])
        write(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
