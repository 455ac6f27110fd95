"""PatchCore and SA-PatchCore detectors: a coreset memory bank of normal patch features,
nearest-neighbour distance as the anomaly score."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import torch
from tqdm.auto import tqdm

from pyanom.anomaly_map import upsample_scores
from pyanom.data import iterate_images
from pyanom.data.transforms import checked_image_size, pair
from pyanom.features import create_backbone, list_backbones
from pyanom.features.backbone import PRECISIONS
from pyanom.memory import MemoryBankDetector, MemoryBankSettings, build_locally
from pyanom.ops import knn_scores
from pyanom.settings import SettingError, Size, setting
from pyanom_plugins.patchcore.embedding import context_descriptor, context_input, patch_embedding
from pyanom_plugins.patchcore.tiling import checked_tiling, score_tiled, tile_features

ATTENTIONS = ("channel", "spatial")


@dataclass
class PatchCoreConfig(MemoryBankSettings):
    """PatchCore's settings; defaults follow the PatchCore paper and anomalib."""

    backbone: str = setting("efficientnet_lite0", "frozen pretrained backbone the patch features come from",
                            choices=tuple(list_backbones()))
    weights: Optional[str] = setting(None, "backbone weights: a file or URL; null: the backbone's default "
                                     "pretrained weights")
    layers: Tuple[str, ...] = setting(("stride8", "stride16"), "the two backbone stages (fine, coarse) whose "
                                      "features make a patch's feature")
    precision: str = setting("float32", "backbone arithmetic: bfloat16 is faster on CPUs with AVX512-BF16 or AMX, "
                             "slower elsewhere", choices=tuple(PRECISIONS))
    image_size: Optional[Size] = setting(256, "images are resized to this (an int: square); null keeps each "
                                         "image's own size (tiling only)",
                                         check=partial(checked_image_size, minimum=32))
    num_neighbors: int = setting(9, "memory entries whose neighbourhood reweights the image score (eq. 7)",
                                 bounds=(1, None))
    reweight: bool = setting(True, "reweight the image score by the density of memory around its worst patch")
    blur_sigma: float = setting(4.0, "Gaussian smoothing of the anomaly map, in pixels (0: none)", bounds=(0, None))
    batch_size: int = setting(8, "images per backbone pass: small keeps memory down and is no slower",
                              bounds=(1, None))
    tile_size: Optional[Size] = setting(None, "cut each image (after image_size) into tiles of this size; "
                                        "null scores the whole image",
                                        check=partial(checked_image_size, minimum=32, name="tile_size"))
    tile_overlap: int = setting(0, "pixels neighbouring tiles share", bounds=(0, None))

    def validate(self) -> None:
        if len(self.layers) != 2:
            raise ValueError(f"layers must name two backbone stages (fine, coarse), got {list(self.layers)}")
        checked_tiling(self.tile_size, self.tile_overlap)
        if self.tile_size is not None:
            tile = pair("tile_size", self.tile_size)
            if self.image_size is not None and all(t >= s for t, s in zip(tile, pair("image_size", self.image_size))):
                raise ValueError(f"tile_size {self.tile_size} covers the whole {self.image_size} image: set "
                                 "image_size=null to tile each image at its own resolution, or a larger one")
        elif self.image_size is None:
            raise ValueError("image_size=null keeps each image's own size, which only tiling can take: "
                             "set tile_size, or an image_size")


@dataclass
class SAPatchCoreConfig(PatchCoreConfig):
    """SA-PatchCore's settings: PatchCore's with a 1% coreset, as in its paper, and the attention's."""

    coreset_ratio: float = setting(0.01, "share of the training patch features kept in the memory bank",
                                   bounds=(0, 1), open="low")
    attention: str = setting("channel", "channel: the authors' released code (per-channel softmax over "
                             "positions), one context per part; spatial: eq. 4 as printed", choices=ATTENTIONS)
    attention_layer: str = setting("blocks.5", "backbone stage the channel attention reads (Lite0's stride-32 "
                                   "stage)")
    attention_temperature: float = setting(0.25, "scale of the standardised attention input: low makes the context "
                                           "each channel's mean over the image, high its maximum",
                                           bounds=(0, 100), open="low")
    context_weight: float = setting(1.0, "PatchCore score spreads added to the image score per context spread "
                                    "beyond context_floor", bounds=(0, 100), open="low")
    context_floor: float = setting(1.5, "context spreads above good parts' median distance that add nothing to "
                                   "the score", bounds=(0, 20))

    def validate(self) -> None:
        super().validate()
        if self.attention == "channel" and self.attention_layer in self.layers:
            raise ValueError(f"attention_layer must differ from layers {list(self.layers)}, "
                             f"got {self.attention_layer!r}")
        if self.attention == "channel" and self.tile_size is not None:
            raise ValueError("attention='channel' reads the whole part at once: it cannot score tiles "
                             "(tile_size); use attention='spatial' or patchcore to tile")


