"""Reconstruction baselines: a convolutional autoencoder and f-AnoGAN. Both learn to reproduce
normal images only; a defect is what they fail to reproduce, so the reconstruction error is
the anomaly map and (reduced to one number) the image score."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pyanom.anomaly_map import upsample_scores
from pyanom.augment import random_hflip
from pyanom.detector import Detector
from pyanom_plugins.reconstruction.networks import (ConvAutoencoder, Critic, Encoder, Generator,
                                                    check_power_of_two)
from pyanom.networks import load_module, module_tensors, seeded
from pyanom_plugins.reconstruction.training import (Checkpoint, minibatches, run_fingerprint, to_model_space,
                                                    training_images)


def _check(name: str, value, low, kind=int, *, strict: bool = True) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be {'an int' if kind is int else 'a number'} "
                         f"{'>' if strict else '>='} {low}, got {value!r}")


def _check_common(cfg) -> None:
    _check("batch_size", cfg.batch_size, 0)
    _check("lr", cfg.lr, 0, (int, float))
    _check("blur_sigma", cfg.blur_sigma, 0, (int, float), strict=False)
    _check("latent_dim", cfg.latent_dim, 0)
    _check("width", cfg.width, 0)
    if cfg.checkpoint is not None and not isinstance(cfg.checkpoint, str):
        raise ValueError(f"checkpoint must be a file path (str) or None, got {cfg.checkpoint!r}")
    _check("checkpoint_every", cfg.checkpoint_every, 0)


@dataclass
class AutoencoderConfig:
    """Hyper-parameters; defaults are the Team 3 report's autoencoder."""

    image_size: int = 256
    latent_dim: int = 1024
    width: int = 32  # channels of the first convolution, doubling per stage up to 256
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    hflip: bool = True  # random horizontal flip of training images
    # Image score from the per-pixel squared error map: "mean" = the image's mean squared error,
    # "max" = the largest value of the smoothed map (one strong local defect outweighs the
    # diffuse error an autoencoder leaves on every edge).
    score: str = "mean"
    blur_sigma: float = 4.0  # Gaussian smoothing of the anomaly map (0 = raw per-pixel error)
    checkpoint: Optional[str] = None  # training state file, resumed when present
    checkpoint_every: int = 1  # epochs between checkpoint writes (and always after the last)
    seed: int = 0

    def __post_init__(self):
        check_power_of_two("image_size", self.image_size, 16)
        _check("epochs", self.epochs, 0, strict=False)
        _check_common(self)
        if self.score not in ("mean", "max"):
            raise ValueError(f"score must be 'mean' or 'max', got {self.score!r}")


@dataclass
class FAnoGANConfig:
    """Hyper-parameters; defaults follow the f-AnoGAN paper (Schlegl et al. 2019) schedule."""

    image_size: int = 256  # input and anomaly-map resolution; the networks work at gan_size
    gan_size: int = 64
    latent_dim: int = 100
    width: int = 64  # channels of the critic's first convolution (DCGAN: 64, doubling per stage)
    gan_epochs: int = 1500
    encoder_epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)
    n_critic: int = 5  # critic updated every batch, generator every n_critic-th
    gp_weight: float = 10.0  # lambda of the WGAN-GP gradient penalty
    kappa: float = 1.0  # weight of the critic-feature residual in the izif loss and the score
    blur_sigma: float = 4.0  # Gaussian smoothing of the upsampled anomaly map (0 = none)
    checkpoint: Optional[str] = None
    checkpoint_every: int = 1
    seed: int = 0

    def __post_init__(self):
        check_power_of_two("gan_size", self.gan_size, 16)
        _check("image_size", self.image_size, 0)
        _check("gan_epochs", self.gan_epochs, 0, strict=False)
        _check("encoder_epochs", self.encoder_epochs, 0, strict=False)
        _check("n_critic", self.n_critic, 0)
        _check("gp_weight", self.gp_weight, 0, (int, float), strict=False)
        _check("kappa", self.kappa, 0, (int, float), strict=False)
        _check_common(self)
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = betas


