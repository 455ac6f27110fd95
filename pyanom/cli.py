"""The `pyanom` command: argument parsing and printing (pyanom.runs does the work); a failure is one
line on stderr naming the file or argument, exit status 2 (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  pyanom demo --out demo                      # offline: synthetic parts, fit, evaluate, heatmaps
  pyanom fit patchcore data/mvtec/bottle --out bottle.pyanom --set coreset_ratio=0.01
  pyanom evaluate bottle.pyanom data/mvtec/bottle --json metrics.json --heatmaps heatmaps/
  pyanom predict bottle.pyanom new_images/ --out results/   # sub-folders too; --no-recursive to stop
  pyanom info patchcore                       # a detector's settings, defaults and help
  pyanom export bottle.pyanom --format onnx --out bottle-onnx/   # then: pyanom predict bottle-onnx/ ...

exit status: 0 done; 1 predict finished but some images could not be read (see scores.csv);
2 nothing done (bad argument, input or output: the message names it; --debug for a traceback).

DATA_ROOT layouts (detected): MVTec AD (train/good, test/<type>, ground_truth/<type>),
KolektorSDD2 (NAME.png + NAME_GT.png), labelled folders (good/, <defect>/...), image + mask
folders (images/, masks/), and a flat folder of images (all good). Layouts without a train/test
split are split by --test-fraction and --seed (an unsupervised fit sends every defect image to
the test part); evaluate reads them as the fit did and evaluates the held-out part of a folder
the model was fitted on, all of any other folder.
"""
_LAYOUT = (("--layout",), dict(choices=["mvtec", "kolektorsdd2", "folders", "image_mask", "flat"],
                               help="data layout (default: detected)"))
_NORMAL = (("--normal-class",), dict(metavar="NAME", help="the class folder of good images where it is not named "
                                     "good, ok, normal or the like"))
_FRACTION = "test share for layouts without a train/test split (default 0.3)"
SHARED_OPTIONS = {
    "device": [(("--device",), dict(default="cpu", help="cpu or cuda (default cpu)"))],
    "set": [(("--set",), dict(action="append", default=[], metavar="KEY=VALUE", help="a setting, repeatable "
                              "(e.g. --set coreset_ratio=0.01; see `pyanom info DETECTOR`)"))],
    "runtime": [(("--runtime",), dict(choices=["onnxruntime", "openvino"], help="runtime for exported model folders "
                                      "(default: onnxruntime for ONNX, openvino for OpenVINO)"))],
    "split": [_LAYOUT, _NORMAL, (("--test-fraction",), dict(type=float, default=0.3, help=_FRACTION)),
              (("--seed",), dict(type=int, default=0, help="seed of that split (default 0)"))],
    "split-remembered": [_LAYOUT, _NORMAL, (("--test-fraction",), dict(type=float, help=_FRACTION + "; default: fit's")),
                         (("--seed",), dict(type=int, help="seed of that split (default: the fit's)"))],
}


def cmd_list(args) -> int:
    from pyanom import build_info
    from pyanom.registry import list_detectors

    entries = list_detectors()
    if not entries:
        print("no detectors registered (is pyanom installed?)")
        return 1
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.supervision if e.error is None else f'BROKEN: {e.error}':<12}  {e.target}")
    info = build_info()
    cuda = f"CUDA {info.get('cuda_architectures')}" if info.get("cuda_compiled") else "no CUDA"
    print(f"kernels: CPU {info['cpu_isa']} (built: {', '.join(info['cpu_isa_built'])}), {cuda}" if info["native"]
          else f"kernels: pure PyTorch (compiled module not importable: {info['native_error']})")
    return 0


def cmd_info(args) -> int:
    from pyanom.registry import describe, detector_class

    info = describe(args.detector)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    doc = " ".join((inspect.getdoc(detector_class(args.detector)) or "").split("\n\n")[0].split())
    print(f"{info['name']} ({info['supervision']}): {doc}")
    print("settings (--set KEY=VALUE):")
    width = max(len(s["name"]) for s in info["settings"])
    for s in info["settings"]:
        allowed = s.get("interval") or (" | ".join(map(str, s["choices"])) if "choices" in s else "")
        print(f"  {s['name']:<{width}}  {s['type']}{f' in {allowed}' * bool(allowed)}, default {json.dumps(s['default'])}")
        print(f"  {'':<{width}}  {s['help']}")
    return 0


def _split(args) -> dict:
    return {k: getattr(args, k) for k in ("layout", "test_fraction", "seed", "normal_class")}


