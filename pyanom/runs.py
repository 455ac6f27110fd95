"""Folder runs: fit a detector on a folder, evaluate a model on a folder, predict a folder, as the
`pyanom` command does them. The command, the service and the cluster code call these and keep
none of their logic; a library user can too::

    from pyanom import runs
    runs.fit_folder("patchcore", "data/bottle", "bottle.pyanom", settings=["coreset_ratio=0.01"])
    runs.predict_folder("bottle.pyanom", ["new_images/"], "results/")

Every output is checked before any work starts (pyanom.outputs) and written atomically. What a run
has to say (the layout it read, conversions, where it wrote) goes to ``say`` (print by default;
None for silence); what it produced comes back as a value.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from pyanom._fs import WriteFailed
from pyanom.outputs import OutputError, OutputFolder, Reading, atomic_path, check_file_target, check_model_target, \
    common_root, output_name, writable_folder

__all__ = ["FitResult", "PredictResult", "checked_device", "demo", "evaluate_folder", "evaluation_set", "fit_each",
           "fit_folder", "predict_folder", "score_files"]

Say = Optional[Callable[[str], None]]
SCORES_COLUMNS = ["path", "score", "defect", "decided_by", "heatmap", "error"]
CHUNK = 32  # images decoded and scored together
DECODERS = 2  # threads reading files ahead of the model
PREFETCH_PIXELS = 64_000_000  # pixels a chunk may hold (an image above it is a chunk alone)
KEEP_BYTES = 1 << 30  # decoded pictures kept for drawing heatmaps after scoring; past it, re-read
WRITERS = 2  # threads drawing and writing heatmaps
WRITER_PIXELS = 48_000_000  # pixels drawn at once (a larger image alone): bounds their memory
HEATMAPS = ("all", "defects", "none")
HEATMAP_FORMATS = {"png": ".png", "jpeg": ".jpg"}


def sayer(say: Say) -> Callable[[str], None]:
    return (lambda *_: None) if say is None else say


def checked_device(name: str) -> str:
    """A --device that torch knows and that is usable here, checked before any work ("cpu" needs
    no PyTorch: exported models run without it)."""
    if name == "cpu":
        return name
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "finds no GPU" if torch.backends.cuda.is_built() else "was built without CUDA"
            raise ValueError(f"--device {name}: CUDA is not usable here (torch {torch.__version__} {why}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: pyanom runs on cpu or cuda")
    return str(device)


def conversion_notes(paths: Sequence[Path], image_size) -> list[str]:
    """What the readers change silently per image, as one line each per run: colour mode, aspect."""
    from pyanom.data.files import image_mode, parallel_map
    from pyanom.data.transforms import pair

    def head(path):
        try:
            return image_mode(path)
        except (ValueError, OSError):  # its own error comes when it is read
            return None

    h, w = pair("image_size", image_size) or (None, None)  # None: images keep their own size
    heads = [x for x in parallel_map(head, list(paths)) if x is not None]
    modes = Counter(mode for _, _, mode in heads if mode != "RGB")
    stretched = h is not None and sum(abs(iw / ih - w / h) > 0.01 * (w / h) for iw, ih, _ in heads)
    notes = []
    if modes:
        kinds = ", ".join(f"{n} {m}" for m, n in sorted(modes.items()))
        notes.append(f"note: {sum(modes.values())} of {len(heads)} images are not RGB ({kinds}): converted to RGB")
    if stretched:
        notes.append(f"note: {stretched} of {len(heads)} images have another aspect ratio than the model's "
                     f"{h}x{w} (height x width) input: resized to it")
    return notes


# -- fit -------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """One fitted model: the images it learned from, the fit's seconds, its threshold, its file."""

    images: int
    seconds: float
    threshold: float
    model: Path


