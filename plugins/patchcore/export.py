"""PatchCore's and SA-PatchCore's inference as one traceable module each, for pyanom.export."""

from __future__ import annotations

import torch
from torch import nn

from pyanom.anomaly_map import upsample_scores
from pyanom.export.graph import DEFAULT_KNN_CHUNK, nearest_neighbour
from pyanom.ops import knn_scores, reference
from pyanom_plugins.patchcore.embedding import context_descriptor, patch_embedding


class PatchCoreGraph(nn.Module):
    """Backbone, patch embedding, chunked nearest-neighbour search against the memory bank (a
    constant), eq. 7 reweighting and the smoothed anomaly map, as PatchCore._score computes them.

    The reweighting needs the neighbours of the worst patch's nearest memory entry m* within the
    bank; they depend on the bank alone, so they are found once here for every entry (a [N, k]
    index table) instead of by a bank x bank search inside the graph. `self_attend`: SA-PatchCore's
    spatial form (eq. 4 on the stride-16 map, by the plain-torch twin of pyanom.ops.self_attention).
    """

    def __init__(self, detector, knn_chunk: int | None = None, *, self_attend: bool = False):
        super().__init__()
        cfg = detector.config
        self.backbone = detector.backbone
        self.layers = tuple(cfg.layers)
        self.self_attend = self_attend
        self.blur_sigma = float(cfg.blur_sigma)
        self.knn_chunk = int(knn_chunk or DEFAULT_KNN_CHUNK)
        bank = detector.memory_bank.detach().float().contiguous()
        self.register_buffer("memory_bank", bank)
        self.register_buffer("bank_sq_norms", (bank * bank).sum(1))
        self.reweight = bool(cfg.reweight and cfg.num_neighbors > 1 and len(bank) > 1)
        if self.reweight:
            k = min(cfg.num_neighbors, len(bank))
            self.register_buffer("support", knn_scores(bank, bank, k)[1])

    def forward(self, images: torch.Tensor):
        return self.patchcore(self.backbone.traceable(images), images.shape[-2:])

    def patchcore(self, features: dict[str, torch.Tensor], size) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_scores [B], anomaly_maps [B, *size]) from one backbone pass."""
        emb = patch_embedding(features, self.layers, self_attend=self.self_attend, attention=reference.self_attention)
        b, d, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        dist, nearest = nearest_neighbour(queries, self.memory_bank, self.bank_sq_norms, self.knn_chunk)
        patch_scores = dist.reshape(b, h * w)
        image_scores, worst = patch_scores.max(dim=1)
        if self.reweight:
            rows = torch.arange(b, device=queries.device) * (h * w) + worst
            test, m_star = queries[rows], nearest[rows]
            distance = torch.linalg.vector_norm(test[:, None, :] - self.memory_bank[self.support[m_star]], dim=-1)
            image_scores = image_scores * (1 - torch.softmax(distance, dim=1)[:, 0])
        maps = upsample_scores(patch_scores.reshape(b, h, w), size, self.blur_sigma)
        return image_scores, maps


def channel_self_attention(x: torch.Tensor) -> torch.Tensor:
    """pyanom.ops.reference.channel_self_attention with the logits as a broadcast product
    (v * v^T) instead of a matmul of inner size 1: the same floats, but no MatMul-Softmax-MatMul
    chain, which openvino.convert_model fuses into a ScaledDotProductAttention of head size 1
    whose CPU kernel gets these logits (up to ~1e4) wrong (OpenVINO 2026.4: scores off by up to 73 %)."""
    b, c, h, w = x.shape
    v = x.reshape(b, c, h * w, 1)
    return (torch.softmax(v * v.transpose(2, 3), dim=-1) @ v).reshape(b, c, h, w)


class ChannelAttentionGraph(PatchCoreGraph):
    """SA-PatchCore with attention="channel": PatchCore's graph plus the part's context (the
    attention layer's map through channel_self_attention above, with the fitted per-channel scale
    and the temperature, averaged over the image), its distance to the nearest training part's
    context (a constant [N, C]), and image score = PatchCore's + the context penalty of
    SAPatchCore._context_penalty, from the fitted medians and spreads.

    Besides the kNN tiles, the attention holds its logits, [B, C, L, L] for L positions of the
    attention layer's map (192 x 64 x 64 per image at 256 px: under the backbone's widest map).
    """

    def __init__(self, detector, knn_chunk: int | None = None):
        super().__init__(detector, knn_chunk)
        cfg = detector.config
        self.attention_layer = cfg.attention_layer
        self.temperature = float(cfg.attention_temperature)
        self.weight, self.floor = float(cfg.context_weight), float(cfg.context_floor)
        contexts = detector.context_descriptors.detach().float().contiguous()
        self.register_buffer("attention_scale", detector.attention_scale.detach().float())
        self.register_buffer("descriptor_scale", detector.descriptor_scale.detach().float())
        self.register_buffer("context_descriptors", contexts)
        self.register_buffer("context_sq_norms", (contexts * contexts).sum(1))
        for name in ("context_median", "context_spread", "score_spread"):
            self.register_buffer(name, getattr(detector, name).detach().float().reshape(()))

    def forward(self, images: torch.Tensor):
        features = self.backbone.traceable(images)
        image_scores, maps = self.patchcore(features, images.shape[-2:])
        context = context_descriptor(features[self.attention_layer], self.attention_scale, self.temperature,
                                     attention=channel_self_attention) / self.descriptor_scale
        dist, _ = nearest_neighbour(context, self.context_descriptors, self.context_sq_norms, self.knn_chunk)
        excess = ((dist - self.context_median) / self.context_spread - self.floor).clamp(min=0)
        return image_scores + self.weight * self.score_spread * excess, maps
