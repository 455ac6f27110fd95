"""Data sets detectors consume: an inspection set (images, labels, masks) and a plain list of images."""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pyanom.data.files import checked_size, find_images, parallel_map, raise_problems, read_image, read_mask
from pyanom.data.inputs import as_sources, read_source, source_name
from pyanom.data.layouts import LAYOUTS, Sample, detect_layout, read_layout
from pyanom.data.transforms import Preprocess, Size

SPLITS = ("train", "test", "all")


class InspectionSet(Dataset):
    """Labelled inspection images; item i is a dict

    image [3, H, W] float in [0, 1] RGB (not normalised: the backbone does that),
    mask [1, H, W] float in {0, 1} (zeros without annotation), label int (0 good, 1 defect),
    defect_type str ("good" for normal images), path str, source_hw (see Preprocess.source_hw).

    Every image and mask is checked when the set is built (validate=True), so a bad file
    fails here, naming the file, and not in the middle of a fit.
    """

    def __init__(self, samples: Sequence[Sample], *, image_size: Size | None = 256, crop_size: Size | None = None,
                 root: str | os.PathLike | None = None, layout: str | None = None, split: str | None = None,
                 validate: bool = True):
        self.preprocess = Preprocess(image_size, crop_size)
        self.samples = list(samples)
        self.root = Path(root) if root is not None else None
        self.layout, self.split = layout, split
        what = f"data set {root}" if root is not None else "data set"
        if not self.samples:
            raise FileNotFoundError(f"{what}: no images" + (f" in split {split!r}" if split else ""))
        if validate:
            check_samples(self.samples, what)
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.int64)
        self.defect_types = [s.defect_type for s in self.samples]

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) images are resized to; None: each keeps its own."""
        return self.preprocess.image_size

    @property
    def crop_size(self) -> tuple[int, int] | None:
        return self.preprocess.crop_size

    @property
    def has_masks(self) -> bool:
        """Whether any defect pixel annotation exists (supervised detectors need it)."""
        return any(s.mask is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        img = read_image(s.image)
        image = self.preprocess.image(img)
        return {
            "image": image,
            "mask": self.preprocess.mask(read_mask(s.mask) if s.mask is not None else None, image.shape[-2:]),
            "label": s.label,
            "defect_type": s.defect_type,
            "path": str(s.image),
            "source_hw": self.preprocess.source_hw(img),
        }

    def subset(self, indices: Iterable[int]) -> InspectionSet:
        """The samples at indices, already validated."""
        return self._with([self.samples[i] for i in indices])

    def normal(self) -> InspectionSet:
        """Only the good images: what an unsupervised detector fits on."""
        return self.subset(i for i, s in enumerate(self.samples) if s.label == 0)

    def select(self, defect_types: Iterable[str]) -> InspectionSet:
        """Only the samples of the given defect types (include "good" to keep the normal images)."""
        wanted = set(defect_types)
        unknown = wanted - set(self.defect_types)
        if unknown:
            raise ValueError(f"no samples of defect type {sorted(unknown)}; present: {sorted(set(self.defect_types))}")
        return self.subset(i for i, s in enumerate(self.samples) if s.defect_type in wanted)

    def masks(self) -> torch.Tensor:
        """Every mask [N, H, W] (uint8 0/1, zeros where unannotated), for pixel metrics."""
        return torch.stack([self.preprocess.mask(read_mask(s.mask) if s.mask is not None else None,
                                                 self.image_hw(i))[0]
                            for i, s in enumerate(self.samples)]).to(torch.uint8)

    def image_hw(self, index: int) -> tuple[int, int]:
        """(height, width) of item index's image, without decoding it."""
        if self.preprocess.output_size is not None:
            return self.preprocess.output_size
        w, h = checked_size(self.samples[index].image)
        return h, w

    def holdout(self, fraction: float, seed: int = 0) -> tuple[InspectionSet, InspectionSet]:
        """(rest, held out): a seeded, stratified share kept back to calibrate a decision threshold.

        At least 2 good images are held out, the fewest whose spread a threshold can be set from."""
        n_good = int((self.labels == 0).sum())
        if n_good < 3:
            raise ValueError(f"{self.root or 'the training set'}: {n_good} good training image(s); at least 3 are "
                             "needed (2 are held out to set the decision threshold). Add good images.")
        rest, held = stratified_split(self.samples, max(fraction, 2 / n_good), seed)
        if not held or not rest:
            rest, held = self.samples[1:], self.samples[:1]
        return self._with(rest), self._with(held)

    def at_size(self, image_size: Size | None) -> InspectionSet:
        """The same samples resized to image_size instead (None: each at its own size, e.g. to
        draw heatmaps over the images as stored), without a crop."""
        return InspectionSet(self.samples, image_size=image_size, root=self.root, layout=self.layout,
                             split=self.split, validate=False)

    def _with(self, samples: Sequence[Sample]) -> InspectionSet:
        return InspectionSet(samples, image_size=self.image_size, crop_size=self.crop_size, root=self.root,
                             layout=self.layout, split=self.split, validate=False)

    def record(self) -> dict:
        """What a model fitted on this set keeps of it: the folder, the image count and the
        files_fingerprint, so an evaluation can tell whether it is given the same images."""
        return {"root": None if self.root is None else os.path.abspath(self.root), "images": len(self),
                "fingerprint": files_fingerprint(self.samples, self.root)}

    def counts(self) -> dict[str, int]:
        """Number of samples per defect type."""
        return dict(sorted(Counter(self.defect_types).items()))

    def __repr__(self) -> str:
        return (f"InspectionSet(root={str(self.root)!r}, layout={self.layout!r}, split={self.split!r}, "
                f"n={len(self)}, counts={self.counts()}, size={self.preprocess.output_size})")


