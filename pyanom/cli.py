"""The `pyanom` command: list, fit, evaluate, predict and a fully offline demo."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  pyanom demo --out demo                      # offline: synthetic parts, fit, evaluate, heatmaps
  pyanom fit patchcore data/mvtec/bottle --out bottle.pyanom --set coreset_ratio=0.01
  pyanom evaluate bottle.pyanom data/mvtec/bottle --json metrics.json --heatmaps heatmaps/
  pyanom predict bottle.pyanom new_images/ --out results/

DATA_ROOT layouts (detected): MVTec AD (train/good, test/<type>, ground_truth/<type>),
KolektorSDD2 (NAME.png + NAME_GT.png), labelled folders (good/, <defect>/...), and
image + mask folders (images/, masks/). Layouts without a train/test split are split by
--test-fraction and --seed; use the same values for fit and evaluate (the model remembers them).
"""


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
            raise SystemExit(f"pyanom: --set expects key=value, got {pair!r}")
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
    return 0


def cmd_fit(args) -> int:
    import pyanom
    from pyanom.data import open_dataset

    det = pyanom.create(args.detector, device=args.device, **_overrides(args.set))
    train = open_dataset(args.data_root, "train", layout=args.layout, image_size=det.image_size,
                         test_fraction=args.test_fraction, seed=args.seed)
    used = len(train.normal()) if det.supervision == "unsupervised" else len(train)
    print(f"fitting {det.name} on {used} images from {args.data_root}")
    start = time.perf_counter()
    det.fit(train, seed=args.seed)
    det.data_split = {"layout": args.layout, "test_fraction": args.test_fraction, "seed": args.seed}
    out = det.save(args.out)
    print(f"fitted in {time.perf_counter() - start:.1f} s, threshold {det.threshold:.4g}; saved {out}")
    return 0


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

    det = pyanom.load(args.model, device=args.device)
    split = dict(getattr(det, "data_split", None) or {})
    for key in ("layout", "test_fraction", "seed"):
        if getattr(args, key) is not None:
            split[key] = getattr(args, key)
    test = open_dataset(args.data_root, "test", image_size=det.image_size, **split)
    start = time.perf_counter()
    pred = det.predict(test)
    elapsed = time.perf_counter() - start
    report = evaluate(test.labels, pred.image_scores,
                      masks=test.masks() if pred.anomaly_maps is not None else None,
                      maps=pred.anomaly_maps, defect_types=test.defect_types)
    report["decision_threshold"] = det.threshold
    report["count"] = len(test)
    report["ms_per_image"] = 1000 * elapsed / len(test)
    _print_metrics(report)
    print(f"{len(test)} images in {elapsed:.1f} s ({report['ms_per_image']:.1f} ms/image)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.heatmaps and pred.anomaly_maps is not None:
        _write_heatmaps(Path(args.heatmaps), test, pred, det)
    return 0


def _write_heatmaps(out: Path, dataset, pred, det) -> None:
    from pyanom.visualize import save_overlay

    out.mkdir(parents=True, exist_ok=True)
    vmin = float(pred.anomaly_maps.min())
    vmax = max(float(det.threshold), vmin + 1e-6) * 1.5  # one scale for all images of a model
    for i in range(len(dataset)):
        item = dataset[i]
        mask = item.get("mask")
        path = Path(item["path"])  # folder + stem: MVTec repeats file names across defect folders
        save_overlay(out / f"{path.parent.name}_{path.stem}.png", item["image"], pred.anomaly_maps[i],
                     vmin=vmin, vmax=vmax, mask=mask[0] if mask is not None and mask.any() else None)
    print(f"wrote {len(dataset)} heatmaps to {out}")


def cmd_predict(args) -> int:
    import pyanom
    from pyanom.data import open_images

    det = pyanom.load(args.model, device=args.device)
    images = open_images(*args.images, image_size=det.image_size)
    pred = det.predict(images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "defect"])
        for path, score, label in zip(images.paths, pred.image_scores.tolist(), pred.labels.tolist()):
            writer.writerow([str(path), f"{score:.6g}", int(label)])
    print(f"wrote {out / 'scores.csv'} ({len(images)} images, {int(pred.labels.sum())} flagged)")
    if pred.anomaly_maps is not None:
        _write_heatmaps(out / "heatmaps", images, pred, det)
    return 0


def cmd_demo(args) -> int:
    from pyanom.data.synthetic import make_inspection_set

    out = Path(args.out)
    data = out / "data"
    print(f"generating a synthetic inspection set in {data}")
    make_inspection_set(data, kind="texture", seed=args.seed)
    model = out / "model.pyanom"
    ns = argparse.Namespace
    cmd_fit(ns(detector=args.detector, data_root=data, out=model, set=args.set, device=args.device,
               layout=None, test_fraction=0.3, seed=args.seed))
    return cmd_evaluate(ns(model=model, data_root=data, json=out / "metrics.json", heatmaps=out / "heatmaps",
                           device=args.device, layout=None, test_fraction=None, seed=None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyanom", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Learn what good parts look like, score new images, flag defects and show where they are.")
    parser.add_argument("--version", action="store_true", help="print version and build information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list the registered detectors")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("fit", help="fit a detector on the training part of DATA_ROOT",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("detector", help="detector name (see `pyanom list`)")
    p.add_argument("data_root", type=Path, help="data set folder")
    p.add_argument("--out", required=True, type=Path, help="model file to write (e.g. bottle.pyanom)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hyper-parameter override, repeatable (e.g. --set coreset_ratio=0.01)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _split_args(p, defaults=True)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="score the test part of DATA_ROOT and report metrics")
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`")
    p.add_argument("data_root", type=Path, help="data set folder")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.add_argument("--heatmaps", type=Path, metavar="DIR", help="write heatmap overlays (PNG) here")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    _split_args(p, defaults=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score images and write scores.csv and heatmaps")
    p.add_argument("model", type=Path, help="model file written by `pyanom fit`")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="images or folders of images")
    p.add_argument("--out", type=Path, default=Path("pyanom-predictions"), help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="offline demo: synthetic parts, fit, evaluate, heatmaps")
    p.add_argument("--out", type=Path, default=Path("pyanom-demo"), help="output folder (default pyanom-demo)")
    p.add_argument("--detector", default="patchcore", help="detector to demonstrate (default patchcore)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter override")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import pyanom

        print(json.dumps(pyanom.build_info(), indent=2))
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError, TypeError) as exc:
        print(f"pyanom {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
