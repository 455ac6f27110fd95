"""Finding and loading pretrained weights: a local file, the torch hub cache, or a URL.

Files are read with `torch.load(weights_only=True)` or safetensors, so a weights file can
never run code. Downloads happen only when asked for (a URL, or the default weights missing
from the cache) and go through torch hub's cache, where torchvision keeps the same files.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

SHOWN = 5  # how many offending keys an error lists


def cache_path(url: str) -> Path:
    """Where torch hub (and torchvision) keep the file of this URL."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch(url: str) -> Path:
    """The cached file of `url`, downloaded into the hub cache first if missing.

    File names like torchvision's `resnet18-f37072fd.pth` carry a SHA-256 prefix that the
    download is checked against.
    """
    path = cache_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=True)
    except OSError as err:  # no network, HTTP errors, DNS failures (URLError is an OSError)
        raise RuntimeError(
            f"could not download weights from {url} ({err}). Without network access, download "
            f"the file elsewhere and put it at {path}, or pass weights=<path to the file>"
        ) from err
    except RuntimeError as err:  # the SHA-256 prefix in the file name does not match
        raise RuntimeError(f"download of {url} is corrupt: {err}") from err
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.pt (plain state_dict, loaded with weights_only) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or pickled objects refused by weights_only
        raise ValueError(f"cannot read weights file {path}: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors)")
    return dict(state)


def load_into(network: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Put `state` into `network` (built on the meta device: no time spent on a random init),
    requiring the same keys and shapes; tensors take the network's dtypes.

    BatchNorm's `num_batches_tracked` counters may be absent (older torchvision files lack them).
    """
    own = network.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                  for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches (file vs model)", mismatched)) if keys]
    if problems:
        raise ValueError(f"weights from {source} do not fit {type(network).__name__}: " + "; ".join(problems))
    full = {k: state[k].to(v.dtype) if k in state else torch.zeros((), dtype=v.dtype) for k, v in own.items()}
    network.load_state_dict(full, assign=True)