def fit_folder(detector: str, data_root, out, *, settings: Sequence[str] | dict = (), device: str = "cpu",
               layout: str | None = None, test_fraction: float = 0.3, seed: int = 0, normal_class: str | None = None,
               force: bool = False, ray: str | None = None, say: Say = print, progress: bool = True) -> FitResult:
    """Fit ``detector`` on the training part of ``data_root`` and save it to ``out`` (.pyanom).

    settings: ``["key=value", ...]`` as `--set` takes them (parsed by the declared types) or a
    dict of values; both are checked before any data is read. ray: None, "local" or a cluster
    address (memory-bank detectors only). layout, test_fraction, seed and normal_class say how
    a folder is read and, without its own train/test split, split (an unsupervised detector's
    split sends every defect image to the test part); the model remembers them, and which
    images it was fitted on, for `evaluate_folder`.
    """
    import pyanom
    from pyanom.data import describe_layout, open_dataset
    from pyanom.memory import MemoryBankDetector
    from pyanom.registry import detector_class
    from pyanom.settings import parse_settings

    say = sayer(say)
    cls = detector_class(detector)
    values = dict(settings) if isinstance(settings, dict) else parse_settings(cls.Config, list(settings))
    reading = Reading(data=[data_root])
    out = check_model_target(out, force=force, reading=reading)
    if values.get("checkpoint") is not None:
        check_file_target(values["checkpoint"], "checkpoint", written_by_pyanom=_is_checkpoint,
                          kind="training checkpoint", example="fit.ckpt",
                          reading=Reading(files={out: "the model file this fit writes"}, data=[data_root]))
    if test_fraction >= 1:
        raise ValueError(f"--test-fraction {test_fraction}: leaves no image to fit on; give a share below 1")
    det = pyanom.create(detector, device=checked_device(device), **values)
    if ray is not None:
        if not isinstance(det, MemoryBankDetector):
            raise ValueError(f"--ray: {det.name} cannot fit on Ray (memory-bank detectors can: patchcore, "
                             "sa_patchcore)")
        from pyanom.distributed import use_ray

        use_ray(det, None if ray == "local" else ray)
    split = {"layout": layout, "test_fraction": test_fraction, "seed": seed, "normal_class": normal_class,
             "train_defects": det.supervision != "unsupervised"}
    say(describe_layout(data_root, **split))
    train = open_dataset(data_root, "train", image_size=det.image_size, **split)
    used = train.normal() if det.supervision == "unsupervised" else train
    for note in conversion_notes([s.image for s in used.samples], det.image_size):
        say(note)
    say(f"fitting {det.name} on {len(used)} images from {data_root}")
    start = time.perf_counter()
    det.fit(train, seed=seed, progress=progress)
    det.data_split = split
    det.save(out)
    seconds = time.perf_counter() - start
    say(f"fitted in {seconds:.1f} s, threshold {det.threshold:.4g}; saved {out}")
    return FitResult(len(used), seconds, det.threshold, Path(out))