class PatchCore(MemoryBankDetector):
    """PatchCore (Roth et al., CVPR 2022): locally aware patch features of a frozen backbone,
    a greedy coreset of them as memory, kNN distance as the anomaly score."""

    name = "patchcore"
    supervision = "unsupervised"
    Config = PatchCoreConfig

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._backbone = None

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

    def _fit(self, train, progress: bool) -> None:
        if self.config.tile_size is not None:  # each tile counts as an image of the plan: its memory bound holds
            n, rows = tile_features(self, train, progress)
            self.fit_memory_bank(train, progress, rows=rows, n_images=n)
        else:
            self.fit_memory_bank(train, progress)

    def memory_features(self, images, progress: bool = False):
        """(number of images, their patch features [n * h * w, D]) batch by batch, in image order."""
        batches = math.ceil(len(images) / self.config.batch_size)
        with torch.inference_mode():
            for batch in tqdm(iterate_images(images, self.config.batch_size), total=batches,
                              desc=f"{self.name}: patch features", disable=not progress):
                emb, _ = self._embed(batch.to(self.device))
                yield len(batch), emb.reshape(-1, emb.shape[-1])

    def _score(self, images: torch.Tensor):
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
        dist, nearest = self.nearest(queries, 1)
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
        _, support = self.nearest(self.memory_bank[m_star], k)
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


class SAPatchCore(PatchCore):
    """SA-PatchCore (Ishida et al., IEEE Access 2023): PatchCore plus parameter-free self-attention
    over the whole image, to catch anomalies of arrangement (co-occurrence).

    attention="channel": the attended map, averaged over the image, is the part's context
    (`context_descriptor`); fit keeps the training parts' contexts (`context_descriptors`), the
    median and spread of their leave-one-out distances to each other, and the spread of
    PatchCore's own leave-one-out scores of `score_images` training parts (each scored without
    the memory rows it gave). A part's context distance (to the nearest training part's) is
    measured in spreads of the training parts' own distances; beyond `context_floor` spreads above
    their median, `context_weight` times that excess, in spreads of PatchCore's scores of good
    parts, is added to PatchCore's image score. Both spreads are learnt at fit, so the two
    defaults mean the same on any part. The anomaly map is PatchCore's: the context tells whether
    the part is wrong, not where.
    """

    name = "sa_patchcore"
    Config = SAPatchCoreConfig
    scale_images = 32  # training images the per-channel scale of the attention input is taken from
    score_images = 32  # training images whose leave-one-out PatchCore scores give PatchCore's spread
    STATE = ("attention_scale", "descriptor_scale", "context_descriptors", "context_median", "context_spread",
             "score_spread")
    RETIRED = ("attention_weight", "context_coreset_ratio", "context_margin")  # of the per-position context memory

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

    @classmethod
    def saved_config(cls, values: dict) -> SAPatchCoreConfig:
        """A spatial model file's retired settings are dropped (they never touched its scores); a
        channel model with them holds a per-position context memory this version cannot score."""
        retired = sorted(set(values) & set(cls.RETIRED))
        if retired and values.get("attention", "channel") == "channel":
            raise SettingError(f"{cls.name}: this model was fitted with a per-position context memory "
                               f"({', '.join(retired)}), which one context per part (context_weight, "
                               "context_floor) replaced: fit it again with this pyanom version")
        return super().saved_config({k: v for k, v in values.items() if k not in cls.RETIRED})

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
        if self.bank_builder is not build_locally:
            raise NotImplementedError("sa_patchcore: attention='channel' cannot fit on Ray yet "
                                      "(its context statistics are learnt here); fit it on one machine")
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
