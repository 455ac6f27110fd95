"""The Detector contract every plugin implements, and the Prediction it returns.

A detector learns from an InspectionSet, scores images, and carries a decision threshold
so that its labels mean something even when no defective sample was ever seen.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

import torch

from pyanom.allocator import retain_freed_memory
from pyanom.anomaly_map import at_sizes, join_maps
from pyanom.data.batches import iterate_images, iterate_sized
from pyanom.data.dataset import ImageList
from pyanom.data.inputs import is_batch_array
from pyanom.data.transforms import pair
from pyanom.archive import save_archive
from pyanom.settings import SettingError


@dataclass
class Prediction:
    """What a detector says about a batch of images.

    image_scores: [B] float, higher = more anomalous.
    anomaly_maps: [B, H, W] float, or None for detectors without one; by default each at its
        input image's own (height, width) (see `Detector.predict`), and a list of [H_i, W_i]
        maps where the inputs differ in size.
    labels: [B] bool, defect = True: image_scores >= threshold unless the detector decides
        otherwise (`Detector._decide`; e.g. by the label of the nearest training image).
    decided_by: how the labels were decided: "threshold" (image_scores >= threshold) or a
        detector's own rule (siamese: "nearest_training_image"), so a score far above the
        threshold labelled "good" is explained.
    """

    image_scores: torch.Tensor
    anomaly_maps: Optional[torch.Tensor]
    labels: torch.Tensor
    decided_by: str = "threshold"

    @classmethod
    def concatenate(cls, parts: list["Prediction"]) -> "Prediction":
        """One Prediction from the Predictions of consecutive chunks of images."""
        maps = None if parts[0].anomaly_maps is None else join_maps([p.anomaly_maps for p in parts])
        return cls(torch.cat([p.image_scores for p in parts]), maps, torch.cat([p.labels for p in parts]),
                   parts[0].decided_by)


class Detector(abc.ABC):
    """Base class of every detector plugin.

    Subclasses set `name`, `supervision` ("unsupervised", "few-shot" or "supervised") and
    `Config` (a `pyanom.settings.Settings` dataclass: each setting declared with its default, the
    published one, its help and bounds), and implement
    `_fit`, `_score`, `state_tensors` and `load_state_tensors`; one that labels images by more
    than its score overrides `_decide`. A detector that trains networks fits through
    `pyanom.training`. Images reaching a detector are float [B, 3, H, W] in [0, 1] with
    (H, W) = detector.image_size (config.image_size: an int for a square or [height, width], checked
    by `pyanom.data.transforms.checked_image_size`), and `_score` returns anomaly maps at the size of
    the images given; `predict` resizes them back to each input image's own size once for all
    detectors. Normalisation is the backbone's business.
    """

    name: ClassVar[str]
    supervision: ClassVar[str]
    Config: ClassVar[type]
    needs_masks: ClassVar[bool] = False  # learns from pixel masks: refuses a set with image labels only

    def __init__(self, config: Any = None, *, device: str | torch.device = "cpu", **overrides: Any):
        base = config if config is not None else self.Config()
        known = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SettingError(f"{self.name}: no setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        self.config = dataclasses.replace(base, **overrides)
        retain_freed_memory()  # activations are reused batch after batch (see pyanom.allocator)
        self.device = torch.device(device)
        self.threshold: float | None = None
        self.data_split: dict | None = None  # how the CLI split the data at fit, reused by evaluate
        self.fitted_on: dict | None = None  # image counts of the last fit, shown by `pyanom serve`
        self.training_data: dict | None = None  # folder and files_fingerprint of the set fitted on (InspectionSet.record)

    # -- what plugins implement -------------------------------------------------
    @abc.abstractmethod
    def _fit(self, train, progress: bool) -> None:
        """Learn from the training set (an InspectionSet)."""

    @abc.abstractmethod
    def _score(self, images: torch.Tensor) -> tuple:
        """Image scores [B] and anomaly maps [B, S, S] (or None) for a batch on self.device; a
        third item, if any, is handed to `_decide` (what else the labels depend on)."""

    def _decide(self, scores: torch.Tensor, evidence: Any = None) -> torch.Tensor:
        """Labels [B] bool of a scored batch: a score at or above the threshold is a defect."""
        return scores >= self.threshold

    @property
    def decided_by(self) -> str:
        """How `_decide` labels images (`Prediction.decided_by`); a detector that overrides it
        names its own rule."""
        return "threshold"

    @abc.abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned, as named tensors (saved with safetensors)."""

    @abc.abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what state_tensors returned."""

    @classmethod
    def saved_config(cls, values: dict) -> Any:
        """The Config of a model file's settings. A plugin that retires settings overrides it to
        read older files without them, or to refuse by name those it can no longer score."""
        return cls.Config(**values)

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        """Optional export hook (pyanom.export): the fitted inference as one traceable module
        mapping float images [B, 3, S, S] in [0, 1] to (image_scores [B], anomaly_maps [B, S, S]
        or None), or to (image_scores, anomaly_maps or None, labels [B] bool) for a detector
        that decides labels otherwise than image_scores >= threshold. Plain torch operations
        only (no pyanom.ops custom ops, no data-dependent Python branches); learned tensors
        become constants of the graph; a search against them compares at most `knn_chunk` rows
        at once (None: pyanom.export.graph.DEFAULT_KNN_CHUNK). A detector that does not override
        it cannot be exported.
        """
        raise NotImplementedError(f"{type(self).__module__}.{type(self).__qualname__} has no export hook: "
                                  "it must override Detector.export_module to be exported")

    # -- the contract -----------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) the detector's images are resized to; None: each keeps its own (tiling)."""
        return pair("image_size", self.config.image_size)

    @property
    def fitted(self) -> bool:
        """True once `fit` or `pyanom.load` has set the decision threshold."""
        return self.threshold is not None

    def fit(self, train, *, validation=None, holdout_fraction: float = 0.1, seed: int = 0,
            progress: bool = True) -> "Detector":
        """Learn from `train`, then set the decision threshold.

        The threshold comes from `validation` when given, else from a seeded hold-out of the
        training images that the detector does not learn from (unsupervised detectors would
        otherwise score their own memory as perfectly normal). Unsupervised detectors learn
        from the normal images of `train` only.
        """
        if self.needs_masks and not getattr(train, "has_masks", True):
            where = getattr(train, "root", None) or "the training set"
            raise ValueError(f"{self.name} learns from pixel masks, but {where} has image labels only (no masks); "
                             "add masks, or use a detector that needs none (e.g. patchcore, siamese)")
        record = train.record() if hasattr(train, "record") else None
        if self.supervision == "unsupervised":
            train = train.normal()
        if validation is None:
            train, validation = train.holdout(holdout_fraction, seed=seed)
        self._fit(train, progress)
        scores = torch.cat([s for s, _ in self._score_set(validation, batch_size=32)])
        self.threshold = calibrate(validation.labels, scores)
        self.fitted_on = {"train_images": len(train), "train_defective": int(train.labels.sum()),
                          "threshold_images": len(validation), "threshold_defective": int(validation.labels.sum())}
        self.training_data = record
        return self

    def predict(self, images, *, batch_size: int = 32, map_size: str = "input") -> Prediction:
        """Score images: a path, a PIL image, a numpy array (H x W x 3 uint8, or H x W grey), a list
        of them, a float tensor [B, 3, H, W] in [0, 1], or a data set (InspectionSet, ImageList).

        Paths, PIL images and arrays are read as `pyanom predict` reads files (converted to RGB and
        resized to the detector's image_size), so they score as the command does; a missing or
        unreadable file is an error naming it. A tensor is taken as given: prepared by the caller
        (a warning says so when its size is not the detector's).

        map_size "input": each anomaly map at its image's own (height, width) (under a data set's
        crop, the crop's). "model": at the size the detector scored at, which
        `InspectionSet.masks()` has: what pixel metrics compare, without full-resolution maps.
        """
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() or pyanom.load() before predict()")
        if map_size not in ("input", "model"):
            raise ValueError(f"map_size must be 'input' or 'model', got {map_size!r}")
        if isinstance(images, torch.Tensor) or is_batch_array(images):
            images = self._checked_batch(torch.as_tensor(images))
            batches = ((images[i:i + batch_size], None) for i in range(0, len(images), batch_size))
        else:
            if not isinstance(images, torch.utils.data.Dataset):
                images = ImageList(images, image_size=self.image_size)
            batches = iterate_sized(images, batch_size)
        scores, maps, labels = [], [], []
        for batch, sizes in batches:
            s, m, decided = self._score_batch(batch, decide=True)
            scores.append(s)
            labels.append(decided)
            if m is not None:
                maps.append(at_sizes(m, sizes) if sizes is not None and map_size == "input" else m)
        return Prediction(torch.cat(scores), join_maps(maps) if maps else None, torch.cat(labels), self.decided_by)

    def _checked_batch(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"a tensor of images must be float [B, 3, H, W] in [0, 1], got {images.dtype} "
                             f"{tuple(images.shape)}; pass uint8 pictures as numpy arrays H x W x 3")
        size = self.image_size
        if size is not None and tuple(images.shape[-2:]) != size:
            warnings.warn(f"{self.name}: images of {images.shape[-2]}x{images.shape[-1]} are scored as given, but the "
                          f"model was fitted at {size[0]}x{size[1]} (height x width), so their scores are not "
                          "comparable with its threshold; resize them first, or pass paths, PIL images or "
                          "arrays, which predict resizes", stacklevel=3)
        return images

    def save(self, path: str | Path) -> Path:
        """Write name, settings, threshold and learned tensors to one model file (pyanom.archive:
        atomic, never pickled, equal models give equal bytes); `pyanom.load` reads it back."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: fit the detector before saving it")
        config = {"detector": self.name, "config": dataclasses.asdict(self.config),
                  "threshold": self.threshold, "data_split": self.data_split, "fitted_on": self.fitted_on,
                  "training_data": self.training_data}
        return save_archive(path, config, self.state_tensors())

    # -- helpers ------------------------------------------------------------------
    def _score_batch(self, images: torch.Tensor, *, decide: bool = False):
        """(scores, maps or None, labels or None) of one batch, on the CPU."""
        with torch.inference_mode():
            scores, maps, *evidence = self._score(images.to(self.device, torch.float32))
            labels = self._decide(scores, *evidence).bool().cpu() if decide else None
        return scores.float().cpu(), None if maps is None else maps.float().cpu(), labels

    def _score_set(self, dataset, *, batch_size: int) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        for batch in iterate_images(dataset, batch_size):
            yield self._score_batch(batch)[:2]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def calibrate(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Decision threshold: the F1-maximising score when defects are present, else a bound
    on the spread of normal scores (see pyanom.metrics.threshold_from_normal_scores)."""
    from pyanom import metrics

    labels = torch.as_tensor(labels)
    if bool((labels == 1).any()) and bool((labels == 0).any()):
        return float(metrics.f1_max(labels, scores)[1])
    return float(metrics.threshold_from_normal_scores(scores[labels == 0]))
