"""The `pyanom` command: list, info, fit, evaluate, predict and a fully offline demo.

Every output is checked before work starts (pyanom.outputs) and written atomically; a failure is
one line on stderr naming the file or argument, exit status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import re
import sys
import time
from collections import Counter
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
KolektorSDD2 (NAME.png + NAME_GT.png), labelled folders (good/, <defect>/...), and
image + mask folders (images/, masks/). Layouts without a train/test split are split by
--test-fraction and --seed; use the same values for fit and evaluate (the model remembers them).
"""


class UsageError(ValueError):
    """A bad argument: reported in one line with exit status 2, like every other failure."""


def _device(name: str) -> str:
    """--device checked before any work: a device torch knows and that is usable here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "finds no GPU" if torch.backends.cuda.is_built() else "was built without CUDA"
            raise UsageError(f"--device {name}: CUDA is not usable here (torch {torch.__version__} {why}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: pyanom runs on cpu or cuda")
    return str(device)


def _note_conversions(paths, image_size) -> None:
    """One line per run about what the readers change silently per image: colour mode, aspect."""
    from pyanom.data.files import image_mode, parallel_map
    from pyanom.data.transforms import pair

    h, w = pair("image_size", image_size) or (None, None)  # None: images keep their own size
    heads = parallel_map(image_mode, list(paths))
    modes = Counter(mode for _, _, mode in heads if mode != "RGB")
    stretched = h is not None and sum(abs(iw / ih - w / h) > 0.01 * (w / h) for iw, ih, _ in heads)
    if modes:
        kinds = ", ".join(f"{n} {m}" for m, n in sorted(modes.items()))
        print(f"note: {sum(modes.values())} of {len(heads)} images are not RGB ({kinds}): converted to RGB")
    if stretched:
        print(f"note: {stretched} of {len(heads)} images have another aspect ratio than the model's "
              f"{h}x{w} (height x width) input: resized to it")


def _value(text: str):
    """--set values: JSON when it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = _value(val.strip())
    return out


def _split_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    kw = {} if defaults else {"default": None}
    p.add_argument("--layout", choices=["mvtec", "kolektorsdd2", "folders", "image_mask"], **kw,
                   help="data layout (default: detected)")
    p.add_argument("--test-fraction", type=float, **({"default": 0.3} if defaults else kw),
                   help="test share for layouts without a train/test split (default 0.3)")
    p.add_argument("--seed", type=int, **({"default": 0} if defaults else kw),
                   help="seed of that split (default 0)")


def cmd_list(args) -> int:
    from pyanom.registry import list_detectors

    entries = list_detectors()
    if not entries:
        print("no detectors registered (is pyanom installed?)")
        return 1
    width = max(len(e.name) for e in entries)
    for e in entries:
        status = e.supervision if e.error is None else f"BROKEN: {e.error}"
        print(f"{e.name:<{width}}  {status:<12}  {e.target}")
    print(_kernels_line())
    return 0


def _kernels_line() -> str:
    """Which compiled kernels run here: the CPU instruction-set level and CUDA."""
    from pyanom import build_info

    info = build_info()
    if not info["native"]:
        return f"kernels: pure PyTorch (compiled module not importable: {info['native_error']})"
    cuda = f"CUDA {info['cuda_architectures']}" if info["cuda_compiled"] else "no CUDA"
    return f"kernels: CPU {info['cpu_isa']} (built: {', '.join(info['cpu_isa_built'])}), {cuda}"


def cmd_fit(args) -> int:
    if args.each:
        return _fit_each(args)
    _fit_model(args.detector, args.data_root, args.out, args.set, args.device, args.layout,
               args.test_fraction, args.seed, force=args.force, ray=args.ray)
    return 0


