"""The one training engine: every detector that trains a network fits through it.

A detector decodes its training set once (`decode_once`), builds its networks and optimizers, and
hands `Trainer.run` its `Stage`s in order (segdec: segmentation, then decision; f-AnoGAN: the GAN,
then the encoder). A stage names the modules it trains, their optimizers, a sampler of index
batches and a `step` that computes one batch's losses and calls `ctx.minimise`. The engine runs
the epochs with a progress bar per stage, keeps one `LossHistory`, stops on a NaN or Inf loss,
averages weights over a stage's last epochs (`torch.optim.swa_utils`), and checkpoints and resumes.

Every random choice of training (batch order, augmentation, noise) draws from one seeded
generator, `Trainer.rng`, and the checkpoint stores it with the weights, optimizer state, sampler
state, loss history, stage and epoch: a run resumed after epoch n repeats the uninterrupted run
bit for bit. Training runs with PyTorch's deterministic algorithms (`torch.use_deterministic_algorithms`,
restored afterwards): a kernel that would add in the order its threads arrive (a scatter-add into
repeated rows, for one) takes its fixed-order path instead, so the same data, settings, seed and
thread count give the same bytes however loaded the machine is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from pyanom.data.transforms import pair
from pyanom.settings import Settings, setting
from pyanom._fs import writable_folder
from pyanom.archive import ArchiveError, load_archive, save_archive

__all__ = ["BalancedBatches", "DecodedSet", "LossHistory", "ShuffledBatches", "Stage", "StratifiedBatches",
           "Trainer", "TrainingInterrupted", "TrainingSettings", "decode_once", "load_module", "module_tensors", "seeded"]

CHECKPOINT_KIND = "pyanom-training-checkpoint"


# -- networks: seeded construction, their tensors in an archive ----------------------------------
Built = TypeVar("Built")


def seeded(build: Callable[[], Built], seed: int) -> Built:
    """build() with the global torch RNG seeded, so weight initialisation follows `seed`, leaving
    the caller's global RNG state (CPU; CUDA is not touched) as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state as tensors named prefix.<key>."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load the tensors named prefix.* into module; a missing or unexpected one is an error."""
    own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(own)
    except RuntimeError as exc:
        raise ValueError(f"{prefix}: saved tensors do not fit the network built from the config: {exc}") from exc


# -- the training set, decoded once -----------------------------------------------------------
@dataclass
class DecodedSet:
    """The training set decoded once and moved to the training device once.

    images [N, 3, H, W]: uint8 when every image is 8-bit (what the readers give), which is a
    quarter of float32 (MVTec bottle's 209 training images at 256 px: 41 MB), else float32 in
    [0, 1]. masks [N, 1, H, W] uint8 or None; labels [N] int64 (1 = defect).
    """

    images: torch.Tensor
    masks: Optional[torch.Tensor]
    labels: torch.Tensor
    checksum: str  # SHA-256 of images, masks and labels: a checkpoint of other data is refused

    def __len__(self) -> int:
        return len(self.images)

    def floats(self, index=slice(None)) -> torch.Tensor:
        """Images [B, 3, H, W] float32 in [0, 1] on the device."""
        x = self.images[index]
        return x.float() / 255 if x.dtype == torch.uint8 else x

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.masks, self.labels) if t is not None)


def _as_uint8(x: torch.Tensor) -> Optional[torch.Tensor]:
    """x in [0, 1] as uint8 when that loses nothing (x = k / 255), else None."""
    u8 = x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return u8 if torch.equal(u8.float() / 255, x) else None


def decode_once(train, *, device="cpu", size: int | tuple[int, int] | None = None, masks: bool = False,
                progress: bool = True, desc: str = "reading images") -> DecodedSet:
    """Every image of `train` (an InspectionSet) read once, in this process (a forked worker would
    deadlock in OpenMP once the parent has used it), resized to size (an int: square; or (height,
    width)) when given (antialiased bilinear), and moved to `device`; with masks=True the pixel masks too."""
    images, mask_list, labels, exact = [], [], [], True
    for i in tqdm(range(len(train)), desc=desc, disable=not progress):
        item = train[i]
        x = item["image"]
        hw = pair("size", size)
        if hw is not None and tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]
        if exact:
            u8 = _as_uint8(x)
            if u8 is None:  # not 8-bit: keep every image as float
                exact, images = False, [im.float() / 255 for im in images]
            else:
                x = u8
        images.append(x)
        if masks:
            mask_list.append(item["mask"].to(torch.uint8))
        labels.append(int(item.get("label", 0)))
    if not images:
        raise ValueError("the training set holds no images")
    tensors = [torch.stack(images), torch.stack(mask_list) if masks else None, torch.tensor(labels)]
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    tensors = [None if t is None else t.to(device) for t in tensors]
    return DecodedSet(*tensors, checksum=digest.hexdigest())