class ImageList(Dataset):
    """Unlabelled images to score: paths, PIL images or numpy arrays (see pyanom.data.inputs), each read
    as `pyanom predict` reads a file; item i is dict(image [3, H, W] in [0, 1], path (or "<image i>"),
    source_hw: see Preprocess.source_hw). validate: every file is checked first, one error naming
    every bad one."""

    def __init__(self, images: Sequence, *, image_size: Size | None = 256, crop_size: Size | None = None,
                 validate: bool = True):
        self.preprocess = Preprocess(image_size, crop_size)
        self.sources = as_sources(images)
        if validate:
            files = [s for s in self.sources if isinstance(s, Path)]
            raise_problems(_problems(checked_size, files), "the images given")

    @property
    def paths(self) -> list[Path]:
        """The files among the images (all of them when built from paths)."""
        return [s for s in self.sources if isinstance(s, Path)]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        source = self.sources[index]
        img = read_source(source)
        return {"image": self.preprocess.image(img), "path": source_name(source, index),
                "source_hw": self.preprocess.source_hw(img)}


def open_dataset(root: str | os.PathLike, split: str = "train", *, layout: str | None = None,
                 image_size: Size | None = 256, crop_size: Size | None = None, test_fraction: float = 0.3,
                 seed: int = 0, normal_class: str | None = None, train_defects: bool = True) -> InspectionSet:
    """Read one split of a data set folder, its layout detected unless given.

    A layout without its own train/test split is split per defect type (stratified) by
    test_fraction with a seeded shuffle, so "train" and "test" of the same seed never overlap;
    train_defects=False sends every defect image to "test" (what an unsupervised detector, which
    learns from good images only, would leave unused). A flat folder of images is all "train".
    normal_class names the good class where it is not "good", "ok", "normal" or the like.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    layout, splits, _ = read_splits(root, layout=layout, test_fraction=test_fraction, seed=seed,
                                    normal_class=normal_class, train_defects=train_defects)
    if split == "all":
        samples = sorted((s for part in splits.values() for s in part), key=lambda s: s.image)
    elif split in splits:
        samples = splits[split]
    else:
        raise FileNotFoundError(f"{root}: the {layout} data set has no {split!r} part")
    return InspectionSet(samples, image_size=image_size, crop_size=crop_size, root=root, layout=layout, split=split)


def describe_layout(root: str | os.PathLike, *, layout: str | None = None, test_fraction: float = 0.3,
                    seed: int = 0, normal_class: str | None = None, train_defects: bool = True) -> str:
    """One line saying how a folder is read: its layout, whether it has pixel masks, and the
    images per split and class, so a user sees at once whether the folder was understood."""
    layout, splits, made = read_splits(root, layout=layout, test_fraction=test_fraction, seed=seed,
                                       normal_class=normal_class, train_defects=train_defects)
    if layout == "flat":
        return f"{root}: layout flat: {len(splits['train'])} images directly in the folder, all taken as good"
    samples = [s for part in splits.values() for s in part]
    masks = ("pixel masks" if any(s.mask is not None for s in samples) else
             "image labels only (no masks)")
    how = f", split by test_fraction {test_fraction} seed {seed}" if made else ""
    if made and not train_defects and any(s.label for s in samples):
        how += " (every defect image to test: the detector learns from good images only)"
    counts = "; ".join(f"{name} " + ", ".join(f"{c} {n}" for c, n in sorted(Counter(s.defect_type for s in part).items()))
                       for name, part in splits.items())
    return f"{root}: layout {layout}{how}, {masks}; {counts}"


def read_splits(root: str | os.PathLike, *, layout: str | None = None, test_fraction: float = 0.3, seed: int = 0,
                normal_class: str | None = None, train_defects: bool = True) -> tuple[str, dict[str, list[Sample]], bool]:
    """(layout, samples per split, whether the split was made here by test_fraction), images
    unchecked: the options mean what they mean in open_dataset."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must lie between 0 and 1, got {test_fraction}")
    layout = layout or detect_layout(root)
    splits = read_layout(root, layout, normal_class=normal_class)
    if "all" not in splits:
        return layout, splits, False
    train, test = stratified_split(splits["all"], test_fraction, seed, train_defects=train_defects)
    return layout, {"train": train, "test": test}, True