def cmd_fit(args) -> int:
    from pyanom import runs

    options = dict(settings=args.set, device=args.device, force=args.force, **_split(args))
    if not args.each:
        runs.fit_folder(args.detector, args.data_root, args.out, ray=args.ray, **options)
        return 0
    rows = runs.fit_each(args.detector, args.data_root, args.out, ray=args.ray, **options)
    width = max(len(n) for n in rows)
    print(f"{'variant':<{width}}  {'images':>6}  {'fit s':>7}  {'threshold':>10}  model or error")
    for name, r in rows.items():
        cells = (("-", "-", "-", f"error: {r}") if isinstance(r, str)
                 else (r.images, f"{r.seconds:.1f}", f"{r.threshold:.4g}", r.model))
        print(f"{name:<{width}}  {cells[0]:>6}  {cells[1]:>7}  {cells[2]:>10}  {cells[3]}")
    failed = sum(isinstance(row, str) for row in rows.values())
    if failed:
        print(f"pyanom fit: {failed} of {len(rows)} variants failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from pyanom import runs
    from pyanom.metrics import metrics_table

    report = runs.evaluate_folder(args.model, args.data_root, json_out=args.json, heatmaps=args.heatmaps,
                                  report=args.report, device=args.device, **_split(args))
    print(metrics_table(report))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def cmd_predict(args) -> int:
    from pyanom import runs

    if args.bank_parts is not None and args.ray is None:
        raise ValueError("--bank-parts: give a number >= 0, together with --ray")
    if args.ray is not None:
        from pyanom.distributed.score import predict_folder_on_ray

        _, _, failed, _ = predict_folder_on_ray(args.model, args.images, args.out, recursive=args.recursive,
                                              address=None if args.ray == "local" else args.ray,
                                              bank_parts=args.bank_parts)
        return 1 if failed else 0
    result = runs.predict_folder(args.model, args.images, args.out, recursive=args.recursive, device=args.device,
                                 runtime=args.runtime, write_heatmaps=args.write_heatmaps,
                                 heatmap_format=args.heatmap_format, heatmap_size=args.heatmap_size)
    if result.errors:
        print(f"pyanom predict: {len(result.errors)} of {result.scored + len(result.errors)} images could not be "
              "read (their rows in scores.csv say why)", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args) -> int:
    from pyanom.runs import checked_device
    from pyanom.serve.run import serve

    args.device = checked_device(args.device)
    return serve(args)


def cmd_export(args) -> int:
    from pyanom.export import export

    out = export(args.model, args.out, format=args.format, knn_chunk=args.knn_chunk)
    print(f"exported {args.model} as {args.format} to {out}/ (run it with `pyanom predict {out} IMAGES`)")
    return 0


def cmd_demo(args) -> int:
    from pyanom import runs
    from pyanom.metrics import metrics_table

    report = runs.demo(args.out, detector=args.detector, settings=args.set, device=args.device, seed=args.seed,
                       overwrite=args.overwrite)
    print(metrics_table(report))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pyanom.data.files import DEFAULT_MAX_PIXELS
    from pyanom.serve import ServeSettings
    from pyanom.serve.run import add_serve_arguments

    def common(max_pixels: int) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
        p.add_argument("--max-pixels", type=int, metavar="N",
                       help=f"refuse images of more than N pixels before decoding them (default {max_pixels:,}; "
                            "PIL alone warns at 89 M and stops at 179 M)")
        return p

    def command(name, help_text, func, *, parents=None, shared=(), **kw):
        p = sub.add_parser(name, parents=[parents or common(DEFAULT_MAX_PIXELS)], help=help_text, **kw)
        p.set_defaults(func=func)
        for flags, options in (o for group in shared for o in SHARED_OPTIONS[group]):
            p.add_argument(*flags, **options)
        return p

    parser = argparse.ArgumentParser(
        prog="pyanom", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Learn what good parts look like, score new images, flag defects and show where they are.")
    parser.add_argument("--version", action="store_true", help="print version and build information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    command("list", "list the registered detectors", cmd_list)

    p = command("info", "a detector's settings with their types, defaults, bounds and help", cmd_info)
    p.add_argument("detector", help="detector name (see `pyanom list`)")
    p.add_argument("--json", action="store_true", help="print them as JSON: name, type, default, help, bounds/choices")

    p = command("fit", "fit a detector on the training part of DATA_ROOT", cmd_fit, shared=("set", "device", "split"),
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("detector", help="detector name (see `pyanom list`)")
    p.add_argument("data_root", type=Path, help="data set folder")
    p.add_argument("--out", required=True, type=Path, help="model file to write, ending in .pyanom (folder created)")
    p.add_argument("--force", action="store_true", help="replace an existing model file at --out")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="fit on a Ray cluster (pyanom[ray]): "
                   "a local one, or ADDRESS (auto, ray://host:10001); every node must read the images")
    p.add_argument("--each", action="store_true", help="one model per sub-folder of DATA_ROOT (product variants) to "
                   "--out/NAME.pyanom, --out a folder; in parallel with --ray; a summary table at the end")

    p = command("evaluate", "score the test part of DATA_ROOT and report metrics", cmd_evaluate,
                shared=("device", "split-remembered"))
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`")
    p.add_argument("data_root", type=Path, help="data set folder")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.add_argument("--heatmaps", type=Path, metavar="DIR", help="write heatmap overlays (PNG) here, named after "
                   "each image's path under DATA_ROOT")
    p.add_argument("--report", type=Path, metavar="DIR", help="write a self-contained HTML report (DIR/index.html): "
                   "curves, histogram, worst cases")

    p = command("predict", "score images and write scores.csv and heatmaps", cmd_predict, shared=("device", "runtime"))
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`, or folder written by `pyanom export`")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="images or folders of images")
    p.add_argument("--out", type=Path, default=Path("pyanom-predictions"), help="output folder (default "
                   "pyanom-predictions); pyanom's earlier outputs there are replaced, other files are left alone")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="look into sub-folders of the folders given (default: yes)")
    p.add_argument("--write-heatmaps", choices=["all", "defects", "none"], default="all",
                   help="heatmaps of every image, of the flagged ones only, or none (default all)")
    p.add_argument("--heatmap-format", choices=["png", "jpeg"], default="png", help="png (lossless, default) or "
                   "jpeg (smaller and faster to write)")
    p.add_argument("--heatmap-size", type=int, metavar="PIXELS", help="longest side of a heatmap (default: the "
                   "image's own size; caps the memory and time large images take)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="score across a Ray cluster into "
                   "--out/scores.parquet/ (with pyarrow) or scores.csv as chunks finish; a rerun scores only the "
                   "images not there yet (no heatmaps)")
    p.add_argument("--bank-parts", type=int, metavar="N", help="with --ray: a memory bank held by N actors that "
                   "read it from the model file (0: a copy per worker; default: as many as memory_budget_mb asks)")

    serving = ServeSettings()
    p = command("serve", "serve models over HTTP with an operator page (extra pyanom[serve])", cmd_serve,
                parents=common(serving.max_pixels), shared=("device", "runtime"),
                description="Serve fitted models over HTTP (extra pyanom[serve]). --max-pixels is lower here "
                            "than for the other commands: a service decodes many uploads at once.")
    add_serve_arguments(p, serving)

    p = command("export", "export a fitted model to ONNX or OpenVINO (runs without PyTorch)", cmd_export)
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx", help="model format (default onnx)")
    p.add_argument("--out", required=True, type=Path, help="folder to write (model file + pyanom-export.json)")
    p.add_argument("--knn-chunk", type=int, metavar="ROWS", help="memory-bank rows compared at once in the graph "
                   "(default 1024; bounds its memory)")

    p = command("demo", "offline demo: synthetic parts, fit, evaluate, heatmaps", cmd_demo, shared=("set", "device"))
    p.add_argument("--out", type=Path, default=Path("pyanom-demo"), help="output folder (default pyanom-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--detector", default="patchcore", help="detector to demonstrate (default patchcore)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import pyanom

        args.command, args.func = "--version", lambda _: print(json.dumps(pyanom.build_info(), indent=2)) or 0
    elif args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "max_pixels", None) is not None:
            from pyanom.data.files import set_max_pixels

            set_max_pixels(args.max_pixels)
        return args.func(args)
    except KeyboardInterrupt as exc:  # pyanom.training wrote a checkpoint first where one was asked for
        print(f"pyanom {args.command}: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (e.g. `| head`) has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure reaches the user as one clear line
        if getattr(args, "debug", False):
            raise
        known = isinstance(exc, (ValueError, OSError, ImportError, RuntimeError, TypeError, KeyError))
        hint = "" if known else f" ({type(exc).__name__}; run with --debug for the traceback)"
        print(f"pyanom {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
