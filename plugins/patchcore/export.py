"""PatchCore's inference as one traceable module, for pyanom.export."""

from __future__ import annotations

import torch
from torch import nn

from pyanom.anomaly_map import upsample_scores
from pyanom.export.graph import nearest_neighbour
from pyanom.ops import knn_scores


class PatchCoreGraph(nn.Module):
    """Backbone, patch embedding, chunked nearest-neighbour search against the memory bank (a
    constant), eq. 7 reweighting and the smoothed anomaly map, as PatchCore._score computes them.

    The reweighting needs the neighbours of the worst patch's nearest memory entry m* within the
    bank; they depend on the bank alone, so they are found once here for every entry (a [N, k]
    index table) instead of by a bank x bank search inside the graph.
    """

    def __init__(self, detector, knn_chunk: int):
        super().__init__()
        cfg = detector.config
        self.backbone = detector.backbone
        self.patch_features = detector._patch_features
        self.blur_sigma = float(cfg.blur_sigma)
        self.knn_chunk = int(knn_chunk)
        bank = detector.memory_bank.detach().float().contiguous()
        self.register_buffer("memory_bank", bank)
        self.register_buffer("bank_sq_norms", (bank * bank).sum(1))
        self.reweight = bool(cfg.reweight and cfg.num_neighbors > 1 and len(bank) > 1)
        if self.reweight:
            k = min(cfg.num_neighbors, len(bank))
            self.register_buffer("support", knn_scores(bank, bank, k)[1])

    def forward(self, images: torch.Tensor):
        emb = self.patch_features(self.backbone.traceable(images))
        b, d, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        dist, nearest = nearest_neighbour(queries, self.memory_bank, self.bank_sq_norms, self.knn_chunk)
        patch_scores = dist.reshape(b, h * w)
        image_scores, worst = patch_scores.max(dim=1)
        if self.reweight:
            rows = torch.arange(b, device=images.device) * (h * w) + worst
            test, m_star = queries[rows], nearest[rows]
            distance = torch.linalg.vector_norm(test[:, None, :] - self.memory_bank[self.support[m_star]], dim=-1)
            image_scores = image_scores * (1 - torch.softmax(distance, dim=1)[:, 0])
        maps = upsample_scores(patch_scores.reshape(b, h, w), images.shape[-2:], self.blur_sigma)
        return image_scores, maps
