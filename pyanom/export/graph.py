"""Pieces of exported graphs that plugins share: nearest-neighbour search against a constant
memory bank in bank chunks of bounded size, and the labels a graph returns.

Everything here is plain traceable PyTorch (torch.export / ONNX): no custom ops, no
data-dependent Python control flow.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_KNN_CHUNK = 1024
"""Bank rows compared with all queries at once: the largest kNN intermediate of a graph is
[B * patches, DEFAULT_KNN_CHUNK] floats (4 MiB per image of 1024 patches), whatever the bank size."""


def nearest_neighbour(queries: torch.Tensor, bank: torch.Tensor, bank_sq_norms: torch.Tensor,
                      chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance [Q] from each query [Q, D] to its nearest bank row, and that row's index [Q]
    (int64; ties go to the lowest index), comparing `chunk` bank rows at a time.

    Squared distances are ||q||^2 - 2 q.b + ||b||^2, the expansion pyanom.ops.knn_scores uses,
    so scores match the native kernels to float rounding. The loop runs at export time and
    unrolls into one [Q, chunk] tile per step, each reduced to [Q] right after it in graph
    order (the order onnxruntime's and OpenVINO's CPU executors follow, freeing the tile).
    """
    q_sq = (queries * queries).sum(1, keepdim=True)
    best = best_index = None
    for start in range(0, bank.shape[0], chunk):
        block = bank[start:start + chunk]
        d2 = q_sq - 2 * queries @ block.T + bank_sq_norms[start:start + chunk]
        value, index = d2.min(1)
        index = index + start
        if best is None:
            best, best_index = value, index
        else:
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index, best_index)
    return best.clamp_min(0).sqrt(), best_index


class LabelledGraph(nn.Module):
    """What pyanom.export traces: a detector's export module with labels added.

    The module maps images [B, 3, S, S] in [0, 1] to (image_scores, anomaly_maps or None) or
    (image_scores, anomaly_maps or None, labels); labels default to image_scores >= threshold,
    the rule of Detector.predict.
    """

    def __init__(self, module: nn.Module, threshold: float):
        super().__init__()
        self.module = module
        self.threshold = float(threshold)

    def forward(self, images: torch.Tensor):
        out = self.module(images)
        scores, maps = out[0], out[1]
        labels = out[2] if len(out) > 2 else scores >= self.threshold
        return (scores, labels) if maps is None else (scores, maps, labels)


class ScoreGraph(nn.Module):
    """A detector whose `_score` is already plain torch (networks, no custom ops, no
    data-dependent branches) as an export module: `score` is traced as it is, with `networks`
    registered so their weights become the graph's initializers."""

    def __init__(self, score, networks: dict[str, nn.Module]):
        super().__init__()
        self.networks = nn.ModuleDict(networks)
        self.score = score

    def forward(self, images: torch.Tensor):
        return self.score(images)


class AntialiasedResize(nn.Module):
    """F.interpolate(mode="bilinear", antialias=True, align_corners=False) from (h, w) to
    out x out as two constant matrices (rows @ image @ cols^T): the resize is linear and
    separable, and the ONNX exporter has no antialiased Resize."""

    def __init__(self, size, out: int):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else size
        self.register_buffer("rows", self._matrix(h, out))
        self.register_buffer("cols", self._matrix(w, out))

    @staticmethod
    def _matrix(size: int, out: int) -> torch.Tensor:
        # Resizing the identity along its height only gives the matrix: column j is R e_j.
        eye = torch.eye(size, dtype=torch.float64)[None, None]
        return torch.nn.functional.interpolate(eye, size=(out, size), mode="bilinear", align_corners=False,
                                               antialias=True)[0, 0].float()  # [out, size]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.rows @ images @ self.cols.T