# -- samplers ---------------------------------------------------------------------------------
class Sampler(Protocol):
    def epoch(self, rng: torch.Generator) -> Iterator[torch.Tensor]:
        """The index batches of one epoch, drawn from rng."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What the sampler carries from one epoch to the next (checkpointed)."""

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


class _Stateless:
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class ShuffledBatches(_Stateless):
    """A fresh shuffle of all n images each epoch, batch_size at a time (the last batch smaller)."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def epoch(self, rng):
        yield from torch.randperm(self.n, generator=rng).split(self.batch_size)


class BalancedBatches:
    """Biased minibatch sampling: each batch's first batch_size // 2 entries are defective, the
    rest good. An epoch visits each defective image once (wrapping within the epoch to fill the
    last batch); the good images come in a running shuffled order, so over the epochs all of them
    are seen."""

    def __init__(self, labels: torch.Tensor, batch_size: int):
        labels = labels.cpu()
        self.defects = torch.nonzero(labels == 1)[:, 0]
        self.good = torch.nonzero(labels == 0)[:, 0]
        self.n_defect = batch_size // 2
        self.n_good = batch_size - self.n_defect
        self.good_order = torch.empty(0, dtype=torch.int64)

    def epoch(self, rng):
        order = self.defects[torch.randperm(len(self.defects), generator=rng)]
        for step in range(math.ceil(len(order) / self.n_defect)):
            defect = order[(step * self.n_defect + torch.arange(self.n_defect)) % len(order)]
            while len(self.good_order) < self.n_good:
                fresh = self.good[torch.randperm(len(self.good), generator=rng)]
                self.good_order = torch.cat([self.good_order, fresh])
            good, self.good_order = self.good_order[:self.n_good], self.good_order[self.n_good:]
            yield torch.cat([defect, good])

    def state_tensors(self):
        return {"good_order": self.good_order}

    def load_state_tensors(self, tensors):
        self.good_order = tensors["good_order"]


class StratifiedBatches(_Stateless):
    """`steps` batches per epoch, each a uniform random subset (without replacement) of every class:
    counts[c] images of class c (labels == c), classes in order."""

    def __init__(self, labels: torch.Tensor, counts: dict[int, int], steps: int):
        labels = labels.cpu()
        self.members = {c: torch.nonzero(labels == c)[:, 0] for c in counts}
        self.counts, self.steps = counts, steps

    def epoch(self, rng):
        for _ in range(self.steps):
            yield torch.cat([self.members[c][torch.randperm(len(self.members[c]), generator=rng)[:k]]
                             for c, k in self.counts.items()])


@dataclass
class TrainingSettings(Settings):
    """The settings every detector that trains through this engine shares."""

    seed: int = setting(0, "seed of every random choice of training: weights, batch order, augmentation")
    checkpoint: Optional[str] = setting(None, "training state file: written as training goes, resumed when present")
    checkpoint_every: int = setting(1, "epochs between checkpoint writes (each stage's last epoch is always written)",
                                    bounds=(1, None))


# -- stages and the loss history -----------------------------------------------------------------
class LossHistory(dict):
    """The mean of each loss per epoch: curve name -> [value per epoch], None for an epoch in which
    no step computed that loss (f-AnoGAN's generator loss with n_critic > steps per epoch)."""

    def tensors(self, prefix: str = "history.") -> dict[str, torch.Tensor]:
        """As float64 tensors (NaN for None), to travel with the model in its archive."""
        return {f"{prefix}{k}": torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
                for k, values in self.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "history.") -> LossHistory:
        return cls({k[len(prefix):]: [None if math.isnan(v) else v for v in t.tolist()]
                    for k, t in tensors.items() if k.startswith(prefix)})


@dataclass
class Stage:
    """One phase of training, handed to `Trainer.run`.

    step(batch, ctx) computes the losses of one index batch, calls ctx.minimise(loss, optimizer)
    for each update, and returns {curve name: loss} (a tensor, a float, or None when this step did
    not compute it). `losses` names those curves. `setting` is the config field holding `epochs`:
    it may grow between a run and its resumption, and errors name it. `start` runs before the
    stage's first epoch (also when resuming into it), `finish` after its last (after the weight
    average); both get the Trainer. `average_last` = n > 0 ends the stage with the mean of its
    modules' weights after each of its last n epochs (stochastic weight averaging). `hint` says
    what to do when a loss turns NaN or Inf.
    """

    name: str
    setting: str
    epochs: int
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    sampler: Sampler
    step: Callable[[torch.Tensor, "StepContext"], dict]
    losses: tuple[str, ...] = ("loss",)
    average_last: int = 0
    start: Optional[Callable[["Trainer"], None]] = None
    finish: Optional[Callable[["Trainer"], None]] = None
    hint: str = "lower the learning rate"
    averages: dict[str, AveragedModel] = field(default_factory=dict, init=False)


@dataclass
class StepContext:
    """What a step sees: the one generator, the epoch and the step count within the stage (both
    from 0, counted over resumptions too)."""

    rng: torch.Generator
    epoch: int = 0
    step: int = 0

    @staticmethod
    def minimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One gradient step of `optimizer` on `loss`."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@contextmanager
def deterministic_kernels():
    """PyTorch's deterministic algorithms for the block, the caller's choice restored after. An
    op without a deterministic version warns instead of failing (warn_only)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after writing the checkpoint; the message says where."""


class _StopOnInterrupt:
    """Ctrl-C (SIGINT) during training sets a flag that the loop reads: with a checkpoint to write,
    training stops after the current epoch, once it is written; without one, after the current
    step. A second Ctrl-C stops at once. The loop raising at a known point, rather than Python at
    any bytecode, keeps the interrupt from landing where it is swallowed (a finalizer's
    "Exception ignored"). Only in the main thread."""

    def __init__(self, keep: bool):
        self.active = threading.current_thread() is threading.main_thread()
        self.keep = keep
        self.requested = False

    def _handle(self, signum, frame):
        if self.requested:
            signal.default_int_handler(signum, frame)
        self.requested = True
        if self.keep:
            print("\npyanom: stopping after this epoch to write the checkpoint (Ctrl-C again stops at once)",
                  file=sys.stderr, flush=True)

    def check(self) -> None:
        """After each step: stop now when asked and there is nothing to write."""
        if self.requested and not self.keep:
            raise KeyboardInterrupt

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self.previous)


