"""The torch twins of the kernels: each op's torch backend (and its only path where no compiled
module is installed), and what the tests compare the native kernels against.

Written for clarity first; knn_scores and self_attention also bound their memory as the kernels
do, since they serve as the fallback. Inputs are assumed checked by the public ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_projection(features: torch.Tensor, projection_dim: int, seed: int) -> torch.Tensor:
    """Gaussian Johnson-Lindenstrauss projection of [N, D] rows to projection_dim columns.

    Distances are preserved up to a small distortion, which is all k-center greedy needs,
    and the selection loop gets D / projection_dim times cheaper. Skipped when
    D <= projection_dim. The matrix is drawn on the CPU from `seed`, so every device and
    backend projects identically.
    """
    d = features.shape[1]
    if d <= projection_dim:
        return features
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, projection_dim, generator=gen, dtype=torch.float64) / math.sqrt(projection_dim)
    return features @ w.to(device=features.device, dtype=features.dtype)


def coreset_start(n: int, seed: int) -> int:
    """The first center of the greedy selection, drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(n, (1,), generator=gen))


def squared_distances(points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """||points - center||^2 per row, accumulated in float64 so backends agree to the last bit."""
    return (points.double() - center.double()).pow(2).sum(dim=1)


def greedy_select(points: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """k-center greedy: start, then repeatedly the point farthest from the chosen set.

    Ties go to the lowest index (torch.argmax returns the first maximum).
    """
    min_dist = squared_distances(points, points[start])
    chosen = [start]
    for _ in range(1, k):
        nxt = int(torch.argmax(min_dist))
        chosen.append(nxt)
        min_dist = torch.minimum(min_dist, squared_distances(points, points[nxt]))
    return torch.tensor(chosen, dtype=torch.int64, device=points.device)


def greedy_coreset(features: torch.Tensor, k: int, *, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None) -> torch.Tensor:
    """Indices [k] (int64, selection order) of a k-center greedy coreset of the rows of features.

    k >= N returns all N indices in order.
    """
    n = features.shape[0]
    if k >= n:
        return torch.arange(n, dtype=torch.int64, device=features.device)
    points = random_projection(features, projection_dim, seed)
    first = coreset_start(n, seed) if start is None else start
    return greedy_select(points, k, first)


def knn_scores(queries: torch.Tensor, bank: torch.Tensor, k: int,
               chunk_size: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest Euclidean distances [Q, k] (ascending) from each query to the bank, and
    their bank indices [Q, k] (int64), ties to the lowest index.

    Tiles of at most chunk_size values of ||b||^2 - 2 q.b (one addmm each) are reduced with
    topk; ||q||^2, constant along a row, is added to the survivors only. So no Q x N matrix is
    held, at the expansion's precision (see pyanom.ops.knn).
    """
    q, n = queries.shape[0], bank.shape[0]
    cols = min(n, max(1, chunk_size // min(q, 128)))
    rows = min(q, max(1, chunk_size // cols))
    bank_sq = bank.pow(2).sum(1)
    query_sq = queries.pow(2).sum(1, keepdim=True)
    tile = queries.new_empty(rows * cols)
    distances = queries.new_empty(q, k)
    indices = torch.empty(q, k, dtype=torch.int64, device=queries.device)
    for r0 in range(0, q, rows):
        block, block_sq = queries[r0:r0 + rows], query_sq[r0:r0 + rows]
        best_d = best_i = None
        for c0 in range(0, n, cols):
            part = tile[:block.shape[0] * min(cols, n - c0)].view(block.shape[0], -1)
            torch.addmm(bank_sq[c0:c0 + cols], block, bank[c0:c0 + cols].T, alpha=-2, out=part)
            cand_d, cand_i = _smallest(part, min(k, part.shape[1]))
            cand_d, cand_i = _in_order(cand_d.add_(block_sq).clamp_min_(0), cand_i + c0)
            if best_d is None:
                best_d, best_i = cand_d, cand_i
            else:  # both in (distance, index) order, every kept index below every candidate's
                best_d, order = torch.cat([best_d, cand_d], 1).sort(dim=1, stable=True)
                best_i = torch.cat([best_i, cand_i], 1).gather(1, order)
                best_d, best_i = best_d[:, :k], best_i[:, :k]
        distances[r0:r0 + rows] = best_d.sqrt()
        indices[r0:r0 + rows] = best_i
    return distances, indices


def _smallest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest of each row and their columns, in no particular order. Where the k-th
    and (k+1)-th tie, topk's choice among them is arbitrary: those rows are sorted stably."""
    if k == values.shape[1]:
        return values.clone(), torch.arange(k, device=values.device).expand_as(values).clone()
    top, cols = values.topk(k + 1, dim=1, largest=False, sorted=True)
    boundary_tie = top[:, k - 1] == top[:, k]
    top, cols = top[:, :k], cols[:, :k]
    if bool(boundary_tie.any()):
        tied = boundary_tie.nonzero().squeeze(1)
        v, c = values[tied].sort(dim=1, stable=True)
        top[tied], cols[tied] = v[:, :k], c[:, :k]
    return top, cols


def _in_order(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows sorted by (value, index): by index, then stably by value."""
    index, order = index.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, stable=True)
    return values, index.gather(1, order)


def self_attention(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free self-attention over the H*W positions of each map (SA-PatchCore, eq. 4).

    With X the map as [H*W, C]: softmax(X X^T / sqrt(C)) X, returned as a contiguous
    [B, C, H, W]: one attention head of dimension C, which scaled_dot_product_attention
    evaluates without holding the L x L weights where it can.
    """
    b, c, h, w = x.shape
    tokens = x.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)  # [B, 1, L, C]
    out = F.scaled_dot_product_attention(tokens, tokens, tokens, scale=1.0 / math.sqrt(c))
    return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w).contiguous()


def channel_self_attention(x: torch.Tensor) -> torch.Tensor:
    """Per-channel self-attention over the H*W positions of each map (the SA-PatchCore authors'
    released code, run.py): for every channel c, out_c[i] = sum_j softmax_j(x_c[i] x_c[j]) x_c[j],
    no scaling. Returns [B, C, H, W]; holds the B x C x L x L logits.
    """
    b, c, h, w = x.shape
    v = x.reshape(b, c, h * w, 1)
    weights = torch.softmax(v @ v.transpose(2, 3), dim=-1)  # [B, C, L, L]
    return (weights @ v).reshape(b, c, h, w).contiguous()


def concentrated_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 0.5,
                      lam: float = 0.95, eps: float = 1e-6, detach_factor: bool = True) -> torch.Tensor:
    """Concentrated loss (Wang et al. 2022): mean over images of (1 - IoU)^gamma * (lam Dice + (1 - lam) BCE).

    Per image, with p = sigmoid(logits) and y the target:
      IoU  = sum(p y) / (sum(p) + sum(y) - sum(p y) + eps)   (intersection over union, as the
             paper's text defines it; its eq. 2 prints 2 sum(p y) in the numerator, which lets
             "IoU" exceed 1 and leaves (1 - IoU)^0.5 undefined)
      Dice = 1 - (2 sum(p y) + eps) / (sum(p) + sum(y) + eps)
      BCE  = mean pixel binary cross-entropy, computed from the logits (stable).
    The factor (1 - IoU)^gamma focuses the loss on badly segmented images. With
    detach_factor it is a weight without gradient; otherwise its base is clamped to at least
    eps so the gradient stays finite as IoU -> 1.
    """
    b = logits.shape[0]
    z = logits.reshape(b, -1)
    y = target.reshape(b, -1).to(z.dtype)
    p = torch.sigmoid(z)
    inter = (p * y).sum(dim=1)
    total = p.sum(dim=1) + y.sum(dim=1)
    iou = inter / (total - inter + eps)
    dice = 1 - (2 * inter + eps) / (total + eps)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(dim=1)
    factor = (1 - iou).clamp_min(eps).pow(gamma)
    if detach_factor:
        factor = factor.detach()
    return (factor * (lam * dice + (1 - lam) * bce)).mean()
