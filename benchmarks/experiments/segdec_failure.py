"""Probe of segdec's failed runs: the empty-mask Dice cliff, and what the failure is not.

    PYANOM_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/experiments/segdec_failure.py --image-size 64 \\
        --seg-epochs 48 --train-seed 0

Trains the segmentation network as `bench_segdec.py --swa-epochs 0` does (same split, schedule and
seeds, the last weights; the decision stage is skipped, it does not change the segmentation
weights), by default with the smoothed Dice on good images too (`dice_on_good`, the loss that
failed; `--no-dice-on-good` for today's default), then reports on the same weights:
- the share of good training images whose whole probability mass lies below 1e-5, past the
  smoothed Dice's cliff (see `pyanom_plugins.segdec.detector.segmentation_loss`);
- pixel AUROC on the test part from probabilities and from logits (ties between saturated
  probabilities would show as a gap) and on every third image it trained on (overfitting would show
  as a gap between the two parts);
- the concentrated loss on 20 biased training batches with batch norm in train mode (batch
  statistics) and in eval mode (stored statistics);
- test pixel AUROC after re-estimating the batch-norm statistics from half-defective batches of
  8 and from natural batches of 64;
- the logits' 1st, 50th and 99th percentiles.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import pyanom
from pyanom import metrics
from pyanom.data import open_dataset
from pyanom.ops import concentrated_loss
from pyanom.training import BalancedBatches, decode_once

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def logits_of(det, images: torch.Tensor) -> torch.Tensor:
    det.segmentation.eval()
    with torch.no_grad():
        return torch.cat([det.segmentation(det._normalise(images[i:i + 16]))[0][:, 0]
                          for i in range(0, len(images), 16)])


def reestimate(det, images: torch.Tensor, batches) -> None:
    """Batch-norm statistics as the cumulative average over `batches` (index tensors)."""
    norms = [m for m in det.segmentation.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    det.segmentation.train()
    with torch.no_grad():
        for batch in batches:
            det.segmentation(det._normalise(images[batch]))
    for m in norms:
        m.momentum = 0.1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA / "magnetic_tile"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seg-epochs", type=int, default=48)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--dice-on-good", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()

    split = dict(image_size=args.image_size, test_fraction=0.3, seed=0)
    train, test = open_dataset(args.data, "train", **split), open_dataset(args.data, "test", **split)
    det = pyanom.create("segdec", image_size=args.image_size, seg_epochs=args.seg_epochs, dec_epochs=0,
                        batch_size=8, seg_lr=1e-3, dec_lr=1e-3, dice_on_good=args.dice_on_good,
                        seed=args.train_seed)
    det.fit(train, seed=0, progress=False)
    test_images = torch.stack([test[i]["image"] for i in range(len(test))])
    test_masks = test.masks()
    trained_on, _ = train.holdout(0.1, seed=0)  # what fit trained on
    data = decode_once(trained_on, progress=False, masks=True)
    images, masks, labels = data.images, data.masks, data.labels

    mass = torch.sigmoid(logits_of(det, images.float() / 255)).flatten(1).sum(1)[labels == 0]
    print(f"good training images past the cliff (probability mass < 1e-5): {float((mass < 1e-5).float().mean()):.1%}; "
          f"median mass {float(mass.median()):.3g}")
    logits = logits_of(det, test_images)
    every_third = torch.arange(0, len(images), 3)
    print(f"test pixel AUROC: probabilities {metrics.pixel_auroc(test_masks, torch.sigmoid(logits)):.4f}, "
          f"logits {metrics.pixel_auroc(test_masks, logits):.4f}; training images "
          f"{metrics.pixel_auroc(masks[every_third, 0], logits_of(det, images[every_third].float() / 255)):.4f}")
    batches = list(BalancedBatches(labels, 8).epoch(torch.Generator().manual_seed(0)))[:20]
    for mode in ("train", "eval"):
        det.segmentation.train(mode == "train")
        with torch.no_grad():
            losses = [float(concentrated_loss(det.segmentation(det._normalise(images[b]))[0], masks[b],
                                              gamma=0.5, lam=0.95)) for b in batches]
        print(f"loss on 20 biased training batches, batch norm in {mode} mode: {sum(losses) / len(losses):.4f}")
    reestimate(det, images, [b for _ in range(3) for b in BalancedBatches(labels, 8).epoch(torch.Generator().manual_seed(0))])
    print(f"test pixel AUROC, statistics from half-defective batches of 8: "
          f"{metrics.pixel_auroc(test_masks, logits_of(det, test_images)):.4f}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    reestimate(det, images, [order[i:i + 64] for i in range(0, len(order), 64)])
    print(f"test pixel AUROC, statistics from natural batches of 64: "
          f"{metrics.pixel_auroc(test_masks, logits_of(det, test_images)):.4f}")
    q = torch.quantile(logits.flatten()[::97], torch.tensor([0.01, 0.5, 0.99])).tolist()
    print(f"test logits: 1st / 50th / 99th percentile {q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f}, "
          f"max {float(logits.max()):.1f}")


if __name__ == "__main__":
    main()
