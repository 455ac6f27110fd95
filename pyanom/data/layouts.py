"""Readers for the folder layouts inspection data comes in, and detection of which one a folder uses.

Every reader returns the samples of each split the layout has ("train" / "test", or "all" for a
layout without a split; a flat folder of images is all "train", all good), sorted by path. Missing masks, orphan masks and empty folders are errors
naming the file or folder; image contents are checked later, in one pass, by the dataset.

Masks are all or nothing: where a mask folder exists (or any mask), every defect image needs its
mask; where none exists anywhere, the set has image labels only (Sample.mask None throughout), which
every detector but the mask-trained ones (segdec) can fit on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pyanom.data.files import IMAGE_EXTENSIONS, is_image_file, list_images, parallel_map, raise_problems, read_mask

LAYOUTS = ("mvtec", "kolektorsdd2", "folders", "image_mask", "flat")

#: Class folder names taken as the normal class, compared case-insensitively after removing a
#: prefix all class names share (so "MT_Free" among "MT_Crack", "MT_Break" ... is normal).
NORMAL_NAMES = ("good", "ok", "normal", "free", "defect_free", "no_defect", "nodefect", "non_defective")
MASK_DIRS = ("ground_truth", "masks", "mask", "gt")
IMAGE_DIRS = ("images", "image", "imgs")
MASK_SUFFIXES = ("_mask", "_gt")


@dataclass(frozen=True)
class Sample:
    """One image of a data set: label 0 is good, 1 a defect; mask None means no pixel annotation."""

    image: Path
    label: int
    defect_type: str
    mask: Optional[Path] = None


def detect_layout(root: str | os.PathLike) -> str:
    """Which of LAYOUTS the folder uses; a ValueError saying what was expected if none fits."""
    root = _existing_dir(root)
    splits = [root / s for s in ("train", "test") if (root / s).is_dir()]
    if splits and all(_subdirs(s) for s in splits) and not any(_ksdd2_masks(s) for s in splits):
        return "mvtec"
    if any(_ksdd2_masks(s) for s in splits) or _ksdd2_masks(root):
        return "kolektorsdd2"
    if _first_dir(root, IMAGE_DIRS) and _first_dir(root, MASK_DIRS):
        return "image_mask"
    if not splits:  # train/ and test/ are splits, not classes
        if _flat(root):
            return "flat"
        if _class_dirs(root):
            return "folders"
    raise ValueError(
        f"{root}: no known data set layout. Expected one of:\n"
        "  mvtec:        train/good/*.png, test/<defect type>/*.png, ground_truth/<defect type>/<name>_mask.png\n"
        "                (without ground_truth/: a split of class folders with image labels only)\n"
        "  kolektorsdd2: [train/, test/] NAME.png + NAME_GT.png\n"
        "  folders:      <class>/**/*.png (e.g. good/, defect/), masks optional beside the images\n"
        "  image_mask:   images/*.png + masks/*.png with the same names\n"
        "  flat:         *.png directly in the folder, all taken as good")


def read_layout(root: str | os.PathLike, layout: str | None = None, *,
                normal_class: str | None = None) -> dict[str, list[Sample]]:
    """Samples per split ("train" and/or "test", or "all"), reading root with the given or detected layout."""
    root = _existing_dir(root)
    layout = detect_layout(root) if layout is None else layout
    if layout == "mvtec":
        return _read_mvtec(root, normal_class)
    if layout == "kolektorsdd2":
        return _read_kolektorsdd2(root)
    if layout == "folders":
        return {"all": _read_folders(root, normal_class)}
    if layout == "image_mask":
        return {"all": _read_image_mask(root)}
    if layout == "flat":
        return {"train": [Sample(image, 0, "good") for image in _nonempty(root)]}
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def _read_mvtec(root: Path, normal_class: str | None) -> dict[str, list[Sample]]:
    splits = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    types = {s: _subdirs(d) for s, d in splits.items()}
    normal = _normal_class(root, sorted({t.name for ts in types.values() for t in ts}), normal_class)
    mask_root = _first_dir(root, MASK_DIRS)
    empty = mask_root is not None and not list_images(mask_root, recursive=True)
    hint = f" ({mask_root} holds no masks: add them, or remove it to use image labels only)" if empty else ""
    out: dict[str, list[Sample]] = {}
    problems: list[Exception] = []
    for split, type_dirs in types.items():
        samples = []
        for type_dir in type_dirs:
            defect = type_dir.name != normal
            for image in _nonempty(type_dir):
                mask = None
                if defect and mask_root is not None:  # without a mask folder the set has image labels only
                    mask = _mask_in(mask_root / type_dir.name, image.stem)
                    if mask is None:
                        expected = mask_root / type_dir.name / f"{image.stem}_mask.png"
                        problems.append(FileNotFoundError(
                            f"{image}: defect image has no mask (expected {expected}){hint}"))
                samples.append(Sample(image, int(defect), type_dir.name, mask))
        out[split] = samples
    raise_problems(problems, f"data set {root}")
    return out


def _read_kolektorsdd2(root: Path) -> dict[str, list[Sample]]:
    splits = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    pairs = {s: _gt_pairs(d) for s, d in splits.items()} if splits else {"all": _gt_pairs(root)}
    masks = [m for ps in pairs.values() for _, m in ps]
    defect = dict(zip(masks, parallel_map(_mask_not_empty, masks)))
    return {s: [Sample(i, int(defect[m]), "defect" if defect[m] else "good", m) for i, m in ps]
            for s, ps in pairs.items()}


def _gt_pairs(folder: Path) -> list[tuple[Path, Path]]:
    files = _nonempty(folder)
    masks = {f.stem[:-3]: f for f in files if f.stem.endswith("_GT")}
    images = [f for f in files if not f.stem.endswith("_GT")]
    problems: list[Exception] = [FileNotFoundError(f"{f}: image has no mask {f.stem}_GT.png") for f in images
                                 if f.stem not in masks]
    named = {f.stem for f in images}
    problems += [FileNotFoundError(f"{m}: mask has no image {stem}.png") for stem, m in masks.items()
                 if stem not in named]
    raise_problems(problems, f"folder {folder}")
    return [(f, masks[f.stem]) for f in images]


def _read_folders(root: Path, normal_class: str | None) -> list[Sample]:
    class_dirs = _class_dirs(root)
    if _flat(root) or not class_dirs:
        loose = list_images(root)
        raise ValueError(f"{root}: layout folders needs class sub-folders of images (good/, defect/ ...) and {root} "
                         "has none" + (f"; its {len(loose)} images lie directly in it: use layout flat (or leave the "
                                       "layout out) to take them all as good" if loose else ""))
    normal = _normal_class(root, [d.name for d in class_dirs], normal_class)
    mask_root = _first_dir(root, MASK_DIRS)
    samples: list[Sample] = []
    problems: list[Exception] = []
    for class_dir in class_dirs:
        images, masks = _split_masks(class_dir, _nonempty(class_dir, recursive=True))
        defect = class_dir.name != normal
        types = _defect_types(class_dir, images) if defect else {}
        for image in images:
            mask = masks.get(image)
            if mask is None and mask_root is not None:
                rel = image.parent.relative_to(class_dir)
                mask = _mask_in(mask_root / class_dir.name / rel, image.stem)
            samples.append(Sample(image, int(defect), types.get(image.parent, class_dir.name), mask))
    if mask_root is not None or any(s.mask for s in samples):  # annotated: a defect without its mask is a mistake
        where = f"though {mask_root} exists" if mask_root is not None else "though other images have one"
        problems += [FileNotFoundError(f"{s.image}: defect image has no mask, {where}")
                     for s in samples if s.label and s.mask is None]
    raise_problems(problems, f"data set {root}")
    return samples


def _defect_types(class_dir: Path, images: list[Path]) -> dict[Path, str]:
    """The defect type of each image folder in a defect class: the class name, followed by the
    sub-folder path where the class's images lie in several (defect/scratch/, defect/dent/ ->
    "defect/scratch", "defect/dent"); sub-folders every image shares (MT_Crack/Imgs/) are left out."""
    parents = sorted({image.parent.relative_to(class_dir).parts for image in images})
    shared = len(os.path.commonprefix(parents)) if parents else 0
    return {class_dir.joinpath(*parts): "/".join((class_dir.name, *parts[shared:])) for parts in parents}


def _split_masks(folder: Path, files: list[Path]) -> tuple[list[Path], dict[Path, Path]]:
    """Separate images from masks stored beside them: NAME_mask.*/NAME_gt.*, or NAME.png next to NAME.jpg."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        groups.setdefault((f.parent, f.stem), []).append(f)
    named: dict[tuple[Path, str], list[Path]] = {}
    for parent, stem in list(groups):
        base = _strip_mask_suffix(stem)
        if base is not None and (parent, base) in groups:
            named.setdefault((parent, base), []).extend(groups.pop((parent, stem)))
    images: list[Path] = []
    masks: dict[Path, Path] = {}
    problems: list[Exception] = []
    for key, group in groups.items():
        candidates = named.get(key, [])
        if len(group) == 2 and not candidates and sum(f.suffix.lower() == ".png" for f in group) == 1:
            image, mask = sorted(group, key=lambda f: f.suffix.lower() == ".png")
            group, candidates = [image], [mask]
        if len(group) > 1 or len(candidates) > 1:
            names = ", ".join(f.name for f in group + candidates)
            problems.append(ValueError(f"{key[0] / key[1]}: cannot tell image from mask among {names}"))
            continue
        images.append(group[0])
        if candidates:
            masks[group[0]] = candidates[0]
    raise_problems(problems, f"folder {folder}")
    return sorted(images), masks