def _fit_model(detector, data_root, out, overrides, device, layout, test_fraction, seed, *, force=False,
               ray=None, quiet=False) -> dict:
    """One fit as `pyanom fit` runs it: output checked first, fit, atomic save; a summary row."""
    import pyanom
    from pyanom.data import describe_layout, open_dataset
    from pyanom.outputs import check_model_target

    say = (lambda *a: None) if quiet else print
    out = check_model_target(out, force=force)
    det = pyanom.create(detector, device=_device(device), **_overrides(overrides))
    if ray is not None:
        if not hasattr(det, "use_ray"):
            raise UsageError(f"--ray: {det.name} cannot fit on Ray (memory-bank detectors can: patchcore, "
                             "sa_patchcore)")
        det.use_ray(None if ray == "local" else ray)
    say(describe_layout(data_root, layout=layout, test_fraction=test_fraction, seed=seed))
    train = open_dataset(data_root, "train", layout=layout, image_size=det.image_size,
                         test_fraction=test_fraction, seed=seed)
    used = train.normal() if det.supervision == "unsupervised" else train
    if not quiet:
        _note_conversions([s.image for s in used.samples], det.image_size)
    say(f"fitting {det.name} on {len(used)} images from {data_root}")
    start = time.perf_counter()
    det.fit(train, seed=seed, progress=not quiet)
    det.data_split = {"layout": layout, "test_fraction": test_fraction, "seed": seed}
    det.save(out)
    seconds = time.perf_counter() - start
    say(f"fitted in {seconds:.1f} s, threshold {det.threshold:.4g}; saved {out}")
    return {"images": len(used), "seconds": seconds, "threshold": det.threshold, "model": str(out)}


def _fit_each(args) -> int:
    """One model per sub-folder of DATA_ROOT (a product variant each), written to --out/NAME.pyanom;
    one after another here, or in parallel on Ray; a failed variant is a row of the summary."""
    from pyanom.outputs import writable_folder

    variants = sorted(p for p in args.data_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not variants:
        raise FileNotFoundError(f"{args.data_root}: --each needs one sub-folder per variant, found none")
    writable_folder(args.out, "--out")
    jobs = {v.name: (args.detector, v, args.out / f"{v.name}.pyanom", args.set, args.device, args.layout,
                     args.test_fraction, args.seed) for v in variants}
    rows = {}
    if args.ray is not None:
        from pyanom.distributed import connect

        ray = connect(None if args.ray == "local" else args.ray)
        task = ray.remote(num_cpus=1)(_fit_variant)
        refs = {name: task.remote(job, args.force) for name, job in jobs.items()}
        rows = {name: ray.get(ref) for name, ref in refs.items()}
    else:
        for name, job in jobs.items():
            print(f"== {name}")
            rows[name] = _fit_variant(job, args.force, quiet=False)
    width = max(len(n) for n in rows)
    print(f"{'variant':<{width}}  {'images':>6}  {'fit s':>7}  {'threshold':>10}  model or error")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<{width}}  {'-':>6}  {'-':>7}  {'-':>10}  error: {row['error']}")
        else:
            print(f"{name:<{width}}  {row['images']:>6}  {row['seconds']:>7.1f}  {row['threshold']:>10.4g}  "
                  f"{row['model']}")
    failed = sum("error" in row for row in rows.values())
    if failed:
        print(f"pyanom fit: {failed} of {len(rows)} variants failed", file=sys.stderr)
    return 1 if failed else 0


def _fit_variant(job, force, quiet=True) -> dict:
    try:
        return _fit_model(*job, force=force, quiet=quiet)
    except Exception as exc:  # noqa: BLE001 - one variant's failure is reported in the summary
        return {"error": str(exc)}


def _print_metrics(report: dict) -> None:
    keys = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro", "ap", "f1_max"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'':<16}" + "".join(f"{k:>12}" for k in keys) + f"{'count':>8}")
    print(f"{'all':<16}" + "".join(f"{fmt(report.get(k)):>12}" for k in keys) + f"{report.get('count', ''):>8}")
    for name, row in sorted(report.get("per_defect_type", {}).items()):
        print(f"{name:<16}" + "".join(f"{fmt(row.get(k)):>12}" for k in keys) + f"{row.get('count', ''):>8}")
    print(f"decision threshold (from fit): {fmt(report.get('decision_threshold'))}; "
          f"F1-max threshold on this data: {fmt(report.get('threshold'))}")


