"""The `segdec` detector: a segmentation network trained with the concentrated loss, then a
decision network on its frozen output (Wang et al. 2022). Supervised: it learns from defective
images with pixel masks and from good images (empty masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F
from torch.optim.swa_utils import update_bn

from pyanom.augment import random_dihedral
from pyanom.data import check_samples
from pyanom.data.transforms import checked_image_size
from pyanom.detector import Detector
from pyanom.settings import Size, setting
from pyanom.training import (BalancedBatches, LossHistory, Stage, Trainer, TrainingSettings, decode_once,
                             load_module, module_tensors, seeded)
from pyanom.ops import concentrated_loss
from pyanom_plugins.segdec.network import STRIDE, DecisionNetwork, SegmentationNetwork, decision_inputs

# Fixed input normalisation: images in [0, 1] -> about zero mean, unit spread.
_MEAN, _STD = 0.5, 0.25


def _strided(size):
    return checked_image_size(size, multiple=STRIDE)


@dataclass
class SegDecConfig(TrainingSettings):
    """SegDec's settings; the defaults are the paper's schedule (Adam, segmentation 200 epochs at lr
    0.1 with batch 2, decision 100 epochs; concentrated loss gamma 0.5, lam 0.95). With Adam, lr 0.1
    does not train this network (the losses stay at their starting level): use seg_lr = dec_lr =
    1e-3 (the detector guide gives the schedule that meets the figures). An epoch visits every
    defective training image once, each batch half defective and half good (biased sampling).
    """

    image_size: Size = setting(256, "images are resized to this (an int: square), each side a multiple of 8",
                               check=_strided)
    seg_epochs: int = setting(200, "epochs of the segmentation stage", bounds=(0, None))
    seg_lr: float = setting(0.1, "Adam learning rate of the segmentation stage", bounds=(0, None), open="low")
    dec_epochs: int = setting(100, "epochs of the decision stage", bounds=(0, None))
    dec_lr: float = setting(0.1, "Adam learning rate of the decision stage", bounds=(0, None), open="low")
    batch_size: int = setting(2, "images per step, half of them defective", bounds=(2, None))
    gamma: float = setting(0.5, "focusing exponent of the concentrated loss, (1 - IoU)^gamma (0: Dice + BCE)",
                           bounds=(0, None))
    lam: float = setting(0.95, "Dice's share of the concentrated loss (0: BCE alone)", bounds=(0, 1))
    augment: bool = setting(False, "segmentation batches in a random one of their eight orientations (not in "
                            "the paper; for surfaces without a preferred orientation)")
    dice_on_good: bool = setting(False, "also give good images (empty masks) the smoothed per-image Dice")
    swa_epochs: int = setting(0, "end the segmentation stage with the mean of its weights over its last N "
                              "epochs (SWA; not in the paper, steadier from seed to seed)", bounds=(0, None))

    def validate(self) -> None:
        if self.swa_epochs > self.seg_epochs:
            raise ValueError(f"swa_epochs ({self.swa_epochs}) cannot exceed seg_epochs ({self.seg_epochs})")


class SegDec(Detector):
    """Segmentation + decision network (Wang et al. 2022): the anomaly map is the segmentation
    network's defect probability per pixel, the image score the decision network's probability."""

    name = "segdec"
    supervision = "supervised"
    Config = SegDecConfig
    needs_masks = True

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.segmentation, self.decision = seeded(self._networks, self.config.seed)
        self.history = LossHistory()

    def _networks(self) -> tuple[SegmentationNetwork, DecisionNetwork]:
        segmentation = SegmentationNetwork().to(self.device)
        return segmentation, DecisionNetwork(segmentation.feature_channels + 1).to(self.device)

    # -- training -------------------------------------------------------------------
    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        self._check_training_set(train)
        data = decode_once(train, device=self.device, masks=True, progress=progress,
                           desc=f"{self.name}: reading images")
        sampler = BalancedBatches(data.labels, cfg.batch_size)
        seg_optimizer = torch.optim.Adam(self.segmentation.parameters(), lr=cfg.seg_lr)
        dec_optimizer = torch.optim.Adam(self.decision.parameters(), lr=cfg.dec_lr)

        def segmentation_step(batch, ctx):
            x, y = data.images[batch], data.masks[batch]
            if cfg.augment:
                x, y = random_dihedral(ctx.rng, x, y)
            logits, _ = self.segmentation(self._normalise(x))
            loss = segmentation_loss(logits, y, gamma=cfg.gamma, lam=cfg.lam, dice_on_good=cfg.dice_on_good)
            ctx.minimise(loss, seg_optimizer)
            return {"segmentation_loss": loss}

        def recalibrate_batch_norm(trainer):
            """Batch-norm statistics for inference: the plain average over the training images in
            a random order (one pass, no gradient; `swa_utils.update_bn`), not the moving average of
            the last training batches, which batches of 2 make noisy."""
            order = torch.randperm(len(data), generator=trainer.rng).to(self.device)
            update_bn((self._normalise(data.images[order[i:i + 16]]) for i in range(0, len(data), 16)),
                      self.segmentation)

        inputs = {}

        def decision_inputs_once(trainer):
            """The decision network learns on the frozen segmentation network's output, computed once."""
            self.segmentation.eval()
            with torch.no_grad():
                parts = [decision_inputs(*self.segmentation(self._normalise(data.images[i:i + 16])))
                         for i in range(0, len(data), 16)]
            inputs["features"] = torch.cat([f for f, _ in parts])
            inputs["stats"] = torch.cat([s for _, s in parts])

        targets = data.labels.float()

        def decision_step(batch, ctx):
            logits = self.decision(inputs["features"][batch], inputs["stats"][batch])
            loss = F.binary_cross_entropy_with_logits(logits, targets[batch])
            ctx.minimise(loss, dec_optimizer)
            return {"decision_loss": loss}

        self.history = Trainer(self, data, progress=progress).run([
            Stage("segmentation", "seg_epochs", cfg.seg_epochs, {"segmentation": self.segmentation},
                  {"segmentation": seg_optimizer}, sampler, segmentation_step, losses=("segmentation_loss",),
                  average_last=cfg.swa_epochs, finish=recalibrate_batch_norm,
                  hint=f"lower seg_lr (now {cfg.seg_lr})"),
            Stage("decision", "dec_epochs", cfg.dec_epochs, {"decision": self.decision},
                  {"decision": dec_optimizer}, sampler, decision_step, losses=("decision_loss",),
                  start=decision_inputs_once, hint=f"lower dec_lr (now {cfg.dec_lr})")])

    def _check_training_set(self, train) -> None:
        """Images with pixel masks at the detector's size, defective and good ones."""
        samples = getattr(train, "samples", None)
        if samples is None:
            raise TypeError(f"{self.name}: fit needs an InspectionSet (images with labels and pixel masks), "
                            f"got {type(train).__name__}")
        missing = [str(s.image) for s in samples if s.label == 1 and s.mask is None]
        if missing:
            shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FileNotFoundError(f"{self.name} learns from pixel masks, but {len(missing)} defective "
                                    f"training image(s) have none:\n  {shown}")
        check_samples(samples, f"{self.name} training set")  # a mask of the wrong size names its file
        if tuple(train.preprocess.output_size or ()) != self.image_size:
            h, w = self.image_size
            size = self.config.image_size if isinstance(self.config.image_size, int) else [h, w]
            raise ValueError(f"{self.name}: the training set gives {train.preprocess.output_size} images, "
                             f"the detector expects {h}x{w} (open the data with image_size={size})")
        n_defect = sum(s.label == 1 for s in samples)
        if n_defect == 0 or n_defect == len(samples):
            raise ValueError(f"{self.name} is supervised: it needs both defective and good training images, "
                             f"got {n_defect} defective of {len(samples)}")

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Network input from images in [0, 1] (float) or the uint8 training cache."""
        if images.dtype == torch.uint8:
            images = images.to(self.device, torch.float32) / 255
        return (images.to(self.device, torch.float32) - _MEAN) / _STD

    # -- inference ------------------------------------------------------------------
    def _score(self, images: torch.Tensor):
        h, w = images.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"{self.name}: image height and width must be multiples of {STRIDE}, got {h}x{w}")
        logits, features = self.segmentation(self._normalise(images))
        decision = self.decision(*decision_inputs(logits, features))
        return torch.sigmoid(decision), torch.sigmoid(logits[:, 0])

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        from pyanom.export.graph import ScoreGraph

        return ScoreGraph(self._score, {"segmentation": self.segmentation, "decision": self.decision})

    # -- persistence ----------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**module_tensors("segmentation", self.segmentation), **module_tensors("decision", self.decision),
                **self.history.tensors()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for prefix, net in (("segmentation", self.segmentation), ("decision", self.decision)):
            load_module(prefix, net, tensors)
            net.to(self.device).eval()
        self.history = LossHistory.from_tensors(tensors)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, *, gamma: float, lam: float,
                      dice_on_good: bool = False) -> torch.Tensor:
    """The concentrated loss of a batch [B, 1, S, S], the mean over its images.

    A good image (empty mask) has IoU 0 and nothing to overlap, so by default its Dice is the
    constant 1: its loss is lam + (1 - lam) BCE and only the BCE trains it. The smoothed Dice
    of the op (dice_on_good=True) is 1 - eps / (sum(p) + eps) for an empty mask: flat at 1
    until the image's whole probability mass drops below eps (1e-6), then 0. Falling off that
    cliff pays lam per good image, so the network learns to push entire images to logits below
    -20, and the defect pixels it pushes down with them get no Dice gradient back (sigmoid
    saturated), so a run that falls off it stops learning its defects.
    """
    if dice_on_good:
        return concentrated_loss(logits, masks, gamma=gamma, lam=lam)
    good = masks.flatten(1).amax(1) == 0
    total = logits.new_zeros(())
    if not good.all():
        total = total + concentrated_loss(logits[~good], masks[~good], gamma=gamma, lam=lam) * int((~good).sum())
    if good.any():
        bce = F.binary_cross_entropy_with_logits(logits[good], torch.zeros_like(logits[good]))
        total = total + (lam + (1 - lam) * bce) * int(good.sum())
    return total / len(logits)