def _read_image_mask(root: Path) -> list[Sample]:
    image_dir, mask_dir = _first_dir(root, IMAGE_DIRS), _first_dir(root, MASK_DIRS)
    images = _nonempty(image_dir, recursive=True)
    pairs, problems = [], []
    for image in images:
        mask = _mask_in(mask_dir / image.parent.relative_to(image_dir), image.stem)
        if mask is None:
            problems.append(FileNotFoundError(f"{image}: image has no mask in {mask_dir} (same name, .png)"))
        pairs.append((image, mask))
    used = {m for _, m in pairs}
    problems += [FileNotFoundError(f"{m}: mask has no image in {image_dir}")
                 for m in list_images(mask_dir, recursive=True) if m not in used]
    raise_problems(problems, f"data set {root}")
    defect = parallel_map(_mask_not_empty, [m for _, m in pairs])
    return [Sample(i, int(d), "defect" if d else "good", m) for (i, m), d in zip(pairs, defect)]


def _mask_in(folder: Path, stem: str) -> Path | None:
    """The mask for an image named stem in folder: STEM_mask.*, STEM_gt.* or STEM.* (first found)."""
    if not folder.is_dir():
        return None
    for suffix in ("_mask", "_gt", "_GT", ""):
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{stem}{suffix}{ext}", folder / f"{stem}{suffix}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _mask_not_empty(mask: Path) -> bool:
    try:
        return bool(read_mask(mask).any())
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{mask}: corrupt or unreadable mask ({err})") from None


