"""What both reconstruction detectors need to train: the training images decoded once into
memory, seeded minibatches, and a resumable checkpoint.

A checkpoint is a pyanom archive (safetensors + JSON header, written atomically by
pyanom.io.save_archive, never pickled) holding every network's weights and buffers, every
optimizer's state, the state of the random generator that drives shuffling, augmentation and
noise, and the progress (epochs done, loss history). Because all randomness of training comes
from that one generator, a run resumed from epoch k continues exactly as the uninterrupted run
would have.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pyanom.data.transforms import normalize
from pyanom.detector import iterate_images
from pyanom.io import ArchiveError, load_archive, save_archive
from pyanom.networks import load_module, module_tensors

CHECKPOINT_KIND = "pyanom-training-checkpoint"


def to_model_space(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> [B, 3, size, size] normalised with mean = std = 0.5,
    i.e. [-1, 1], the range of a tanh output layer."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def training_images(train, size: int, *, progress: bool, desc: str) -> torch.Tensor:
    """The whole training set in model space, decoded once (every epoch re-reading 900 px PNGs
    would cost more than training a small network on them)."""
    batches = math.ceil(len(train) / 32)
    parts = [to_model_space(b, size) for b in tqdm(iterate_images(train, 32), total=batches,
                                                   desc=desc, disable=not progress)]
    return torch.cat(parts)


def minibatches(n: int, batch_size: int, rng: torch.Generator) -> Iterator[torch.Tensor]:
    """Indices of a seeded shuffle of range(n), batch_size at a time (the last batch smaller)."""
    order = torch.randperm(n, generator=rng)
    yield from order.split(batch_size)


def run_fingerprint(config, train_images: torch.Tensor, resumable: tuple[str, ...]) -> dict:
    """What must not change between a run and its resumption: every hyper-parameter except the
    checkpoint settings and the epoch counts (which may be raised to train longer), and the data."""
    skip = ("checkpoint", "checkpoint_every", *resumable)
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}
    return {"config": fields, "n_images": len(train_images),
            "data_checksum": float(train_images.double().sum())}


class Checkpoint:
    """Training state at `path`, rewritten atomically every `checkpoint_every` epochs and after
    each stage's last.

    modules and optimizers are dicts name -> object; their tensors are stored under
    "module/<name>.<key>" and "optimizer/<name>.<param index>.<key>" (the optimizer's
    param_groups are rebuilt from the config, so only its per-parameter state is stored).
    """

    def __init__(self, path, detector: str, fingerprint: dict):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"checkpoint {self.path}: folder {self.path.parent} does not exist")
        self.detector, self.fingerprint = detector, fingerprint

    def save(self, modules: dict, optimizers: dict, rng: torch.Generator, progress: dict) -> None:
        tensors = {"rng": rng.get_state()}
        for name, module in modules.items():
            tensors.update(module_tensors(f"module/{name}", module))
        for name, opt in optimizers.items():
            for index, state in opt.state_dict()["state"].items():
                for key, value in state.items():
                    tensors[f"optimizer/{name}.{index}.{key}"] = torch.as_tensor(value)
        header = {"kind": CHECKPOINT_KIND, "detector": self.detector, "run": self.fingerprint, "progress": progress}
        save_archive(self.path, header, tensors)

    def restore(self, modules: dict, optimizers: dict, rng: torch.Generator) -> dict | None:
        """Load the saved state into modules, optimizers and rng and return the progress, or
        None when there is no checkpoint yet. A checkpoint of another detector, other
        hyper-parameters or other data is refused, naming what differs."""
        if not self.path.exists():
            return None
        header, tensors = load_archive(self.path)
        if header.get("kind") != CHECKPOINT_KIND or header.get("detector") != self.detector:
            raise ArchiveError(f"checkpoint {self.path} is not a {self.detector} training checkpoint")
        saved = header["run"]
        if saved != json_roundtrip(self.fingerprint):
            diff = describe_difference(saved, json_roundtrip(self.fingerprint))
            raise ValueError(f"checkpoint {self.path} belongs to another run ({diff}); "
                             "delete it or set `checkpoint` to a new path")
        for name, module in modules.items():
            load_module(f"module/{name}", module, tensors)
        for name, opt in optimizers.items():
            state: dict[int, dict] = {}
            for key, value in tensors.items():
                if key.startswith(f"optimizer/{name}."):
                    index, field = key[len(f"optimizer/{name}."):].split(".", 1)
                    state.setdefault(int(index), {})[field] = value
            opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        rng.set_state(tensors["rng"])
        return header["progress"]


def json_roundtrip(value):
    """As the value comes back from a JSON header (tuples become lists)."""
    return json.loads(json.dumps(value))


def describe_difference(saved: dict, now: dict) -> str:
    saved_cfg, now_cfg = saved.get("config", {}), now.get("config", {})
    keys = sorted(k for k in set(saved_cfg) | set(now_cfg) if saved_cfg.get(k) != now_cfg.get(k))
    parts = [f"{k}: {saved_cfg.get(k)!r} there, {now_cfg.get(k)!r} now" for k in keys]
    for key in ("n_images", "data_checksum"):
        if saved.get(key) != now.get(key):
            parts.append(f"training images differ ({key})")
    return "; ".join(parts) or "unknown difference"