class ReconstructionDetector(Detector):
    """Shared by both: networks built from the config, their tensors saved, a loss history
    per epoch, and training that checkpoints every epoch and resumes from the checkpoint."""

    supervision = "unsupervised"
    resumable: tuple = ()  # config fields that may grow between a run and its resumption

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.networks: dict[str, torch.nn.Module] | None = None
        self.history: dict[str, list] = {}

    @abc.abstractmethod
    def _build(self) -> dict[str, torch.nn.Module]:
        """Fresh networks, initialised from config.seed."""

    def _start(self, images: torch.Tensor, optimizers: dict, rng: torch.Generator, fresh_history: dict):
        """(checkpoint or None, history): the checkpoint's state loaded when there is one."""
        cfg = self.config
        ckpt = None
        if cfg.checkpoint is not None:
            ckpt = Checkpoint(cfg.checkpoint, self.name, run_fingerprint(cfg, images, self.resumable))
            saved = ckpt.restore(self.networks, optimizers, rng)
            if saved is not None:
                return ckpt, {k: list(v) for k, v in saved["history"].items()}
        return ckpt, fresh_history

    def _epoch_bar(self, done: int, total: int, what: str, progress: bool):
        if done > total:
            raise ValueError(f"{self.name}: the checkpoint {self.config.checkpoint} has {done} {what} epochs, "
                             f"more than the {total} asked for")
        return tqdm(range(done, total), initial=done, total=total, desc=f"{self.name}: {what}",
                    unit="epoch", disable=not progress)

    def _end_epoch(self, bar, ckpt, optimizers, rng, values: dict) -> None:
        for key, value in values.items():
            self.history[key].append(value)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if v is not None})
        done = len(self.history[next(iter(values))])  # epochs of this stage, this one included
        if ckpt is not None and (done % self.config.checkpoint_every == 0 or done == bar.total):
            ckpt.save(self.networks, optimizers, rng, {"history": self.history})

    def _maps(self, error: torch.Tensor, size) -> torch.Tensor:
        """Per-pixel error [B, h, w] -> anomaly maps at the input size (bilinear, then smoothed)."""
        return upsample_scores(error, size, float(self.config.blur_sigma))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        out = {}
        for name, net in self.networks.items():
            out.update(module_tensors(name, net))
        for key, values in self.history.items():  # the training curve travels with the model
            out[f"history.{key}"] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        networks = self._build()
        for name, net in networks.items():
            load_module(name, net, tensors)
            net.to(self.device).eval()
        self.networks = networks
        self.history = {k[len("history."):]: [None if math.isnan(v) else v for v in t.tolist()]
                        for k, t in tensors.items() if k.startswith("history.")}