def _strip_mask_suffix(stem: str) -> str | None:
    for s in MASK_SUFFIXES:
        if stem.lower().endswith(s):
            return stem[: -len(s)]
    return None


def _normal_class(root: Path, names: list[str], normal_class: str | None) -> str:
    if normal_class is not None:
        if normal_class not in names:
            raise ValueError(f"{root}: normal class {normal_class!r} is not among its classes {', '.join(names)}")
        return normal_class
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[: max(prefix.rfind(c) for c in "_- ") + 1]  # cut back to a separator
    hits = [n for n in names if n.lower() in NORMAL_NAMES or n[len(prefix):].lower() in NORMAL_NAMES]
    if len(hits) != 1:
        raise ValueError(f"{root}: cannot tell which class is the normal one among {', '.join(names)}; "
                         f"rename its folder {NORMAL_NAMES[0]}/, or name it with --normal-class (normal_class=)")
    return hits[0]


def _existing_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    return root


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_dirs(root: Path) -> list[Path]:
    return [d for d in _subdirs(root) if d.name.lower() not in MASK_DIRS]


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first subfolder named one of names (any case), in the order of names."""
    by_name = {d.name.lower(): d for d in _subdirs(root)}
    return next((by_name[n] for n in names if n in by_name), None)


def _flat(root: Path) -> bool:
    """Images directly in root, and none in its sub-folders."""
    return bool(list_images(root)) and not any(list_images(d, recursive=True) for d in _class_dirs(root))


def _ksdd2_masks(folder: Path) -> bool:
    return any(f.stem.endswith("_GT") and is_image_file(f) for f in folder.iterdir() if f.is_file())


def _nonempty(folder: Path, *, recursive: bool = False) -> list[Path]:
    images = list_images(folder, recursive=recursive)
    if not images:
        raise FileNotFoundError(f"{folder}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images