def fit_each(detector: str, data_root, out_dir, *, ray: str | None = None, say: Say = print,
             **options) -> dict[str, FitResult | str]:
    """One model per sub-folder of ``data_root`` (a product variant each), written to
    ``out_dir/NAME.pyanom``; one after another here, or in parallel on Ray. A variant that fails is
    its error message in the result, so one bad variant never stops the others. ``options`` are
    fit_folder's."""
    say = sayer(say)
    data_root, out_dir = Path(data_root), Path(out_dir)
    variants = sorted(p for p in data_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not variants:
        raise FileNotFoundError(f"{data_root}: --each needs one sub-folder per variant, found none")
    Reading(data=[data_root]).check(out_dir, "--out")
    writable_folder(out_dir, "--out")
    jobs = {v.name: (detector, v, out_dir / f"{v.name}.pyanom", options) for v in variants}
    if ray is not None:
        from pyanom.distributed import connect

        cluster = connect(None if ray == "local" else ray)
        task = cluster.remote(num_cpus=1)(_fit_variant)
        refs = {name: task.remote(job, True) for name, job in jobs.items()}
        return {name: cluster.get(ref) for name, ref in refs.items()}
    results = {}
    for name, job in jobs.items():
        say(f"== {name}")
        results[name] = _fit_variant(job, False, say)
    return results


def _is_checkpoint(path: Path) -> bool:
    from pyanom.archive import read_header
    from pyanom.training import CHECKPOINT_KIND

    try:
        return read_header(path).get("kind") == CHECKPOINT_KIND
    except (OSError, ValueError):
        return False


def _fit_variant(job, quiet: bool, say: Say = print) -> FitResult | str:
    detector, root, out, options = job
    try:
        return fit_folder(detector, root, out, say=None if quiet else say, progress=not quiet, **options)
    except Exception as exc:  # noqa: BLE001 - one variant's failure is reported in the summary
        return str(exc)


# -- evaluate ----------------------------------------------------------------------------------------
def evaluate_folder(model, data_root, *, json_out=None, heatmaps=None, report=None, device: str = "cpu",
                    layout: str | None = None, test_fraction: float | None = None, seed: int | None = None,
                    normal_class: str | None = None, say: Say = print) -> dict:
    """Score the test part of ``data_root`` with the model file ``model``; returns the metrics
    (pyanom.metrics.evaluate plus decision_threshold, count, ms_per_image) and writes them as JSON
    to ``json_out``, heatmap overlays to the folder ``heatmaps`` and the HTML report to the folder
    ``report`` where given. Which images are evaluated: see evaluation_set."""
    import pyanom
    from pyanom.metrics import evaluate
    from pyanom.visualize import heatmap_scale

    say = sayer(say)
    det = pyanom.load(model, device=checked_device(device))
    if _exported(det):
        raise ValueError(f"{model} is an exported model: evaluate the .pyanom model file it was exported from "
                         "(exported models predict only)")
    reading = Reading(files={model: "the model being evaluated"}, data=[data_root])
    if json_out is not None:
        check_file_target(json_out, "--json", written_by_pyanom=_is_metrics_json, kind="metrics JSON",
                          example="metrics.json", reading=reading)
    if heatmaps is not None and report is not None and Path(heatmaps).resolve() == Path(report).resolve():
        raise OutputError(f"--report {report}: is also --heatmaps; give each its own folder")
    folders = [] if report is None else [OutputFolder(report, "--report", reading=reading).check(["index.html"])]
    asked = {"layout": layout, "test_fraction": test_fraction, "seed": seed, "normal_class": normal_class}
    test = evaluation_set(det, data_root, {k: v for k, v in asked.items() if v is not None}, name=Path(model).name,
                          say=say)
    names = None
    if heatmaps is not None:
        names = [output_name(s.image, test.root) for s in test.samples]
        folders.append(OutputFolder(heatmaps, "--heatmaps", reading=reading).check(names))
    for folder in folders:
        folder.start()
    for note in conversion_notes([s.image for s in test.samples], det.image_size):
        say(note)
    start = time.perf_counter()
    pred = det.predict(test, map_size="model")  # pixel metrics at the model's size, as the masks are
    elapsed = time.perf_counter() - start
    with_masks = test.has_masks and pred.anomaly_maps is not None
    metrics = evaluate(test.labels, pred.image_scores, masks=test.masks() if with_masks else None,
                       maps=pred.anomaly_maps if with_masks else None, defect_types=test.defect_types)
    metrics["decision_threshold"] = det.threshold
    metrics["count"] = len(test)
    metrics["ms_per_image"] = 1000 * elapsed / len(test)
    if not test.has_masks:
        metrics["pixel_metrics_unavailable"] = f"no masks in {data_root}"
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    if heatmaps is not None and pred.anomaly_maps is None:
        say(f"{det.name} gives no anomaly maps: no heatmaps written to {heatmaps}")
    elif heatmaps is not None:
        scale = heatmap_scale(det.threshold, min(float(m.min()) for m in pred.anomaly_maps))
        failed = write_heatmaps_of(folders[-1], [Heatmap(s.image, name, pred.anomaly_maps[i], mask=s.mask)
                                                 for i, (s, name) in enumerate(zip(test.samples, names))], scale)
        if failed:
            raise OSError(f"{len(failed)} heatmaps could not be written (first: {next(iter(failed.values()))})")
        say(f"wrote {len(names)} heatmaps to {heatmaps}")
    if report is not None:
        from pyanom.report import write_report

        metrics_path = write_report(report, test, pred, det, metrics, title=Path(model).name)
        say(f"wrote {metrics_path}")
    return metrics


def evaluation_set(det, data_root, asked: dict, *, name: str = "the model", say: Say = print):
    """The images of ``data_root`` to evaluate ``det`` on, read with the split options the model
    was fitted with unless ``asked`` gives others (layout, test_fraction, seed, normal_class):
    the test part of a layout with its own split; of a folder without one, the part held out
    from the fit when the model was fitted on that folder (its training_data says so), all of it
    when it was not. A folder changed since the fit is refused: its held-out part is lost."""
    from pyanom.data import InspectionSet, files_fingerprint, read_splits

    say = sayer(say)
    split = {**(det.data_split or {}), **asked}
    layout, parts, made = read_splits(data_root, **split)
    record = det.training_data
    how = f"test_fraction {split.get('test_fraction', 0.3)}, seed {split.get('seed', 0)}"
    if not made and layout != "flat":  # the layout's own test part
        samples = parts.get("test")
        if not samples:
            raise FileNotFoundError(f"{data_root}: the {layout} data set has no test images to evaluate on")
    elif made and ({"test_fraction", "seed"} & set(asked) or record is None):
        samples = parts["test"]
        say(f"evaluating on the {len(samples)} images of {data_root} held out by {how}")
    elif record is not None and files_fingerprint(parts["train"], data_root) == record["fingerprint"]:
        samples = parts.get("test", [])
        if not samples:
            raise ValueError(f"{name} was fitted on every image of {data_root}: none is left to evaluate on; "
                             "evaluate on other images (good and defective ones)")
        say(f"{name} was fitted on {data_root}: evaluating on the {len(samples)} images held out from that fit ({how})")
    elif record is not None and record.get("root") == os.path.abspath(data_root):
        raise ValueError(f"{data_root} has changed since {name} was fitted on it, so its held-out images can no "
                         "longer be told from its training images; evaluate on images the model was not fitted on, "
                         "or fit again")
    else:
        samples = sorted((s for part in parts.values() for s in part), key=lambda s: s.image)
        say(f"evaluating on all {len(samples)} images of {data_root} ({name} was not fitted on them)")
    return InspectionSet(samples, image_size=det.image_size, root=data_root, layout=layout, split="test")


def _is_metrics_json(path: Path) -> bool:
    """Whether ``path`` holds metrics as evaluate_folder writes them."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and {"image_auroc", "decision_threshold", "count"} <= set(metrics)


# -- predict -----------------------------------------------------------------------------------------
@dataclass
class PredictResult:
    """What predict_folder wrote: the scores table, and per image its score, label or error."""

    scores_csv: Path
    scored: int
    flagged: int
    decided_by: str
    errors: dict = field(default_factory=dict)  # path -> why it could not be scored
    heatmaps: Optional[Path] = None


def score_files(model, paths: Sequence[Path], *, chunk: int = CHUNK):
    """Score every image file that can be read: (errors {path: message}, the paths scored, their
    prediction with maps at the model's size, or None when none could be read). An unreadable
    file is an error row, never the end of the run."""
    errors, good, parts = {}, [], []
    for chunk_errors, chunk_good, _, pred in scored_chunks(model, paths, chunk=chunk):
        errors.update(chunk_errors)
        good += chunk_good
        if pred is not None:
            parts.append(pred)
    return errors, good, _concatenate(model, parts)


def scored_chunks(model, paths: Sequence[Path], *, chunk: int = CHUNK, workers: int = DECODERS):
    """Score image files chunk by chunk, in order: per chunk (errors {path: message}, the paths
    scored, their pictures as decoded (PIL, RGB), their prediction with maps at the model's size or
    None). Each file is decoded once, by a pool of threads that works ahead of the model (at most
    two chunks and PREFETCH_PIXELS in flight), so reading files and scoring overlap."""
    from concurrent.futures import ThreadPoolExecutor

    from pyanom.data.transforms import Preprocess

    preprocess = Preprocess(model.image_size)
    plan = _chunks(paths, 1 if model.image_size is None else chunk)
    with ThreadPoolExecutor(workers, thread_name_prefix="pyanom-decode") as pool:
        pending = []
        for part in plan:
            pending.append((part, [pool.submit(_decode, p, preprocess) for p in part]))
            if len(pending) < 2:
                continue
            yield _score_decoded(model, *pending.pop(0))
        while pending:
            yield _score_decoded(model, *pending.pop(0))


def _chunks(paths: Sequence[Path], size: int) -> list[list[Path]]:
    """Consecutive chunks of at most ``size`` images and PREFETCH_PIXELS pixels (a larger image
    is a chunk of its own), from the files' headers."""
    from pyanom.data.files import image_mode, parallel_map

    def pixels(path):
        try:
            w, h, _ = image_mode(path)
            return w * h
        except (ValueError, OSError):
            return 0  # its error comes when it is decoded

    chunks, current, held = [], [], 0
    for path, n in zip(paths, parallel_map(pixels, list(paths))):
        if current and (len(current) == size or held + n > PREFETCH_PIXELS):
            chunks.append(current)
            current, held = [], 0
        current.append(path)
        held += n
    return chunks + ([current] if current else [])


def _decode(path: Path, preprocess):
    """(picture, the model's input array) of one file: read once, checked, converted, resized."""
    from pyanom.data.files import checked_size, read_image

    checked_size(path)
    picture = read_image(path)
    return picture, preprocess.array(picture)


def _score_decoded(model, part: list[Path], futures) -> tuple:
    import numpy as np

    errors, good, pictures, arrays = {}, [], [], []
    for path, future in zip(part, futures):
        try:
            picture, array = future.result()
        except (ValueError, OSError) as err:
            message = str(err)
            errors[path] = message if str(path) in message else f"{path}: {message}"
            continue
        good.append(path)
        pictures.append(picture)
        arrays.append(array)
    if not good:
        return errors, good, pictures, None
    batch = np.stack(arrays)  # images keeping their own size come one to a chunk
    if _exported(model):
        return errors, good, pictures, model.predict(batch)
    import torch

    return errors, good, pictures, model.predict(torch.from_numpy(batch), map_size="model")


def _exported(model) -> bool:
    from pyanom.export.runtime import ExportedModel

    return isinstance(model, ExportedModel)


def _concatenate(model, parts):
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return model.concatenate(parts) if _exported(model) else type(parts[0]).concatenate(parts)


def predict_inputs(model, images: Sequence) -> Reading:
    """What a predict run reads (the model, the image files and folders given), for its --out check."""
    files = {model: "the model being used", **{p: "an image being scored" for p in images if Path(p).is_file()}}
    return Reading(files=files, folders=[p for p in images if Path(p).is_dir()])


def predict_folder(model, images: Sequence, out, *, recursive: bool = True, device: str = "cpu",
                   runtime: str | None = None, write_heatmaps: str = "all", heatmap_format: str = "png",
                   heatmap_size: int | None = None, say: Say = print) -> PredictResult:
    """Score image files and folders with ``model`` (a .pyanom file or an exported folder) into the
    folder ``out``: scores.csv (path, score, defect, decided_by, heatmap, error) and heatmaps/ (one
    overlay per image at its own size, named after its path under the inputs' common folder). An
    image that cannot be read gets its error in its row; the run goes on. Images under ``out`` are
    never scored (pyanom's own earlier outputs).

    write_heatmaps: "all", "defects" (flagged images only) or "none". heatmap_format: "png" (lossless)
    or "jpeg" (smaller, faster to write). heatmap_size: the longest side of a heatmap picture (None:
    the image's own size). Files are decoded once, ahead of the model, and heatmaps are drawn and
    written by a pool of threads after scoring (one colour scale needs every map first).
    """
    import pyanom
    from pyanom.data.files import find_images
    from pyanom.visualize import heatmap_scale

    if write_heatmaps not in HEATMAPS:
        raise ValueError(f"--write-heatmaps must be one of {', '.join(HEATMAPS)}, got {write_heatmaps!r}")
    if heatmap_format not in HEATMAP_FORMATS:
        raise ValueError(f"--heatmap-format must be one of {', '.join(HEATMAP_FORMATS)}, got {heatmap_format!r}")
    if heatmap_size is not None and heatmap_size < 16:
        raise ValueError(f"--heatmap-size is the longest side of a heatmap in pixels (>= 16), got {heatmap_size}")
    say = sayer(say)
    det = pyanom.load(model, device=checked_device(device), runtime=runtime)
    out = Path(out)
    reading = predict_inputs(model, images)
    reading.check(out, "--out")
    out_dir = out.resolve()
    paths = [p for p in find_images(*images, recursive=recursive) if out_dir not in p.resolve().parents]
    if not paths:
        raise FileNotFoundError(f"no images to score in {' '.join(map(str, images))} outside --out {out}")
    root = common_root(paths)
    suffix = HEATMAP_FORMATS[heatmap_format]
    names = {p: output_name(p, root, suffix) for p in paths}
    planned = [] if write_heatmaps == "none" else [Path("heatmaps") / n for n in names.values()]
    folder = OutputFolder(out, reading=reading).start(["scores.csv"] + planned)
    if not _exported(det):
        for note in conversion_notes(paths, det.image_size):
            say(note)
    errors, good, parts, kept, kept_bytes = {}, [], [], {}, 0
    for chunk_errors, chunk_good, pictures, pred in scored_chunks(det, paths):
        errors.update(chunk_errors)
        good += chunk_good
        if pred is None:
            continue
        parts.append(pred)
        if write_heatmaps == "none" or pred.anomaly_maps is None:
            continue
        for i, (path, picture) in enumerate(zip(chunk_good, pictures)):
            wanted = write_heatmaps == "all" or bool(pred.labels[i])
            size = picture.width * picture.height * len(picture.getbands())
            if wanted and kept_bytes + size <= KEEP_BYTES:
                kept[path] = picture
                kept_bytes += size
    pred = _concatenate(det, parts)
    drawn = []
    if pred is not None and pred.anomaly_maps is not None and write_heatmaps != "none":
        drawn = [p for i, p in enumerate(good) if write_heatmaps == "all" or bool(pred.labels[i])]
    result = PredictResult(folder.path / "scores.csv", len(good), 0 if pred is None else int(pred.labels.sum()),
                           "threshold" if pred is None else pred.decided_by, errors)
    _write_scores(result.scores_csv, paths, errors, good, pred,
                  {p: (Path("heatmaps") / names[p]).as_posix() for p in drawn})
    decided = "" if result.decided_by == "threshold" else f", labels by {result.decided_by}"
    say(f"wrote {result.scores_csv} ({len(good)} images scored, {result.flagged} flagged{decided})")
    if pred is not None and pred.anomaly_maps is None and write_heatmaps != "none":
        say(f"{det.name} gives no anomaly maps: no heatmaps written to {folder.path / 'heatmaps'}")
    if drawn:
        result.heatmaps = folder.path / "heatmaps"
        row = {p: i for i, p in enumerate(good)}
        scale = heatmap_scale(det.threshold, min(float(m.min()) for m in pred.anomaly_maps))
        try:
            failed = write_heatmaps_of(OutputFolder(result.heatmaps), [
                Heatmap(p, names[p], pred.anomaly_maps[row[p]], kept.pop(p, None)) for p in drawn],
                scale, heatmap_format, heatmap_size)
        except WriteFailed:  # the scores are kept; their rows point at the heatmaps that are there, if room allows
            with suppress(WriteFailed):
                _write_scores(result.scores_csv, paths, errors, good, pred,
                              {p: (Path("heatmaps") / names[p]).as_posix() for p in drawn
                               if (result.heatmaps / names[p]).exists()})
            raise
        if failed:  # the rows must not point at heatmaps that were not written
            _write_scores(result.scores_csv, paths, errors, good, pred,
                          {p: (Path("heatmaps") / names[p]).as_posix() for p in drawn if p not in failed})
            say(f"{len(failed)} heatmaps could not be written (first: {next(iter(failed.values()))})")
        say(f"wrote {len(drawn) - len(failed)} heatmaps to {result.heatmaps}")
    return result


def _write_scores(path: Path, paths, errors: dict, good, pred, heatmaps: dict) -> None:
    row_of = {p: i for i, p in enumerate(good)}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SCORES_COLUMNS)
        for p in paths:
            if p not in row_of:
                writer.writerow([str(p), "", "", "", "", errors.get(p, "")])
                continue
            i = row_of[p]
            writer.writerow([str(p), f"{float(pred.image_scores[i]):.6g}", int(pred.labels[i]), pred.decided_by,
                             heatmaps.get(p, ""), ""])


@dataclass
class Heatmap:
    """One heatmap to draw: the image's file, the output name, its map (any size), and the picture
    if it is still held from scoring (else the file is read again), and its mask file if any."""

    path: Path
    name: Path
    anomaly_map: object
    picture: object = None
    mask: Optional[Path] = None


def write_heatmaps_of(folder: OutputFolder, heatmaps: list[Heatmap], scale: tuple[float, float],
                      fmt: str = "png", max_side: int | None = None) -> dict:
    """Draw and write heatmap pictures on a pool of threads (PIL and numpy release the GIL), at
    most WRITER_PIXELS pixels being drawn at once (a larger image alone), atomically; a picture
    that cannot be drawn is reported, not fatal. Returns {path: why} for those that failed. A write
    the file system refuses (a full disk, a read-only folder) stops the writing: WriteFailed."""
    from concurrent.futures import ThreadPoolExecutor

    budget = _PixelBudget(WRITER_PIXELS)

    def write(item: Heatmap) -> None:
        from pyanom.data.files import image_mode, read_image, read_mask
        from pyanom.visualize import PNG_LEVEL, draw_heatmap

        picture, item.picture = item.picture, None
        width, height = (picture.width, picture.height) if picture is not None else image_mode(item.path)[:2]
        with budget.hold(width * height):
            picture = picture if picture is not None else read_image(item.path)
            mask = read_mask(item.mask) if item.mask is not None else None
            image = draw_heatmap(picture, item.anomaly_map, vmin=scale[0], vmax=scale[1],
                                 mask=mask if mask is not None and mask.any() else None, max_side=max_side)
            with atomic_path(folder.file(item.name)) as tmp:
                if fmt == "jpeg":
                    image.save(tmp, format="JPEG", quality=90)
                else:
                    image.save(tmp, format="PNG", compress_level=PNG_LEVEL)

    failed = {}
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="pyanom-heatmap") as pool:
        futures = [pool.submit(write, h) for h in heatmaps]
        for item, future in zip(heatmaps, futures):
            try:
                future.result()
            except WriteFailed:
                for f in futures:
                    f.cancel()
                raise
            except (ValueError, OSError, MemoryError) as err:
                failed[item.path] = f"{item.name}: {err}"
    return failed