def cmd_evaluate(args) -> int:
    import pyanom
    from pyanom.data import open_dataset
    from pyanom.metrics import evaluate
    from pyanom.outputs import OutputFolder, atomic_path, output_name, writable_folder

    det = pyanom.load(args.model, device=_device(args.device))
    split = dict(getattr(det, "data_split", None) or {})
    for key in ("layout", "test_fraction", "seed"):
        if getattr(args, key) is not None:
            split[key] = getattr(args, key)
    test = open_dataset(args.data_root, "test", image_size=det.image_size, **split)
    if args.json:
        writable_folder(args.json.parent, "--json")
    if getattr(args, "report", None):  # the demo calls cmd_evaluate without it
        writable_folder(args.report, "--report")
    heatmaps = None
    if args.heatmaps:
        names = [output_name(s.image, test.root) for s in test.samples]
        heatmaps = (OutputFolder(args.heatmaps, "--heatmaps").start(names), names)
    _note_conversions([s.image for s in test.samples], det.image_size)
    start = time.perf_counter()
    pred = det.predict(test, map_size="model")  # pixel metrics at the model's size, as the masks are
    elapsed = time.perf_counter() - start
    report = evaluate(test.labels, pred.image_scores,
                      masks=test.masks() if pred.anomaly_maps is not None else None,
                      maps=pred.anomaly_maps, defect_types=test.defect_types)
    report["decision_threshold"] = det.threshold
    report["count"] = len(test)
    report["ms_per_image"] = 1000 * elapsed / len(test)
    if not test.has_masks:
        report["pixel_metrics_unavailable"] = f"no masks in {args.data_root}"
    _print_metrics(report)
    if not test.has_masks:
        print(f"pixel metrics unavailable: no masks in {args.data_root} (image labels only)")
    print(f"{len(test)} images in {elapsed:.1f} s ({report['ms_per_image']:.1f} ms/image)")
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if heatmaps:
        _write_heatmaps(*heatmaps, test.at_size(None), pred, det)
    if getattr(args, "report", None):  # the demo calls cmd_evaluate without it
        from pyanom.report import write_report

        print(f"wrote {write_report(args.report, test, pred, det, report, title=Path(args.model).name)}")
    return 0


def _write_heatmaps(folder, names, dataset, pred, det) -> None:
    """One overlay per image, named after its path under the input root (see output_name), at
    the image's own size: dataset gives the images as stored, pred the maps at the model's size
    (resized here one at a time, so a run's maps are never all held at full resolution)."""
    from pyanom.visualize import resize_map, save_overlay

    if pred.anomaly_maps is None:
        print(f"{det.name} gives no anomaly maps: no heatmaps written to {folder.path}")
        return
    vmin = min(float(m.min()) for m in pred.anomaly_maps)
    vmax = max(float(det.threshold), vmin + 1e-6) * 1.5  # one scale for all images of a model
    for i, name in enumerate(names):
        item = dataset[i]
        mask = item.get("mask")
        save_overlay(folder.file(name), item["image"], resize_map(pred.anomaly_maps[i], item["image"].shape[-2:]),
                     vmin=vmin, vmax=vmax, mask=mask[0] if mask is not None and mask.any() else None)
    print(f"wrote {len(names)} heatmaps to {folder.path}")


def _score_readable(paths: list, predict, concatenate) -> tuple[dict, list, object]:
    """Score every image that can be read, 32 at a time with ``predict(paths)``: ({path: error}
    for those that cannot, the paths scored, ``concatenate`` of their predictions or None)."""
    from pyanom.data.files import checked_size

    errors = {}
    for path in paths:
        try:
            checked_size(path)
        except (ValueError, OSError) as err:
            errors[path] = str(err)
    parts, good = [], []
    readable = [p for p in paths if p not in errors]
    for i in range(0, len(readable), 32):
        chunk = readable[i:i + 32]
        try:
            parts.append(predict(chunk))
            good += chunk
        except (ValueError, OSError):  # a file that passed the check but fails to decode: one by one
            for path in chunk:
                try:
                    parts.append(predict([path]))
                    good.append(path)
                except (ValueError, OSError) as err:
                    errors[path] = f"{path}: {err}"
    return errors, good, concatenate(parts) if parts else None


