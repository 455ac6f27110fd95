"""Training-time augmentation by symmetries of the image.

A mirrored good part is still a good part (`random_hflip`). Surfaces such as magnetic tiles have
no preferred orientation at all, so a flipped or rotated defect is still a defect of the same
kind: with a few dozen defective examples, showing each in its eight orientations is the cheapest
way to more data (`random_dihedral`).
"""

from __future__ import annotations

import torch

DIHEDRAL = 8  # the square's symmetries: 4 rotations, each with or without a mirror image


def random_dihedral(generator: torch.Generator, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One random symmetry of the square per sample, the same one for every tensor given (an image
    batch and its masks, say). Each tensor is [B, C, S, S]; the draw uses `generator` only."""
    first = batches[0]
    for x in batches:
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or len(x) != len(first):
            raise ValueError(f"random_dihedral needs square [B, C, S, S] batches of one length, "
                             f"got {[tuple(t.shape) for t in batches]}")
    choice = torch.randint(DIHEDRAL, (len(first),), generator=generator).to(first.device)
    out = [x.clone() for x in batches]
    for k in range(1, DIHEDRAL):
        chosen = choice == k
        if not bool(chosen.any()):
            continue
        for x, y in zip(batches, out):
            part = torch.rot90(x[chosen], k // 2, dims=(-2, -1))
            y[chosen] = part.flip(-1) if k % 2 else part
    return tuple(out)


def random_hflip(generator: torch.Generator, batch: torch.Tensor) -> torch.Tensor:
    """Each sample of [B, C, H, W] mirrored left-right with probability 1/2 (one draw per sample
    from `generator`)."""
    flip = torch.rand(len(batch), generator=generator) < 0.5
    return torch.where(flip.to(batch.device)[:, None, None, None], batch.flip(-1), batch)