# -- the engine --------------------------------------------------------------------------------
class Trainer:
    """Runs a detector's stages. The checkpoint settings come from the detector's config:
    `checkpoint` (a file path or None) and `checkpoint_every` (epochs between writes; the last
    epoch of each stage is always written)."""

    def __init__(self, detector, data: DecodedSet, *, progress: bool = True):
        self.detector, self.data, self.progress = detector, data, progress
        cfg = detector.config
        self.rng = torch.Generator().manual_seed(int(cfg.seed))
        self.checkpoint = getattr(cfg, "checkpoint", None)
        self.every = int(getattr(cfg, "checkpoint_every", 1))
        if self.checkpoint is not None:
            folder = Path(self.checkpoint).parent
            if not folder.is_dir():
                raise FileNotFoundError(f"checkpoint {self.checkpoint}: folder {folder} does not exist")
            writable_folder(folder, "checkpoint")  # before the first epoch, not after it

    def run(self, stages: list[Stage]) -> LossHistory:
        """Train every stage to its epoch count, resuming from the checkpoint when there is one."""
        history = LossHistory({name: [] for s in stages for name in s.losses})
        done = {s.name: {"epochs": 0, "steps": 0, "finished": False} for s in stages}
        for s in stages:
            s.averages = {k: AveragedModel(m, use_buffers=False) for k, m in s.modules.items() if s.average_last}
        if self.checkpoint is not None:
            saved = self._restore(stages)
            if saved is not None:
                done, history = saved["progress"], LossHistory(saved["history"])
                self._check_resumable(stages, done)
                if self.progress:
                    print(self._resuming(stages, done), file=sys.stderr, flush=True)
        try:
            with _StopOnInterrupt(self.checkpoint is not None) as interrupt, deterministic_kernels():
                for s in stages:
                    self._run_stage(s, stages, done, history, interrupt)
                    interrupt.check()
        except KeyboardInterrupt as stop:
            if self.checkpoint is not None or isinstance(stop, TrainingInterrupted):
                raise
            raise TrainingInterrupted("training stopped and nothing was kept; to be able to stop a fit and resume "
                                      "it, give it a checkpoint file: --set checkpoint=FILE") from None
        for s in stages:  # also those a finished checkpoint skipped
            for m in s.modules.values():
                m.eval()
        return history

    def _resuming(self, stages, done: dict) -> str:
        """The line that says where a resumed run picks up."""
        for s in stages:
            at = done[s.name]
            if not (at["finished"] and at["epochs"] == s.epochs):
                stage = f" ({s.name} stage)" if len(stages) > 1 else ""
                return (f"pyanom: resuming from epoch {at['epochs'] + 1} of {s.epochs}{stage}: {at['epochs']} "
                        f"done, from checkpoint {self.checkpoint}")
        return f"pyanom: checkpoint {self.checkpoint} holds the finished training: nothing left to train"

    def _run_stage(self, s: Stage, stages, done: dict, history: LossHistory, interrupt) -> None:
        at = done[s.name]
        if at["finished"] and at["epochs"] == s.epochs:
            return
        at["finished"], at["target"] = False, s.epochs
        for m in s.modules.values():
            m.requires_grad_(True).train()
        if s.start is not None:
            s.start(self)
        ctx = StepContext(self.rng)
        bar = tqdm(range(at["epochs"], s.epochs), initial=at["epochs"], total=s.epochs, unit="epoch",
                   desc=f"{self.detector.name}: {s.name}", disable=not self.progress)
        for epoch in bar:
            sums = {name: [0.0, 0] for name in s.losses}
            for batch in s.sampler.epoch(self.rng):
                ctx.epoch, ctx.step = epoch, at["steps"]
                for name, value in s.step(batch, ctx).items():
                    if value is None:
                        continue
                    value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                    if not math.isfinite(value):
                        raise FloatingPointError(f"{self.detector.name}: the {s.name} loss {name} became {value} "
                                                 f"in epoch {epoch + 1} (step {ctx.step + 1}); {s.hint}")
                    sums[name][0] += value
                    sums[name][1] += 1
                at["steps"] += 1
                interrupt.check()
            means = {name: total / count if count else None for name, (total, count) in sums.items()}
            for name, value in means.items():
                history[name].append(value)
            at["epochs"] = epoch + 1
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if v is not None})
            if epoch >= s.epochs - s.average_last:
                for name, average in s.averages.items():
                    average.update_parameters(s.modules[name])
            last = at["epochs"] == s.epochs
            if last:
                self._finish(s, at)
            if self.checkpoint is not None and (at["epochs"] % self.every == 0 or last or interrupt.requested):
                self._save(stages, done, history)
            interrupt.check()
            if interrupt.requested:
                raise TrainingInterrupted(f"training stopped after {s.name} epoch {at['epochs']} of {s.epochs}; "
                                          f"checkpoint written to {self.checkpoint}: run the same command "
                                          "again to continue")
        bar.close()
        if not at["finished"]:  # a stage of 0 epochs
            self._finish(s, at)

    def _finish(self, s: Stage, at: dict) -> None:
        with torch.no_grad():
            for name, average in s.averages.items():
                if int(average.n_averaged):
                    for mean, p in zip(average.module.parameters(), s.modules[name].parameters()):
                        p.copy_(mean)
        for m in s.modules.values():
            m.eval()
        if s.finish is not None:
            s.finish(self)
        at["finished"] = True

    # -- checkpoints -------------------------------------------------------------------------------
    def _fingerprint(self, stages) -> dict:
        """What must not change between a run and its resumption: every hyper-parameter except the
        checkpoint settings and the stages' epoch counts (which may grow), and the data."""
        skip = {"checkpoint", "checkpoint_every", *(s.setting for s in stages)}
        config = {k: v for k, v in dataclasses.asdict(self.detector.config).items() if k not in skip}
        return json.loads(json.dumps({"config": config, "n_images": len(self.data), "data": self.data.checksum}))

    def _tensors(self, stages) -> dict[str, torch.Tensor]:
        tensors = {"rng": self.rng.get_state()}
        for s in stages:
            for name, module in s.modules.items():
                tensors.update(module_tensors(f"module/{name}", module))
            for name, average in s.averages.items():
                tensors.update(module_tensors(f"average/{s.name}/{name}", average))
            for name, opt in s.optimizers.items():
                for index, state in opt.state_dict()["state"].items():
                    for key, value in state.items():
                        tensors[f"optimizer/{name}.{index}.{key}"] = torch.as_tensor(value)
            for key, value in s.sampler.state_tensors().items():
                tensors[f"sampler/{s.name}.{key}"] = value
        return tensors

    def _save(self, stages, done: dict, history: LossHistory) -> None:
        header = {"kind": CHECKPOINT_KIND, "detector": self.detector.name, "run": self._fingerprint(stages),
                  "progress": done, "history": dict(history)}
        save_archive(self.checkpoint, header, self._tensors(stages))

    def _restore(self, stages) -> dict | None:
        """Load the checkpoint's state into the stages' modules, optimizers, averages and samplers
        and the generator; None when there is none yet. A checkpoint of another detector, other
        hyper-parameters or other data is refused, naming what differs."""
        path = Path(self.checkpoint)
        if not path.exists():
            return None
        header, tensors = load_archive(path)
        name = self.detector.name
        if header.get("kind") != CHECKPOINT_KIND or header.get("detector") != name:
            raise ArchiveError(f"checkpoint {path} is not a {name} training checkpoint "
                               f"(it is {header.get('detector') or 'something else'}'s)")
        now = self._fingerprint(stages)
        if header["run"] != now:
            raise ValueError(f"checkpoint {path} belongs to another run ({_difference(header['run'], now)}); "
                             "delete it to start afresh, or give another file: --set checkpoint=FILE")
        for s in stages:
            for key, module in s.modules.items():
                load_module(f"module/{key}", module, tensors)
            for key, average in s.averages.items():
                load_module(f"average/{s.name}/{key}", average, tensors)
            for key, opt in s.optimizers.items():
                state: dict[int, dict] = {}
                for k, value in tensors.items():
                    if k.startswith(f"optimizer/{key}."):
                        index, part = k[len(f"optimizer/{key}."):].split(".", 1)
                        state.setdefault(int(index), {})[part] = value
                opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
            prefix = f"sampler/{s.name}."
            s.sampler.load_state_tensors({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.rng.set_state(tensors["rng"])
        return header

    def _check_resumable(self, stages, done: dict) -> None:
        """More epochs may continue a stage; fewer, or more for a stage whose result was averaged,
        finished off or built on by a later stage, cannot."""
        for i, s in enumerate(stages):
            at = done[s.name]
            if at["epochs"] > s.epochs:
                raise ValueError(f"{self.detector.name}: the checkpoint {self.checkpoint} has {at['epochs']} "
                                 f"{s.name} epochs, more than the {s.epochs} asked for ({s.setting}={s.epochs})")
            averaging = any(int(a.n_averaged) for a in s.averages.values())
            if averaging and not at["finished"] and at.get("target") != s.epochs:
                raise ValueError(f"{self.detector.name}: the checkpoint {self.checkpoint} is averaging the "
                                 f"weights of the last {s.average_last} of {at.get('target')} {s.name} epochs; "
                                 f"{s.setting}={s.epochs} would change which. Delete the checkpoint or "
                                 "set `checkpoint` to a new path")
            if at["finished"] and s.epochs > at["epochs"]:
                later = [t.name for t in stages[i + 1:] if done[t.name]["epochs"]]
                if later or s.average_last or s.finish is not None:
                    reason = (f"the {later[0]} stage already trained on its result" if later
                              else "its result was averaged or finished off")
                    raise ValueError(f"{self.detector.name}: the checkpoint {self.checkpoint} finished the "
                                     f"{s.name} stage at {at['epochs']} epochs and {reason}; "
                                     f"{s.setting}={s.epochs} would change it. Delete the checkpoint or "
                                     "set `checkpoint` to a new path")


def _difference(saved: dict, now: dict) -> str:
    saved_cfg, now_cfg = saved.get("config", {}), now.get("config", {})
    keys = sorted(k for k in set(saved_cfg) | set(now_cfg) if saved_cfg.get(k) != now_cfg.get(k))
    parts = [f"{k}: {saved_cfg.get(k)!r} there, {now_cfg.get(k)!r} now" for k in keys]
    if saved.get("n_images") != now.get("n_images"):
        parts.append(f"it was trained on {saved.get('n_images')} images, this fit has {now.get('n_images')}")
    elif saved.get("data") != now.get("data"):
        parts.append(f"the same number of training images, {now.get('n_images')}, but not the same images: "
                     "other files, or files changed since")
    return "; ".join(parts) or "unknown difference"
