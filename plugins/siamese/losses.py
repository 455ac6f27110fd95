"""Pair losses of the Siamese detector and their in-batch estimate of the all-pairs loss.

The paper trains on every pair of the training set: (normal, normal), (defect, defect) and
(normal, defect). Forwarding each pair is wasteful: a batch of images is embedded once and its
pairs are formed in the batch. Each batch holds a fixed number of normal and of defective images,
each a uniform random subset of its class, so the mean loss over the batch's pairs of one type
is an unbiased estimate of that type's mean over all pairs; weighting each type's mean by the
type's share of all pairs makes the batch loss equal the all-pairs mean loss in expectation,
whatever the batch composition.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

NORMAL_NORMAL, DEFECT_DEFECT, NORMAL_DEFECT = 0, 1, 2
PAIR_TYPES = ("normal-normal", "defect-defect", "normal-defect")

PairLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def contrastive_loss(distance: torch.Tensor, same: torch.Tensor, *, margin: float) -> torch.Tensor:
    """CL = 1/2 {Y D^2 + (1 - Y) max(m - D, 0)^2} per pair (Hadsell et al. 2006); Y = 1 for a
    pair of the same class."""
    same = same.to(distance.dtype)
    return 0.5 * (same * distance**2 + (1 - same) * torch.clamp(margin - distance, min=0) ** 2)


def pair_balanced_contrastive_loss(distance: torch.Tensor, same: torch.Tensor, has_normal: torch.Tensor, *,
                                   margin: float, alpha: float = 4.0, beta: float = 1.0) -> torch.Tensor:
    """PBCL = 1/2 {N Y D^2 + alpha (1 - N) Y D^2 + beta N (1 - Y) max(m - D, 0)^2} per pair, N = 1
    when the pair holds a normal image: alpha weighs the rare (defect, defect) pairs up, beta the
    (normal, defect) pairs."""
    same, n = same.to(distance.dtype), has_normal.to(distance.dtype)
    pull = (n + alpha * (1 - n)) * same * distance**2
    push = beta * n * (1 - same) * torch.clamp(margin - distance, min=0) ** 2
    return 0.5 * (pull + push)


def make_pair_loss(name: str, *, margin: float, alpha: float, beta: float) -> PairLoss:
    """The pair loss `name` ("cl" or "pbcl") as f(distance, same, has_normal) -> per-pair loss."""
    if name == "cl":
        return lambda d, same, has_normal: contrastive_loss(d, same, margin=margin)
    if name == "pbcl":
        return lambda d, same, has_normal: pair_balanced_contrastive_loss(
            d, same, has_normal, margin=margin, alpha=alpha, beta=beta)
    raise ValueError(f"pair_loss must be 'cl' or 'pbcl', got {name!r}")


def pair_type_shares(n_normal: int, n_defect: int) -> torch.Tensor:
    """[3]: the share of (normal, normal), (defect, defect), (normal, defect) among all pairs."""
    counts = torch.tensor([n_normal * (n_normal - 1) / 2, n_defect * (n_defect - 1) / 2,
                           n_normal * n_defect], dtype=torch.float64)
    if counts.sum() == 0:
        raise ValueError(f"no pairs in {n_normal} normal and {n_defect} defective images")
    return counts / counts.sum()


def in_batch_pair_loss(embeddings: torch.Tensor, labels: torch.Tensor, shares: torch.Tensor,
                       pair_loss: PairLoss) -> torch.Tensor:
    """sum over pair types t of shares[t] * mean pair loss over the batch's pairs of type t.

    embeddings [B, D]; labels [B] (1 = defect). Every type with a positive share must have a
    pair in the batch (see `batch_composition`)."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    # All B x B squared distances, then each pair's once: gathering embeddings[i] (each row many
    # times) would make the backward pass scatter-add into repeated rows, which PyTorch's CPU
    # kernel does with atomics in whatever order its threads arrive, so training would differ
    # from run to run. The clamp keeps the gradient of the square root finite for identical
    # embeddings.
    squared = (embeddings[:, None, :] - embeddings[None, :, :]).pow(2).sum(dim=-1)
    distance = squared[i, j].clamp(min=1e-12).sqrt()
    defect_i, defect_j = labels[i].bool(), labels[j].bool()
    same = defect_i == defect_j
    has_normal = ~(defect_i & defect_j)
    kind = torch.where(same, defect_i.long(), torch.full_like(i, NORMAL_DEFECT))
    losses = pair_loss(distance, same, has_normal)
    total = embeddings.new_zeros(())
    for t, share in enumerate(shares.tolist()):
        of_type = kind == t
        if share > 0:
            if not bool(of_type.any()):
                raise ValueError(f"batch has no {PAIR_TYPES[t]} pair, though the training set has some")
            total = total + share * losses[of_type].mean()
    return total


def batch_composition(n_normal: int, n_defect: int, batch_size: int) -> tuple[int, int]:
    """(normal, defective) images per batch: the training set's proportion, with at least two of a
    class that has two (so each pair type of the set occurs in every batch)."""
    if batch_size < 4:
        raise ValueError(f"batch_size must be >= 4 to hold every pair type, got {batch_size}")
    if n_normal < 1 or n_defect < 1:
        raise ValueError(f"need normal and defective images, got {n_normal} and {n_defect}")
    low, high = min(2, n_defect), min(n_defect, batch_size - min(2, n_normal))
    k_defect = int(np.clip(round(batch_size * n_defect / (n_normal + n_defect)), low, high))
    return min(batch_size - k_defect, n_normal), k_defect
