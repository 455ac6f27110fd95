"""PatchCore and SA-PatchCore detectors: a coreset memory bank of normal patch features,
nearest-neighbour distance as the anomaly score."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm

from pyanom.anomaly_map import upsample_scores
from pyanom.detector import Detector, iterate_images
from pyanom.features import create_backbone
from pyanom.ops import greedy_coreset, knn_scores
from pyanom_plugins.patchcore.embedding import patch_embedding


@dataclass
class PatchCoreConfig:
    """Hyper-parameters; defaults follow the PatchCore paper and anomalib."""

    backbone: str = "efficientnet_lite0"
    weights: Optional[str] = None  # file or URL; None = the backbone's default pretrained weights
    layers: tuple = ("stride8", "stride16")
    image_size: int = 256
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    num_neighbors: int = 9  # memory entries whose neighbourhood reweights the image score
    reweight: bool = True
    blur_sigma: float = 4.0
    batch_size: int = 8  # images per backbone pass: small keeps activations (and RSS) down, no slower
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if len(self.layers) != 2:
            raise ValueError(f"layers must name two backbone taps (fine, coarse), got {self.layers}")
        if self.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")


@dataclass
class SAPatchCoreConfig(PatchCoreConfig):
    """SA-PatchCore uses a 1% coreset, as in its paper."""

    coreset_ratio: float = 0.01


class PatchCore(Detector):
    """PatchCore (Roth et al., CVPR 2022): locally aware patch features of a frozen backbone,
    a greedy coreset of them as memory, kNN distance as the anomaly score."""

    name = "patchcore"
    supervision = "unsupervised"
    Config = PatchCoreConfig
    self_attend = False

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.memory_bank: torch.Tensor | None = None
        self._backbone = None

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = create_backbone(self.config.backbone, layers=tuple(self.config.layers),
                                             weights=self.config.weights, device=self.device)
        return self._backbone

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features [B, h*w, D] and the grid size (h, w), config.batch_size images at a time."""
        parts = [patch_embedding(self.backbone(chunk), tuple(self.config.layers), self_attend=self.self_attend)
                 for chunk in images.split(self.config.batch_size)]
        emb = torch.cat(parts)
        b, d, h, w = emb.shape
        return emb.permute(0, 2, 3, 1).reshape(b, h * w, d), (h, w)

    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        batches = math.ceil(len(train) / cfg.batch_size)
        bank, filled = None, 0
        with torch.inference_mode():
            for images in tqdm(iterate_images(train, cfg.batch_size), total=batches,
                               desc=f"{self.name}: patch features", disable=not progress):
                emb, _ = self._embed(images.to(self.device))
                rows = emb.reshape(-1, emb.shape[-1])
                if bank is None:  # preallocate: peak memory is the bank, not a list of batches
                    bank = torch.empty(len(train) * emb.shape[1], rows.shape[1], device=self.device)
                bank[filled:filled + len(rows)] = rows
                filled += len(rows)
        k = max(1, math.ceil(cfg.coreset_ratio * len(bank)))
        with tqdm(total=1, desc=f"{self.name}: coreset {k} of {len(bank)}", disable=not progress) as bar:
            chosen = greedy_coreset(bank, k, projection_dim=cfg.projection_dim, seed=cfg.seed)
            bar.update()
        self.memory_bank = bank[chosen].contiguous()

    def _score(self, images: torch.Tensor):
        if self.memory_bank is None:
            raise RuntimeError(f"{self.name}: not fitted")
        emb, (h, w) = self._embed(images)
        b, n_patches, d = emb.shape
        queries = emb.reshape(-1, d)
        dist, nearest = knn_scores(queries, self.memory_bank, 1)
        patch_scores = dist[:, 0].reshape(b, n_patches)
        image_scores, worst = patch_scores.max(dim=1)
        if self.config.reweight and self.config.num_neighbors > 1 and len(self.memory_bank) > 1:
            image_scores = image_scores * self._reweight(queries, nearest[:, 0], worst, n_patches)
        maps = upsample_scores(patch_scores.reshape(b, h, w), images.shape[-2:], self.config.blur_sigma)
        return image_scores, maps

    def _reweight(self, queries, nearest, worst, n_patches) -> torch.Tensor:
        """PatchCore eq. 7: w = 1 - softmax over the distances from the worst test patch to its
        nearest memory entry m* and m*'s own neighbours, taken at m*. A patch far from m* but
        close to m*'s neighbourhood (a dense, ordinary region of memory) is scored down."""
        rows = torch.arange(len(worst), device=worst.device) * n_patches + worst
        test, m_star = queries[rows], nearest[rows]
        k = min(self.config.num_neighbors, len(self.memory_bank))
        _, support = knn_scores(self.memory_bank[m_star], self.memory_bank, k)
        dist = torch.linalg.vector_norm(test[:, None, :] - self.memory_bank[support], dim=-1)
        return 1 - torch.softmax(dist, dim=1)[:, 0]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"memory_bank": self.memory_bank}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.memory_bank = tensors["memory_bank"].to(self.device, torch.float32).contiguous()


class SAPatchCore(PatchCore):
    """SA-PatchCore (Ishida et al., IEEE Access 2023): PatchCore whose stride-16 features pass
    through parameter-free self-attention, to catch anomalies of arrangement (co-occurrence)."""

    name = "sa_patchcore"
    Config = SAPatchCoreConfig
    self_attend = True
