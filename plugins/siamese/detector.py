"""The few-shot Siamese detector: a twin network trained on pairs of normal and defective images,
with an attention module, the attention branch loss (ABL) and the pair balanced contrastive loss
(PBCL) of Takimoto et al., "Anomaly detection using Siamese network with attention mechanism for
few-shot learning" (Applied Artificial Intelligence, 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from pyanom.augment import random_dihedral
from pyanom.data import iterate_images
from pyanom.data.transforms import checked_image_size
from pyanom.detector import Detector
from pyanom.networks import load_module, module_tensors, seeded
from pyanom.training import LossHistory, Stage, StratifiedBatches, Trainer, check_checkpoint_settings, decode_once
from pyanom_plugins.siamese.losses import batch_composition, in_batch_pair_loss, make_pair_loss, pair_type_shares
from pyanom_plugins.siamese.network import BACKBONES, SiameseNetwork

DECISIONS = ("nearest_neighbour", "threshold")


@dataclass
class SiameseConfig:
    """Hyper-parameters; optimiser, batch size and epochs are the paper's.

    attention_layer: the backbone stage the attention module follows ("strideK" or the stage's
    own name: "conv2", "conv4", "conv7", "conv10", "conv13" for VGG16, "blocks.0".."blocks.6" for
    EfficientNet-Lite0); None leaves the attention module out (the paper's method I).
    attention_branch_loss: add ABL, the pair loss on output-2, weighted by abl_weight (method III).
    pair_loss: "pbcl" (alpha, beta weigh the pair types) or "cl" (plain contrastive loss).
    margin: m of the losses; None takes the median distance between the untrained embeddings of
    the training images, so the push term acts from the first step whatever the backbone's scale
    (a margin far below that scale leaves only the pull term until the embedding has shrunk).
    decision: "nearest_neighbour" labels an image with its nearest training embedding's class, as
    the paper decides; "threshold" compares the image score with the calibrated threshold.
    augment: show each training image in a random one of its eight orientations (flips and
    90-degree turns; `pyanom.augment`), not in the paper. Right for surfaces without a preferred
    orientation such as tiles; leave it off where orientation itself can be the defect.
    """

    backbone: str = "efficientnet_lite0"
    weights: Optional[str] = None  # file or URL; None = the backbone's default ImageNet weights
    image_size: int | tuple = 224  # int (square) or [height, width]
    attention_layer: Optional[str] = "stride8"
    attention_branch_loss: bool = True
    abl_weight: float = 1.0
    pair_loss: str = "pbcl"
    margin: Optional[float] = None
    alpha: float = 4.0
    beta: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 16
    epochs: int = 100
    decision: str = "nearest_neighbour"
    augment: bool = False
    checkpoint: Optional[str] = None  # training state file, resumed when present (see pyanom.training)
    checkpoint_every: int = 1  # epochs between checkpoint writes (and always after the last)
    seed: int = 0

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.pair_loss not in ("cl", "pbcl"):
            raise ValueError(f"pair_loss must be 'cl' or 'pbcl', got {self.pair_loss!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {self.decision!r}")
        if self.attention_branch_loss and self.attention_layer is None:
            raise ValueError("attention_branch_loss needs the attention module: set attention_layer "
                             "or attention_branch_loss=False")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.margin is not None and not self.margin > 0:
            raise ValueError(f"margin must be > 0 or None (from the data), got {self.margin}")
        for name in ("alpha", "beta", "abl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 4:
            raise ValueError(f"batch_size must be >= 4 (every pair type in each batch), got {self.batch_size}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        self.image_size = checked_image_size(self.image_size, minimum=32)
        check_checkpoint_settings(self.checkpoint, self.checkpoint_every)


class Siamese(Detector):
    """Siamese network with attention for few-shot inspection (Takimoto et al. 2022).

    Learns a 512-d embedding in which images of one class lie close and normal and defective
    images at least `margin` apart. Image score: distance to the centroid of the normal training
    embeddings (higher = more anomalous). Label: the class of the nearest training embedding.
    No anomaly map: `Prediction.anomaly_maps` is None; `explain()` returns the attention maps.
    """

    name = "siamese"
    supervision = "few-shot"
    Config = SiameseConfig

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.network: SiameseNetwork | None = None
        self.train_embeddings: torch.Tensor | None = None  # [N, 512] of the images trained on
        self.train_labels: torch.Tensor | None = None  # [N] 1 = defect
        self.normal_centroid: torch.Tensor | None = None  # [512]
        self.history = LossHistory()  # mean training loss per epoch
        self.margin: float | None = None  # the margin the last fit trained with

    def _build_network(self, pretrained: bool) -> SiameseNetwork:
        cfg = self.config
        network = seeded(lambda: SiameseNetwork(cfg.backbone, cfg.attention_layer, cfg.weights, pretrained), cfg.seed)
        return network.to(self.device)

    # -- training ------------------------------------------------------------------
    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        labels = torch.as_tensor(train.labels).long()
        n_defect = int(labels.sum())
        n_normal = len(labels) - n_defect
        if n_defect == 0:
            raise ValueError(f"{self.name} is a few-shot detector: its training set needs a few defective "
                             f"images besides the normal ones, and this one has none ({n_normal} normal "
                             "images). Add some defective images, or use an unsupervised detector.")
        if n_normal == 0:
            raise ValueError(f"{self.name}: the training set has no normal image ({n_defect} defective)")
        shares = pair_type_shares(n_normal, n_defect)
        k_normal, k_defect = batch_composition(n_normal, n_defect, cfg.batch_size)
        data = decode_once(train, device=self.device, progress=progress, desc=f"{self.name}: reading images")

        self.network = self._build_network(pretrained=True)
        self.margin = cfg.margin
        if self.margin is None:
            self.margin = float(torch.pdist(self._embed_all(data.floats(), 32)).median())
        pair_loss = make_pair_loss(cfg.pair_loss, margin=self.margin, alpha=cfg.alpha, beta=cfg.beta)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=cfg.learning_rate)

        def step(batch, ctx):
            x, batch_labels = data.floats(batch), data.labels[batch]
            if cfg.augment:
                (x,) = random_dihedral(ctx.rng, x)
            out = self.network(x)
            loss = in_batch_pair_loss(out["embedding"], batch_labels, shares, pair_loss)
            if cfg.attention_branch_loss:
                loss = loss + cfg.abl_weight * in_batch_pair_loss(out["output2"], batch_labels, shares, pair_loss)
            ctx.minimise(loss, optimizer)
            return {"loss": loss}

        sampler = StratifiedBatches(data.labels, {0: k_normal, 1: k_defect}, math.ceil(len(data) / cfg.batch_size))
        self.history = Trainer(self, data, progress=progress).run([
            Stage("training", "epochs", cfg.epochs, {"network": self.network}, {"network": optimizer}, sampler,
                  step, hint=f"lower learning_rate (now {cfg.learning_rate})")])
        self.train_embeddings = self._embed_all(data.floats(), 32)
        self.train_labels = data.labels
        self.normal_centroid = self.train_embeddings[self.train_labels == 0].mean(dim=0)

    # -- inference -------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.network is None:
            raise RuntimeError(f"{self.name}: not fitted")
        self.network.eval()
        with torch.inference_mode():
            return self.network(images.to(self.device, torch.float32))["embedding"]

    def _embed_all(self, images, batch_size: int) -> torch.Tensor:
        """Embeddings [N, 512] of a tensor [N, 3, S, S] in [0, 1] or of an InspectionSet."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
            batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        else:
            batches = iterate_images(images, batch_size)
        return torch.cat([self._embed(batch) for batch in batches])

    def _score(self, images: torch.Tensor):
        embeddings = self._embed(images)
        return torch.linalg.vector_norm(embeddings - self.normal_centroid, dim=1), None, embeddings

    def embed(self, images, *, batch_size: int = 32) -> torch.Tensor:
        """Output-1 of the trained twin, [N, 512], for a tensor [N, 3, S, S] or an InspectionSet."""
        return self._embed_all(images, batch_size).float().cpu()

    def nearest_labels(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[N] bool: whether each embedding's nearest training embedding is a defect."""
        distance = torch.cdist(embeddings.to(self.train_embeddings), self.train_embeddings)
        return self.train_labels[distance.argmin(dim=1)].bool().cpu()

    def _decide(self, scores: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The class of the nearest training embedding (the paper's decision), or the threshold."""
        if self.config.decision == "nearest_neighbour":
            return self.nearest_labels(embeddings)
        return super()._decide(scores)

    @property
    def decided_by(self) -> str:
        return "nearest_training_image" if self.config.decision == "nearest_neighbour" else "threshold"

    def explain(self, images: torch.Tensor) -> torch.Tensor:
        """Attention maps [B, S, S] in (0, 1) at the input resolution: where the network looks."""
        if self.network is None:
            raise RuntimeError(f"{self.name}: not fitted")
        if self.network.attention_layer is None:
            raise ValueError(f"{self.name}: this model has no attention module (attention_layer=None)")
        self.network.eval()
        with torch.inference_mode():
            attention = self.network(images.to(self.device, torch.float32))["attention"]
        return F.interpolate(attention, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        from pyanom.export.graph import DEFAULT_KNN_CHUNK
        from pyanom_plugins.siamese.export import SiameseGraph

        return SiameseGraph(self, knn_chunk or DEFAULT_KNN_CHUNK)

    # -- persistence -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**module_tensors("network", self.network), "train_embeddings": self.train_embeddings,
                "train_labels": self.train_labels, "normal_centroid": self.normal_centroid, **self.history.tensors()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.network = self._build_network(pretrained=False)
        load_module("network", self.network, tensors)
        self.network.eval()
        self.train_embeddings = tensors["train_embeddings"].to(self.device, torch.float32)
        self.train_labels = tensors["train_labels"].to(self.device, torch.int64)
        self.normal_centroid = tensors["normal_centroid"].to(self.device, torch.float32)
        self.history = LossHistory.from_tensors(tensors)