class _ExportedImages:
    """Image files at their own size without torch, indexed like an ImageList (heatmaps of an
    exported model)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        import numpy as np

        from pyanom.data.files import read_image

        pixels = np.asarray(read_image(self.paths[i]), np.float32).transpose(2, 0, 1) / np.float32(255)
        return {"image": pixels, "path": str(self.paths[i])}


def cmd_predict(args) -> int:
    from pyanom.data.files import find_images
    from pyanom.export.runtime import is_exported, load
    from pyanom.outputs import OutputFolder, atomic_path, common_root, output_name

    if args.bank_parts is not None and (args.ray is None or args.bank_parts < 0):
        raise UsageError("--bank-parts: give a number >= 0, together with --ray")
    if args.ray is not None:
        return _predict_on_ray(args)
    exported = is_exported(args.model)  # a folder from `pyanom export`: scored without torch
    if exported:
        det = load(args.model, backend=args.runtime)
    else:
        import pyanom
        from pyanom import Prediction
        from pyanom.data import ImageList

        det = pyanom.load(args.model, device=_device(args.device))
    out_dir = args.out.resolve()  # never score our own earlier outputs as inputs
    paths = [p for p in find_images(*args.images, recursive=args.recursive)
             if out_dir not in p.resolve().parents]
    if not paths:
        raise FileNotFoundError(f"no images to score in {' '.join(map(str, args.images))} outside --out {args.out}")
    root = common_root(paths)
    names = {p: output_name(p, root) for p in paths}
    out = OutputFolder(args.out).start(["scores.csv"] + [Path("heatmaps") / n for n in names.values()])
    if exported:
        errors, good, pred = _score_readable(paths, lambda chunk: det.predict(det.read(chunk)), det.concatenate)
    else:
        errors, good, pred = _score_readable(
            paths, lambda chunk: det.predict(ImageList(chunk, image_size=det.image_size, validate=False),
                                             map_size="model"),  # resized per heatmap, as it is written
            Prediction.concatenate)
    if good and not exported:
        _note_conversions(good, det.image_size)
    with_maps = pred is not None and pred.anomaly_maps is not None
    row_of = {p: i for i, p in enumerate(good)}
    with atomic_path(out.path / "scores.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "defect", "decided_by", "heatmap", "error"])
        for path in paths:
            if path in errors:
                writer.writerow([str(path), "", "", "", "", errors[path]])
                continue
            i = row_of[path]
            heatmap = (Path("heatmaps") / names[path]).as_posix() if with_maps else ""
            writer.writerow([str(path), f"{float(pred.image_scores[i]):.6g}", int(pred.labels[i]),
                             pred.decided_by, heatmap, ""])
    flagged = 0 if pred is None else int(pred.labels.sum())
    decided = "" if pred is None or pred.decided_by == "threshold" else f", labels by {pred.decided_by}"
    print(f"wrote {out.path / 'scores.csv'} ({len(good)} images scored, {flagged} flagged{decided})")
    if pred is not None:
        heatmaps = OutputFolder(out.path / "heatmaps")
        images = _ExportedImages(good) if exported else ImageList(good, image_size=None, validate=False)
        _write_heatmaps(heatmaps, [names[p] for p in good], images, pred, det)
    if errors:
        print(f"pyanom predict: {len(errors)} of {len(paths)} images could not be read "
              "(their rows in scores.csv say why)", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    from pyanom.export import export

    out = export(args.model, args.out, format=args.format, knn_chunk=args.knn_chunk)
    print(f"exported {args.model} as {args.format} to {out}/ (run it with `pyanom predict {out} IMAGES`)")
    return 0


def _predict_on_ray(args) -> int:
    """Batch scoring across a cluster: rows appended as they arrive, a rerun resumes (no heatmaps)."""
    import pyanom
    from pyanom.data import find_images
    from pyanom.distributed.score import results_path, score_on_ray
    from pyanom.outputs import writable_folder

    pyanom.load(args.model, skip=("memory_bank",))  # a bad model file fails here, before the cluster starts
    writable_folder(args.out, "--out")
    out_dir = args.out.resolve()
    paths = [p for p in find_images(*args.images, recursive=args.recursive) if out_dir not in p.resolve().parents]
    results = results_path(args.out)
    scored, failed = score_on_ray(args.model, paths, results, address=None if args.ray == "local" else args.ray,
                                  bank_parts=args.bank_parts)
    print(f"wrote {results} ({scored} images scored now, {len(paths) - scored} already there; "
          f"{failed} could not be read)")
    return 1 if failed else 0


def cmd_info(args) -> int:
    from pyanom.registry import detector_class

    cls = detector_class(args.detector)
    print(f"{cls.name} ({cls.supervision}): {_first_sentence(inspect.getdoc(cls) or '')}")
    rows = [(f.name, json.dumps(_default(f)), help_text) for f, help_text in _settings(cls.Config)]
    width = max(len(r[0]) for r in rows)
    dwidth = min(24, max(len(r[1]) for r in rows))
    print("settings (--set KEY=VALUE):")
    for name, default, help_text in rows:
        print(f"  {name:<{width}}  {default:<{dwidth}}  {help_text}".rstrip())
    return 0


def _first_sentence(text: str, limit: int = 110) -> str:
    paragraph = " ".join(text.split("\n\n")[0].split())
    sentence = re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\. ", paragraph)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit - 3].rstrip() + "..."


def _default(field):
    value = field.default_factory() if field.default is dataclasses.MISSING else field.default
    return list(value) if isinstance(value, tuple) else value


def _settings(config_cls) -> list:
    """Each field of a Config with a one-line help: the first sentence of its "name: ..." entry
    in the class docstrings (its own, then its bases'), else the comment on its line in the
    source, else nothing."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    entries: dict[str, str] = {}
    comments: dict[str, str] = {}
    for klass in reversed([k for k in config_cls.__mro__ if dataclasses.is_dataclass(k)]):
        current: list[str] = []
        for line in (inspect.getdoc(klass) or "").splitlines():
            head, sep, rest = line.partition(":")
            keys = [k.strip() for k in head.split(",")] if sep else []
            if keys and all(k in names for k in keys):
                current = keys
                for k in keys:
                    entries[k] = rest.strip()
            elif not line.strip():
                current = []
            else:
                for k in current:
                    entries[k] += " " + line.strip()
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            source = ""
        for name, text in re.findall(r"^\s*(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            comments[name] = text
    return [(f, _first_sentence(entries.get(f.name) or comments.get(f.name, "")))
            for f in dataclasses.fields(config_cls)]


def cmd_serve(args) -> int:
    from pyanom.serve.run import serve

    args.device = _device(args.device)
    return serve(args)


def cmd_demo(args) -> int:
    from pyanom.data.synthetic import make_inspection_set

    out = Path(args.out)
    data, model = out / "data", out / "model.pyanom"
    if (data.exists() or model.exists()) and not args.overwrite:
        raise UsageError(f"{out} already holds a demo; pass --overwrite to replace it, or --out another folder")
    print(f"generating a synthetic inspection set in {data}")
    make_inspection_set(data, kind="texture", seed=args.seed, overwrite=args.overwrite)
    _fit_model(args.detector, data, model, args.set, args.device, None, 0.3, args.seed, force=args.overwrite)
    return cmd_evaluate(argparse.Namespace(model=model, data_root=data, json=out / "metrics.json",
                                           heatmaps=out / "heatmaps", device=args.device, layout=None,
                                           test_fraction=None, seed=None))


def build_parser() -> argparse.ArgumentParser:
    from pyanom.data.files import DEFAULT_MAX_PIXELS
    from pyanom.serve import ServeSettings

    def common_options(max_pixels: int) -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
        common.add_argument("--max-pixels", type=int, metavar="N",
                            help=f"refuse images of more than N pixels before decoding them (default {max_pixels:,}; "
                                 "PIL alone warns at 89 M and stops at 179 M)")
        return common

    common = common_options(DEFAULT_MAX_PIXELS)
    parser = argparse.ArgumentParser(
        prog="pyanom", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Learn what good parts look like, score new images, flag defects and show where they are.")
    parser.add_argument("--version", action="store_true", help="print version and build information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", parents=[common], help="list the registered detectors")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", parents=[common], help="a detector's settings with their defaults and help")
    p.add_argument("detector", help="detector name (see `pyanom list`)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fit", parents=[common], help="fit a detector on the training part of DATA_ROOT",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("detector", help="detector name (see `pyanom list`)")
    p.add_argument("data_root", type=Path, help="data set folder")
    p.add_argument("--out", required=True, type=Path,
                   help="model file to write, ending in .pyanom (its folder is created)")
    p.add_argument("--force", action="store_true", help="replace an existing model file at --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hyper-parameter override, repeatable (e.g. --set coreset_ratio=0.01; "
                        "see `pyanom info DETECTOR`)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="fit on a Ray cluster (pip install 'pyanom[ray]'): a local one, or the cluster at "
                        "ADDRESS (auto, ray://host:10001); images must be readable by every node")
    p.add_argument("--each", action="store_true",
                   help="one model per sub-folder of DATA_ROOT (product variants), written to --out/NAME.pyanom "
                        "with --out a folder; in parallel with --ray; a summary table at the end")
    _split_args(p, defaults=True)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", parents=[common], help="score the test part of DATA_ROOT and report metrics")
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`")
    p.add_argument("data_root", type=Path, help="data set folder")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.add_argument("--heatmaps", type=Path, metavar="DIR",
                   help="write heatmap overlays (PNG) here, named after each image's path under DATA_ROOT")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write a self-contained HTML report (DIR/index.html): curves, histogram, worst cases")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _split_args(p, defaults=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="score images and write scores.csv and heatmaps")
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`, or a folder written by `pyanom export`")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="images or folders of images")
    p.add_argument("--out", type=Path, default=Path("pyanom-predictions"),
                   help="output folder (default pyanom-predictions); pyanom's earlier outputs there are replaced, "
                        "other files are left alone")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="look into sub-folders of the folders given (default: yes)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="score across a Ray cluster, writing --out/scores.parquet/ (a part file per chunk; with "
                        "pyarrow) or --out/scores.csv as chunks finish; a rerun scores only the images not in it "
                        "yet (no heatmaps)")
    p.add_argument("--bank-parts", type=int, metavar="N",
                   help="with --ray: hold a memory bank (patchcore, sa_patchcore) in N actors, read from the model "
                        "file in parts, instead of a copy in every worker (0: copies; default: as many as keep "
                        "each within the model's memory_budget_mb, copies when it fits)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"],
                   help="runtime for an exported model folder (default: onnxruntime for ONNX, openvino for OpenVINO)")
    p.set_defaults(func=cmd_predict)

    serving = ServeSettings()
    p = sub.add_parser("serve", parents=[common_options(serving.max_pixels)],
                       help="serve models over HTTP with an operator page (extra pyanom[serve])",
                       description="Serve fitted models over HTTP (extra pyanom[serve]). --max-pixels is lower here "
                                   "than for the other commands: a service decodes many uploads at once.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model files or folders written by `pyanom export` (named by file stem), or NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (or set PYANOM_API_KEY)")
    p.add_argument("--max-batch", type=int, default=serving.max_batch, help="images per predict call (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=serving.max_wait_ms,
                   help="how long a first image waits for others to batch with (default %(default)s ms)")
    p.add_argument("--max-queue", type=int, default=serving.max_queue,
                   help="images waiting per model before requests get 503 (default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=serving.max_bytes, help="largest image file (default %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM/Ctrl-C (default 30)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"],
                   help="runtime for exported model folders (default: onnxruntime for ONNX, openvino for OpenVINO)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", parents=[common], help="export a fitted model to ONNX or OpenVINO (runs without PyTorch)")
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx", help="model format (default onnx)")
    p.add_argument("--out", required=True, type=Path, help="folder to write (model file + pyanom-export.json)")
    p.add_argument("--knn-chunk", type=int, metavar="ROWS",
                   help="memory-bank rows compared at once in the graph (default 1024; bounds its memory)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", parents=[common], help="offline demo: synthetic parts, fit, evaluate, heatmaps")
    p.add_argument("--out", type=Path, default=Path("pyanom-demo"), help="output folder (default pyanom-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--detector", default="patchcore", help="detector to demonstrate (default patchcore)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter override")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    p.set_defaults(func=cmd_demo)
    return parser


def _print_version(args) -> int:
    import pyanom

    print(json.dumps(pyanom.build_info(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        args.command, args.func = "--version", _print_version
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
    except Exception as exc:  # noqa: BLE001 - every failure reaches the user as one clear line
        if getattr(args, "debug", False):
            raise
        known = isinstance(exc, (ValueError, OSError, ImportError, RuntimeError, TypeError, KeyError))
        hint = "" if known else f" ({type(exc).__name__}; run with --debug for the traceback)"
        print(f"pyanom {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
