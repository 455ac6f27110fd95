"""PatchCore and SA-PatchCore detectors: a coreset memory bank of normal patch features,
nearest-neighbour distance as the anomaly score."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm

from pyanom.anomaly_map import upsample_scores
from pyanom.data.transforms import checked_image_size, pair
from pyanom.data import iterate_images
from pyanom.detector import Detector
from pyanom.features import checked_precision, create_backbone
from pyanom.memory_bank import MODES, build_memory_bank
from pyanom.ops import knn_scores
from pyanom.tiling import checked_tiling
from pyanom_plugins.patchcore.embedding import context_descriptor, context_input, patch_embedding
from pyanom_plugins.patchcore.tiling import score_tiled, tile_features

ATTENTIONS = ("channel", "spatial")


@dataclass
class PatchCoreConfig:
    """Hyper-parameters; defaults follow the PatchCore paper and anomalib."""

    backbone: str = "efficientnet_lite0"
    weights: Optional[str] = None  # file or URL; None = the backbone's default pretrained weights
    layers: tuple = ("stride8", "stride16")
    # The backbone's arithmetic: "bfloat16" makes predict ~1.4x faster on CPUs with AVX512-BF16 or
    # AMX, at equal AUROC on bottle and magnetic tile (benchmarks/RESULTS.md); slower on CPUs without.
    precision: str = "float32"
    image_size: int | tuple | None = 256  # int (square) or [height, width]; None (tiling only): each image's own
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    num_neighbors: int = 9  # memory entries whose neighbourhood reweights the image score
    reweight: bool = True
    blur_sigma: float = 4.0
    batch_size: int = 8  # images per backbone pass: small keeps activations (and RSS) down, no slower
    seed: int = 0
    coreset_mode: str = "auto"  # exact (all features, then one coreset), sharded (bounded memory) or auto
    memory_budget_mb: int = 2048  # auto stays exact while all patch features fit this; sharded shards fill half
    shard_images: Optional[int] = None  # images per shard when sharded; None: from memory_budget_mb
    shard_oversample: float = 2.0  # each shard keeps this many times its share of the final coreset
    # Tiling (plugins/patchcore/tiling.py): tiles of tile_size (int or [height, width]) cut from each
    # image after image_size, tile_overlap pixels shared by neighbours; None scores the whole image.
    tile_size: int | tuple | None = None
    tile_overlap: int = 0

    def __post_init__(self):
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if len(self.layers) != 2:
            raise ValueError(f"layers must name two backbone taps (fine, coarse), got {self.layers}")
        if self.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        checked_precision(self.precision)
        if self.image_size is not None:
            self.image_size = checked_image_size(self.image_size, minimum=32)
        self.tile_size, self.tile_overlap = checked_tiling(self.tile_size, self.tile_overlap)
        if self.tile_size is not None:
            tile = pair("tile_size", checked_image_size(self.tile_size, minimum=32, name="tile_size"))
            if self.image_size is not None and all(t >= s for t, s in zip(tile, pair("image_size", self.image_size))):
                raise ValueError(f"tile_size {self.tile_size} covers the whole {self.image_size} image: set "
                                 "image_size=None (null) to tile each image at its own resolution, or a larger one")
        elif self.image_size is None:
            raise ValueError("image_size=None keeps each image's own size, which only tiling can take: "
                             "set tile_size, or an image_size")
        if self.coreset_mode not in MODES:
            raise ValueError(f"coreset_mode must be one of {', '.join(MODES)}, got {self.coreset_mode!r}")
        if self.memory_budget_mb < 1 or (self.shard_images is not None and self.shard_images < 1):
            raise ValueError("memory_budget_mb and shard_images must be >= 1")
        if self.shard_oversample < 1:
            raise ValueError(f"shard_oversample must be >= 1, got {self.shard_oversample}")


@dataclass
class SAPatchCoreConfig(PatchCoreConfig):
    """SA-PatchCore uses a 1% coreset, as in its paper.

    attention "channel": the authors' released form (per-channel softmax(x_i x_j) over positions)
    on `attention_layer`, rectified, standardised per channel on the training images and scaled by
    `attention_temperature`, then averaged over the image into one context vector per part. A
    part's context distance (to the nearest training part's) is measured in spreads of the
    training parts' own leave-one-out distances; beyond `context_floor` spreads above their
    median, `context_weight` times that excess, in spreads of PatchCore's leave-one-out scores of
    good parts, is added to PatchCore's image score. Both spreads are learnt at fit, so the two
    defaults mean the same on any part. "spatial": eq. 4 as printed (softmax(X X^T / sqrt(C)) X)
    in place of the stride-16 features.
    """

    coreset_ratio: float = 0.01
    attention: str = "channel"
    attention_layer: str = "blocks.5"  # EfficientNet-Lite0's stride-32 stage (192 channels)
    # softmax sharpness of the channel attention; bounds (0, 100]; low: the context is the
    # channel's mean over the image, high: its maximum
    attention_temperature: float = 4.0
    # PatchCore spreads added per context spread beyond the floor; bounds (0, 100]
    context_weight: float = 1.0
    # context spreads above the good parts' median that a part's context may lie without a
    # penalty; bounds [0, 20]
    context_floor: float = 2.5

    def __post_init__(self):
        super().__post_init__()
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.attention == "channel" and self.attention_layer in self.layers:
            raise ValueError(f"attention_layer must differ from layers {tuple(self.layers)}, "
                             f"got {self.attention_layer!r}")
        if self.attention == "channel" and self.tile_size is not None:
            raise ValueError("attention='channel' reads the whole part at once: it cannot score tiles "
                             "(tile_size); use attention='spatial' or patchcore to tile")
        for name in ("attention_temperature", "context_weight"):
            if not 0 < getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in (0, 100], got {getattr(self, name)}")
        if not 0 <= self.context_floor <= 20:
            raise ValueError(f"context_floor must be in [0, 20] spreads, got {self.context_floor}")


class PatchCore(Detector):
    """PatchCore (Roth et al., CVPR 2022): locally aware patch features of a frozen backbone,
    a greedy coreset of them as memory, kNN distance as the anomaly score."""

    name = "patchcore"
    supervision = "unsupervised"
    Config = PatchCoreConfig

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.memory_bank = None  # a tensor [N, D], or a ShardedMemoryBank held by Ray actors (shard_memory_bank)
        self.memory_plan = None  # how the last fit built the memory bank (pyanom.memory_bank.MemoryBankPlan)
        self._backbone = None
        self._ray = None  # cluster settings when fitting on Ray (use_ray)

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = create_backbone(self.config.backbone, layers=tuple(self.config.layers),
                                             weights=self.config.weights, device=self.device,
                                             precision=self.config.precision)
        return self._backbone

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features [B, h*w, D] and the grid size (h, w), config.batch_size images at a time."""
        parts = [self._patch_features(self.backbone(chunk)) for chunk in images.split(self.config.batch_size)]
        emb = torch.cat(parts)
        b, d, h, w = emb.shape
        return emb.permute(0, 2, 3, 1).reshape(b, h * w, d), (h, w)

    def _patch_features(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, D, h, w] patch features of one backbone pass."""
        return patch_embedding(features, tuple(self.config.layers), self_attend=False)

    def use_ray(self, address: str | None = None, *, num_cpus: int | None = None) -> "PatchCore":
        """Fit on a Ray cluster (pyanom.distributed): shards' features and coreset picks on the
        workers, the final coreset here; the same memory bank as the same plan on one machine."""
        self._ray = {"address": address, "num_cpus": num_cpus}
        return self

    def shard_memory_bank(self, parts: int, *, address: str | None = None,
                          num_cpus: int | None = None) -> "PatchCore":
        """Hold the fitted memory bank in ``parts`` Ray actors (pyanom.distributed.knn) and drop
        it here: scoring then merges their exact top-k, equal to this process's to float32
        rounding. For a model file, pyanom.distributed.load_sharded never reads the bank here."""
        from pyanom.distributed.knn import ShardedMemoryBank

        if not isinstance(self.memory_bank, torch.Tensor):
            raise RuntimeError(f"{self.name}: fit or load the detector before sharding its memory bank")
        self.memory_bank = ShardedMemoryBank(self.memory_bank, parts, address=address, num_cpus=num_cpus)
        return self

    def _nearest(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances [Q, k] and indices of the k nearest memory entries, wherever the bank is held."""
        if isinstance(self.memory_bank, torch.Tensor):
            return knn_scores(queries, self.memory_bank, k)
        return self.memory_bank.knn(queries, k)

    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        if self._ray is not None and cfg.tile_size is not None:
            raise ValueError(f"{self.name}: tiling (tile_size) does not fit on Ray yet; fit it on one machine")
        if self._ray is not None:
            from pyanom.distributed.fit import fit_memory_bank_on_ray

            self.memory_bank, self.memory_plan = fit_memory_bank_on_ray(self, train, progress=progress, **self._ray)
            return
        if cfg.tile_size is not None:  # each tile counts as an image of the plan: its memory bound holds
            n, features = tile_features(self, train, progress)
        else:
            n, features = len(train), self.patch_features(train, progress)
        self.memory_bank, self.memory_plan = build_memory_bank(
            features, n_images=n, ratio=cfg.coreset_ratio,
            projection_dim=cfg.projection_dim, seed=cfg.seed, mode=cfg.coreset_mode,
            budget_bytes=cfg.memory_budget_mb << 20, shard_images=cfg.shard_images,
            oversample=cfg.shard_oversample, progress=progress, desc=f"{self.name}: coreset")

    def patch_features(self, images, progress: bool = False):
        """(number of images, their patch features [n * h * w, D]) batch by batch, in image order."""
        batches = math.ceil(len(images) / self.config.batch_size)
        with torch.inference_mode():
            for batch in tqdm(iterate_images(images, self.config.batch_size), total=batches,
                              desc=f"{self.name}: patch features", disable=not progress):
                emb, _ = self._embed(batch.to(self.device))
                yield len(batch), emb.reshape(-1, emb.shape[-1])

    def _score(self, images: torch.Tensor):
        if self.memory_bank is None:
            raise RuntimeError(f"{self.name}: not fitted")
        if self.config.tile_size is not None:
            return score_tiled(self, images)
        emb, (h, w) = self._embed(images)
        patch_scores, image_scores = self._image_scores(emb)
        maps = upsample_scores(patch_scores.reshape(len(emb), h, w), images.shape[-2:], self.config.blur_sigma)
        return image_scores, maps

    def _image_scores(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch scores [B, P], image scores [B]) of patch features [B, P, D] against the memory bank."""
        b, n_patches, d = emb.shape
        queries = emb.reshape(-1, d)
        dist, nearest = self._nearest(queries, 1)
        patch_scores = dist[:, 0].reshape(b, n_patches)
        image_scores, worst = patch_scores.max(dim=1)
        if self.config.reweight and self.config.num_neighbors > 1 and len(self.memory_bank) > 1:
            image_scores = image_scores * self._reweight(queries, nearest[:, 0], worst, n_patches)
        return patch_scores, image_scores

    def _reweight(self, queries, nearest, worst, n_patches) -> torch.Tensor:
        """PatchCore eq. 7: w = 1 - softmax over the distances from the worst test patch to its
        nearest memory entry m* and m*'s own neighbours, taken at m*. A patch far from m* but
        close to m*'s neighbourhood (a dense, ordinary region of memory) is scored down."""
        rows = torch.arange(len(worst), device=worst.device) * n_patches + worst
        test, m_star = queries[rows], nearest[rows]
        k = min(self.config.num_neighbors, len(self.memory_bank))
        _, support = self._nearest(self.memory_bank[m_star], k)
        dist = torch.linalg.vector_norm(test[:, None, :] - self.memory_bank[support], dim=-1)
        return 1 - torch.softmax(dist, dim=1)[:, 0]

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        from pyanom_plugins.patchcore.export import PatchCoreGraph

        self._check_exportable(PatchCore)
        return PatchCoreGraph(self, knn_chunk)

    def _check_exportable(self, exporter: type) -> None:
        """Refuse what the export graph of class `exporter` would score differently: a subclass
        that changes the scoring without its own hook, a bank held by Ray actors, tiling and a
        bfloat16 backbone (onnxruntime's CPU kernels have no bfloat16 convolutions)."""
        cls = type(self)
        if cls._score is not exporter._score or cls._patch_features is not exporter._patch_features:
            raise ValueError(f"{self.name} ({cls.__module__}.{cls.__qualname__}) cannot be exported: it changes "
                             f"{exporter.__name__}'s scoring; override export_module to export it")
        if self.memory_bank is not None and not isinstance(self.memory_bank, torch.Tensor):
            raise ValueError(f"{self.name}: its memory bank is held by Ray actors (shard_memory_bank); "
                             "export the saved model file instead")
        if self.config.tile_size is not None:
            raise ValueError(f"{self.name}: a tiling model (tile_size={self.config.tile_size}) cannot be exported "
                             "yet; fit it without tile_size to export it")
        if self.config.precision != "float32":
            raise ValueError(f"{self.name}: a model fitted with precision={self.config.precision!r} cannot be "
                             "exported; exported graphs compute in float32: fit it with precision='float32'")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        bank = self.memory_bank  # one held by actors is gathered here to be saved
        return {"memory_bank": bank if isinstance(bank, torch.Tensor) else bank.gather()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        # Absent when the loader leaves it to actors (pyanom.distributed.load_sharded).
        bank = tensors.get("memory_bank")
        self.memory_bank = None if bank is None else bank.to(self.device, torch.float32).contiguous()


class SAPatchCore(PatchCore):
    """SA-PatchCore (Ishida et al., IEEE Access 2023): PatchCore plus parameter-free self-attention
    over the whole image, to catch anomalies of arrangement (co-occurrence).

    attention="channel": the attended map, averaged over the image, is the part's context
    (`context_descriptor`); fit keeps the training parts' contexts (`context_descriptors`), the
    median and spread of their leave-one-out distances to each other, and the spread of
    PatchCore's own leave-one-out scores of `score_images` training parts (each scored without
    the memory rows it gave). The image score is PatchCore's plus the context's excess (see
    SAPatchCoreConfig); the anomaly map is PatchCore's: the context tells whether the part is
    wrong, not where.
    """

    name = "sa_patchcore"
    Config = SAPatchCoreConfig
    scale_images = 32  # training images the per-channel scale of the attention input is taken from
    score_images = 32  # training images whose leave-one-out PatchCore scores give PatchCore's spread
    STATE = ("attention_scale", "descriptor_scale", "context_descriptors", "context_median", "context_spread",
             "score_spread")

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.attention_scale: torch.Tensor | None = None  # [C] of the attention input
        self.descriptor_scale: torch.Tensor | None = None  # [C] of the contexts
        self.context_descriptors: torch.Tensor | None = None  # [N, C] the training parts', scaled
        self.context_median: torch.Tensor | None = None  # [] of their leave-one-out distances
        self.context_spread: torch.Tensor | None = None  # []
        self.score_spread: torch.Tensor | None = None  # [] of PatchCore's leave-one-out scores
        self._contexts: list[torch.Tensor] = []  # of the backbone passes since the last take
        self._kept: list[torch.Tensor] = []  # patch features of the first training images, at fit
        self._keep = 0  # how many more of them to keep

    @property
    def channel(self) -> bool:
        return self.config.attention == "channel"

    @property
    def backbone(self):
        if self._backbone is None:
            layers = tuple(self.config.layers) + ((self.config.attention_layer,) if self.channel else ())
            self._backbone = create_backbone(self.config.backbone, layers=layers, weights=self.config.weights,
                                             device=self.device, precision=self.config.precision)
        return self._backbone

    def _patch_features(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """PatchCore's features (spatial: eq. 4 in place of the stride-16 average); the context of
        the same pass is kept aside for `_take_contexts`, and at fit the first images' features."""
        cfg = self.config
        if self.channel:
            self._contexts.append(context_descriptor(features[cfg.attention_layer], self.attention_scale,
                                                     cfg.attention_temperature))
        emb = patch_embedding(features, tuple(cfg.layers), self_attend=not self.channel)
        if self._keep > 0:
            kept = emb[:self._keep]
            self._kept.append(kept.flatten(2).transpose(1, 2).contiguous())
            self._keep -= len(kept)
        return emb

    def _take_contexts(self) -> torch.Tensor:
        """The contexts [N, C] collected since the last call."""
        contexts, self._contexts = torch.cat(self._contexts), []
        return contexts

    def _fit(self, train, progress: bool) -> None:
        if not self.channel:
            return super()._fit(train, progress)
        if self._ray is not None:
            raise NotImplementedError("sa_patchcore: attention='channel' cannot fit on Ray yet "
                                      "(its context statistics are learnt here); fit without use_ray")
        if len(train) < 2:
            raise ValueError("sa_patchcore: attention='channel' needs at least 2 training images after the "
                             "hold-out, to learn how far good parts' contexts lie from each other")
        self.attention_scale = self._channel_scale(train)
        self._contexts, self._kept, self._keep = [], [], min(len(train), self.score_images)
        super()._fit(train, progress)
        self._keep = 0
        contexts = self._take_contexts()
        self.descriptor_scale = _floored(contexts.std(dim=0))
        self.context_descriptors = (contexts / self.descriptor_scale).contiguous()
        nearest_other = knn_scores(self.context_descriptors, self.context_descriptors, 2)[0][:, 1]
        self.context_median, self.context_spread = nearest_other.median(), _spread(nearest_other)
        kept, self._kept = torch.cat(self._kept), []
        self.score_spread = _spread(self._left_out_scores(kept))

    def _left_out_scores(self, kept: torch.Tensor) -> torch.Tensor:
        """PatchCore's image score [K] of each kept training image [K, P, D] against the memory bank
        without the rows it gave (found by exact match): what a good part not seen at fit gets."""
        bank = self.memory_bank
        bank_code = _row_codes(bank)
        scores = []
        try:
            for rows in kept:
                own = torch.isin(bank_code, _row_codes(rows))
                self.memory_bank = bank[~own].contiguous()
                scores.append(self._image_scores(rows[None])[1])
        finally:
            self.memory_bank = bank
        return torch.cat(scores)

    def _score(self, images: torch.Tensor):
        if not self.channel:
            return super()._score(images)
        if self.context_descriptors is None:
            raise RuntimeError(f"{self.name}: not fitted")
        self._contexts = []
        image_scores, maps = super()._score(images)
        return image_scores + self._context_penalty(self._take_contexts()), maps

    def _context_penalty(self, contexts: torch.Tensor) -> torch.Tensor:
        """What the contexts [B, C] add to PatchCore's image scores: context_weight PatchCore
        spreads per context spread beyond context_floor spreads above the good parts' median."""
        cfg = self.config
        dist = knn_scores((contexts / self.descriptor_scale).contiguous(), self.context_descriptors, 1)[0][:, 0]
        excess = ((dist - self.context_median) / self.context_spread - cfg.context_floor).clamp_min(0)
        return cfg.context_weight * self.score_spread * excess

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        from pyanom_plugins.patchcore.export import ChannelAttentionGraph, PatchCoreGraph

        self._check_exportable(SAPatchCore)
        if self.channel:
            return ChannelAttentionGraph(self, knn_chunk)
        return PatchCoreGraph(self, knn_chunk, self_attend=True)

    def _channel_scale(self, train) -> torch.Tensor:
        """Per-channel standard deviation of the attention input over (up to scale_images) normal
        images: Lite0's channels differ in spread by orders of magnitude, and the softmax of
        x_i x_j is only informative where the products are of order 1 to 10."""
        subset = [train[i]["image"] for i in range(min(len(train), self.scale_images))]
        with torch.inference_mode():
            maps = [context_input(self.backbone(torch.stack(subset[i:i + self.config.batch_size])
                                                .to(self.device))[self.config.attention_layer])
                    for i in range(0, len(subset), self.config.batch_size)]
        # Near-dead channels (spread 1e-5 on bottle) would blow a rare activation up to logits
        # of 1e9: no channel counts as narrower than a tenth of the median one.
        return _floored(torch.cat(maps).std(dim=(0, 2, 3)))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        if self.channel:
            tensors.update({name: getattr(self, name) for name in self.STATE})
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        if self.channel:
            for name in self.STATE:
                setattr(self, name, tensors[name].to(self.device, torch.float32).contiguous())


def _row_codes(rows: torch.Tensor) -> torch.Tensor:
    """An int64 code of each row's exact bits [N]: equal rows, equal codes (integer sums are exact
    in any order); different rows collide with odds of about 2^-64."""
    weights = torch.randint(1, 2 ** 31, (rows.shape[1],), generator=torch.Generator().manual_seed(0))
    return (rows.float().contiguous().view(torch.int32).long() * weights.to(rows.device)).sum(dim=1)


def _floored(spread: torch.Tensor) -> torch.Tensor:
    """Per-channel spreads, none narrower than a tenth of the median one."""
    return spread.clamp_min(0.1 * float(spread.median().clamp_min(1e-12)))


def _spread(values: torch.Tensor) -> torch.Tensor:
    """Half the distance between the 16th and 84th percentiles (one standard deviation for a
    normal sample, less swayed by one odd part), never zero."""
    lo, hi = torch.quantile(values.double(), torch.tensor([0.1587, 0.8413], dtype=torch.float64)).float()
    return ((hi - lo) / 2).clamp_min(1e-6 * float(values.abs().median()) + 1e-12)