class Autoencoder(ReconstructionDetector):
    """Convolutional autoencoder trained with the mean squared error on normal images; the
    per-pixel squared error of the reconstruction (mean over colour channels) is the anomaly
    map, its mean over the image (or the smoothed map's maximum, see config.score) the score."""

    name = "autoencoder"
    Config = AutoencoderConfig
    resumable = ("epochs",)

    def _build(self):
        cfg = self.config
        return {"autoencoder": seeded(lambda: ConvAutoencoder(cfg.image_size, cfg.latent_dim, cfg.width), cfg.seed)}

    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        images = training_images(train, cfg.image_size, progress=progress, desc=f"{self.name}: reading images")
        self.networks = {k: v.to(self.device) for k, v in self._build().items()}
        net = self.networks["autoencoder"]
        optimizers = {"autoencoder": torch.optim.Adam(net.parameters(), lr=cfg.lr)}
        rng = torch.Generator().manual_seed(cfg.seed)
        ckpt, self.history = self._start(images, optimizers, rng, {"loss": []})
        net.train()
        for _ in (bar := self._epoch_bar(len(self.history["loss"]), cfg.epochs, "training", progress)):
            total = 0.0
            for idx in minibatches(len(images), cfg.batch_size, rng):
                x = images[idx]
                if cfg.hflip:
                    x = random_hflip(rng, x)
                x = x.to(self.device)
                loss = F.mse_loss(net(x), x)
                optimizers["autoencoder"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["autoencoder"].step()
                total += loss.item() * len(idx)
            self._end_epoch(bar, ckpt, optimizers, rng, {"loss": total / len(images)})
        net.eval()

    def _score(self, images: torch.Tensor):
        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        x = to_model_space(images, self.config.image_size)
        error = (x - self.networks["autoencoder"](x)).pow(2).mean(1)
        maps = self._maps(error, images.shape[-2:])
        scores = error.flatten(1).mean(1) if self.config.score == "mean" else maps.flatten(1).amax(1)
        return scores, maps


class FAnoGAN(ReconstructionDetector):
    """f-AnoGAN (Schlegl et al., Medical Image Analysis 2019): a WGAN-GP learns normal images,
    then an izif encoder E is trained against the frozen generator G and critic so that
    G(E(x)) reproduces x in pixels and in the critic's features f. Score:
    A(x) = ||x - G(E(x))||^2 / n + kappa ||f(x) - f(G(E(x)))||^2 / n_d; anomaly map: the
    pixel residual (mean over colour channels) upsampled to the input size."""

    name = "fanogan"
    Config = FAnoGANConfig
    resumable = ("gan_epochs", "encoder_epochs")

    def _build(self):
        cfg = self.config
        return seeded(lambda: {"generator": Generator(cfg.gan_size, cfg.latent_dim, cfg.width),
                               "critic": Critic(cfg.gan_size, cfg.width),
                               "encoder": Encoder(cfg.gan_size, cfg.latent_dim, cfg.width)}, cfg.seed)

    def _latent(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """z ~ U(-1, 1)^d: bounded, so the tanh encoder can reach every code the generator saw."""
        return (torch.rand(n, self.config.latent_dim, generator=rng) * 2 - 1).to(self.device)

    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        images = training_images(train, cfg.gan_size, progress=progress, desc=f"{self.name}: reading images")
        self.networks = {k: v.to(self.device) for k, v in self._build().items()}
        optimizers = {name: torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)
                      for name, net in self.networks.items()}
        rng = torch.Generator().manual_seed(cfg.seed)
        ckpt, self.history = self._start(images, optimizers, rng,
                                         {"critic_loss": [], "wasserstein": [], "generator_loss": [],
                                          "encoder_loss": []})
        gan_done, encoder_done = len(self.history["critic_loss"]), len(self.history["encoder_loss"])
        if encoder_done and gan_done < cfg.gan_epochs:
            raise ValueError(f"{self.name}: the checkpoint {cfg.checkpoint} already trains the encoder against "
                             f"a {gan_done}-epoch GAN; gan_epochs={cfg.gan_epochs} would change that GAN")
        self._train_gan(images, optimizers, rng, ckpt, self._epoch_bar(gan_done, cfg.gan_epochs, "WGAN-GP", progress))
        self._train_encoder(images, optimizers, rng, ckpt,
                            self._epoch_bar(encoder_done, cfg.encoder_epochs, "izif encoder", progress))
        for net in self.networks.values():
            net.eval()

    def _train_gan(self, images, optimizers, rng, ckpt, bar) -> None:
        cfg = self.config
        gen, critic = self.networks["generator"], self.networks["critic"]
        gen.train()
        per_epoch = math.ceil(len(images) / cfg.batch_size)
        for epoch in bar:
            critic_sum = distance_sum = generator_sum = 0.0
            generator_steps = 0
            for step, idx in enumerate(minibatches(len(images), cfg.batch_size, rng)):
                real = images[idx].to(self.device)
                with torch.no_grad():
                    fake = gen(self._latent(len(idx), rng))
                distance = critic(real).mean() - critic(fake).mean()
                loss = -distance + cfg.gp_weight * self._gradient_penalty(real, fake, rng)
                optimizers["critic"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["critic"].step()
                critic_sum += loss.item()
                distance_sum += distance.item()
                if (epoch * per_epoch + step + 1) % cfg.n_critic == 0:  # counted over the whole run
                    critic.requires_grad_(False)
                    loss_g = -critic(gen(self._latent(len(idx), rng))).mean()
                    optimizers["generator"].zero_grad(set_to_none=True)
                    loss_g.backward()
                    optimizers["generator"].step()
                    critic.requires_grad_(True)
                    generator_sum += loss_g.item()
                    generator_steps += 1
            self._end_epoch(bar, ckpt, optimizers, rng, {
                "critic_loss": critic_sum / per_epoch, "wasserstein": distance_sum / per_epoch,
                "generator_loss": generator_sum / generator_steps if generator_steps else None})

    def _gradient_penalty(self, real, fake, rng) -> torch.Tensor:
        """WGAN-GP: (||grad of the critic at a random point between real and fake|| - 1)^2."""
        mix = torch.rand(len(real), 1, 1, 1, generator=rng).to(self.device)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.networks["critic"](between).sum(), between, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def _train_encoder(self, images, optimizers, rng, ckpt, bar) -> None:
        cfg = self.config
        for name in ("generator", "critic"):
            self.networks[name].eval().requires_grad_(False)
        encoder = self.networks["encoder"].train()
        for _ in bar:
            total = 0.0
            for idx in minibatches(len(images), cfg.batch_size, rng):
                loss = self._izif(images[idx].to(self.device))[0].mean()
                optimizers["encoder"].zero_grad(set_to_none=True)
                loss.backward()
                optimizers["encoder"].step()
                total += loss.item() * len(idx)
            self._end_epoch(bar, ckpt, optimizers, rng, {"encoder_loss": total / len(images)})
        for name in ("generator", "critic"):
            self.networks[name].requires_grad_(True)
        encoder.eval()

    def _izif(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A(x) per image and the per-pixel residual [B, h, w] (mean over colour channels)."""
        critic = self.networks["critic"]
        rebuilt = self.networks["generator"](self.networks["encoder"](x))
        residual = (x - rebuilt).pow(2)
        features = (critic.features(x) - critic.features(rebuilt)).pow(2).mean(1)
        return residual.flatten(1).mean(1) + self.config.kappa * features, residual.mean(1)

    def _score(self, images: torch.Tensor):
        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        scores, residual = self._izif(to_model_space(images, self.config.gan_size))
        return scores, self._maps(residual, images.shape[-2:])
