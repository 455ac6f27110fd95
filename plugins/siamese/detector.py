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
from pyanom.settings import Size, setting
from pyanom.training import (LossHistory, Stage, StratifiedBatches, Trainer, TrainingSettings, decode_once,
                             load_module, module_tensors, seeded)
from pyanom_plugins.siamese.losses import batch_composition, in_batch_pair_loss, make_pair_loss, pair_type_shares
from pyanom_plugins.siamese.network import BACKBONES, SiameseNetwork

DECISIONS = ("nearest_neighbour", "threshold")


def _image_size(size):
    return checked_image_size(size, minimum=32)


@dataclass
class SiameseConfig(TrainingSettings):
    """The Siamese network's settings; optimiser, batch size and epochs are the paper's.

    attention_layer names the backbone stage the attention module follows ("strideK" or the stage's
    own name: "conv2".."conv13" for VGG16, "blocks.0".."blocks.6" for EfficientNet-Lite0); null
    leaves the module out (the paper's method I). A null margin takes the median distance between
    the untrained embeddings of the training images, so the push term acts from the first step
    whatever the backbone's scale.
    """

    backbone: str = setting("efficientnet_lite0", "pretrained backbone of the twin network", choices=BACKBONES)
    weights: Optional[str] = setting(None, "backbone weights: a file or URL; null: the default ImageNet weights")
    image_size: Size = setting(224, "images are resized to this (an int: square)", check=_image_size)
    attention_layer: Optional[str] = setting("stride8", "backbone stage the attention module follows; null: no "
                                             "attention module (method I)")
    attention_branch_loss: bool = setting(True, "add ABL, the pair loss on the attention branch's output "
                                          "(method III)")
    abl_weight: float = setting(1.0, "weight of ABL", bounds=(0, None))
    pair_loss: str = setting("pbcl", "pbcl: pair types weighed by alpha and beta; cl: plain contrastive loss",
                             choices=("pbcl", "cl"))
    margin: Optional[float] = setting(None, "margin m of the pair losses; null: from the data (see above)",
                                      bounds=(0, None), open="low")
    alpha: float = setting(4.0, "PBCL weight of the pull between two defective images (rare pairs weighed up)",
                           bounds=(0, None))
    beta: float = setting(1.0, "PBCL weight of the push between a normal and a defective image", bounds=(0, None))
    learning_rate: float = setting(1e-5, "Adam learning rate", bounds=(0, None), open="low")
    batch_size: int = setting(16, "images per step (every pair type in each batch)", bounds=(4, None))
    epochs: int = setting(100, "training epochs", bounds=(0, None))
    decision: str = setting("nearest_neighbour", "label by the nearest training image's class (the paper), or "
                            "by the calibrated threshold", choices=DECISIONS)
    augment: bool = setting(False, "training images in a random one of their eight orientations (not in the "
                            "paper; for surfaces without a preferred orientation)")

    def validate(self) -> None:
        if self.attention_branch_loss and self.attention_layer is None:
            raise ValueError("attention_branch_loss needs the attention module: set attention_layer "
                             "or attention_branch_loss=false")


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