class _PixelBudget:
    """A counting semaphore in pixels: work waits while others hold the budget, and work larger
    than the whole budget runs alone."""

    def __init__(self, limit: int):
        import threading

        self.limit, self.held, self.cond = limit, 0, threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        with self.cond:
            self.cond.wait_for(lambda: self.held == 0 or self.held + pixels <= self.limit)
            self.held += pixels
        try:
            yield
        finally:
            with self.cond:
                self.held -= pixels
                self.cond.notify_all()


# -- the offline demo ----------------------------------------------------------------------------------
def demo(out, *, detector: str = "patchcore", settings: Sequence[str] = (), device: str = "cpu", seed: int = 0,
         overwrite: bool = False, say: Say = print) -> dict:
    """Generate a synthetic inspection set in ``out/data``, fit ``detector`` on it, evaluate it
    with heatmaps: ``out/model.pyanom``, ``out/metrics.json``, ``out/heatmaps/``. Fully offline."""
    from pyanom.data.synthetic import make_inspection_set

    say = sayer(say)
    out = Path(out)
    data, model, metrics = out / "data", out / "model.pyanom", out / "metrics.json"
    if (data.exists() or model.exists()) and not overwrite:
        raise OutputError(f"{out} already holds a demo; pass --overwrite to replace it, or --out another folder")
    check_model_target(model, force=overwrite)
    check_file_target(metrics, "--out", written_by_pyanom=_is_metrics_json, kind="metrics JSON", example="metrics.json")
    say(f"generating a synthetic inspection set in {data}")
    make_inspection_set(data, kind="texture", seed=seed, overwrite=overwrite)
    fit_folder(detector, data, model, settings=settings, device=device, seed=seed, force=overwrite, say=say)
    return evaluate_folder(model, data, json_out=metrics, heatmaps=out / "heatmaps", device=device, say=say)