def files_fingerprint(samples: Sequence[Sample], root: str | os.PathLike | None = None) -> str:
    """SHA-256 of the images' paths (under root), labels and file sizes: the same files give the
    same fingerprint wherever the folder lies, without reading a pixel."""
    base = None if root is None else os.path.abspath(root)
    lines = sorted(f"{os.path.relpath(os.path.abspath(s.image), base) if base else os.path.abspath(s.image)}"
                   f"\t{s.label}\t{os.path.getsize(s.image)}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def open_images(*inputs: str | os.PathLike, image_size: Size | None = 256, crop_size: Size | None = None) -> ImageList:
    """Image files and folders of images (sorted, not recursive) as an ImageList, every file checked."""
    return ImageList(find_images(*inputs), image_size=image_size, crop_size=crop_size)


def stratified_split(samples: Sequence[Sample], test_fraction: float, seed: int, *,
                     train_defects: bool = True) -> tuple[list[Sample], list[Sample]]:
    """(train, test): round(n * test_fraction) of each defect type to test, chosen by a seeded
    shuffle; with train_defects=False, all of each defect type.

    Each type's shuffle is seeded by (seed, type name), so adding a class leaves the others' split alone.
    """
    groups: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.image):
        groups.setdefault(s.defect_type, []).append(s)
    train, test = [], []
    for name, group in groups.items():
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(group))
        share = test_fraction if train_defects or group[0].label == 0 else 1.0
        n_test = math.floor(len(group) * share + 0.5)
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return sorted(train, key=lambda s: s.image), sorted(test, key=lambda s: s.image)


def check_samples(samples: Sequence[Sample], what: str = "data set") -> None:
    """Every image readable, every mask readable and of its image's size; one error listing all problems."""
    raise_problems(_problems(_check_sample, samples), what)


def _check_sample(s: Sample) -> None:
    size = checked_size(s.image)
    if s.mask is not None:
        mask_size = checked_size(s.mask)
        if mask_size != size:
            raise ValueError(f"{s.mask}: mask is {mask_size[0]}x{mask_size[1]} (width x height) "
                             f"but its image {s.image} is {size[0]}x{size[1]}")


def _problems(check, items) -> list[Exception]:
    def run(item):
        try:
            check(item)
        except (ValueError, FileNotFoundError) as err:
            return err
        return None

    return [p for p in parallel_map(run, list(items)) if p is not None]
