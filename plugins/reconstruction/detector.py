"""Reconstruction baselines: a convolutional autoencoder and f-AnoGAN. Both learn to reproduce
normal images only; a defect is what they fail to reproduce, so the reconstruction error is
the anomaly map and (reduced to one number) the image score."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F

from pyanom.anomaly_map import upsample_scores
from pyanom.augment import random_hflip
from pyanom.data.transforms import checked_image_size, normalize, pair
from pyanom.detector import Detector
from pyanom_plugins.reconstruction.networks import (ConvAutoencoder, Critic, Encoder, Generator,
                                                    check_power_of_two)
from pyanom.settings import Size, setting
from pyanom.training import (LossHistory, ShuffledBatches, Stage, Trainer, TrainingSettings, decode_once,
                             load_module, module_tensors, seeded)


def _power_of_two(size):
    return checked_image_size(size, minimum=16, power_of_two=True)


def _gan_size(size):
    check_power_of_two("gan_size", size, 16)
    return size


@dataclass
class AutoencoderConfig(TrainingSettings):
    """The autoencoder's settings; defaults are the Team 3 report's."""

    image_size: Size = setting(256, "images are resized to this (an int: square), each side a power of two",
                               check=_power_of_two)
    latent_dim: int = setting(1024, "size of the bottleneck code", bounds=(1, None))
    width: int = setting(32, "channels of the first convolution, doubling per stage up to 256", bounds=(1, None))
    epochs: int = setting(300, "training epochs", bounds=(0, None))
    batch_size: int = setting(32, "training images per step", bounds=(1, None))
    lr: float = setting(1e-3, "Adam learning rate", bounds=(0, None), open="low")
    hflip: bool = setting(True, "flip training images horizontally at random")
    score: str = setting("mean", "image score: mean squared error, or the largest value of the smoothed map "
                         "(one strong local defect outweighs diffuse edge error)", choices=("mean", "max"))
    blur_sigma: float = setting(4.0, "Gaussian smoothing of the anomaly map, in pixels (0: the raw error)",
                                bounds=(0, None))


@dataclass
class FAnoGANConfig(TrainingSettings):
    """f-AnoGAN's settings; defaults follow the paper's (Schlegl et al. 2019) schedule."""

    image_size: Size = setting(256, "input and anomaly-map size (an int: square); the networks work at gan_size",
                               check=checked_image_size)
    gan_size: int = setting(64, "side of the square images the GAN and encoder work at (a power of two >= 16)",
                            check=_gan_size)
    latent_dim: int = setting(100, "size of the generator's latent code", bounds=(1, None))
    width: int = setting(64, "channels of the critic's first convolution, doubling per stage (DCGAN: 64)",
                         bounds=(1, None))
    gan_epochs: int = setting(1500, "epochs of the WGAN-GP stage", bounds=(0, None))
    encoder_epochs: int = setting(200, "epochs of the izif encoder stage", bounds=(0, None))
    batch_size: int = setting(32, "training images per step", bounds=(1, None))
    lr: float = setting(2e-4, "Adam learning rate of every network", bounds=(0, None), open="low")
    betas: Tuple[float, float] = setting((0.5, 0.999), "Adam's betas", bounds=(0, 1), open="high")
    n_critic: int = setting(5, "critic updates per generator update", bounds=(1, None))
    gp_weight: float = setting(10.0, "lambda of the WGAN-GP gradient penalty", bounds=(0, None))
    kappa: float = setting(1.0, "weight of the critic-feature residual in the izif loss and the score",
                           bounds=(0, None))
    blur_sigma: float = setting(4.0, "Gaussian smoothing of the upsampled anomaly map, in pixels (0: none)",
                                bounds=(0, None))


def to_model_space(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> [B, 3, height, width] of size (an int: square) normalised
    with mean = std = 0.5, i.e. [-1, 1], the range of a tanh output layer."""
    size = pair("size", size)
    if images.shape[-2:] != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    return normalize(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ReconstructionDetector(Detector):
    """Shared by both: networks built from the config, their tensors and loss history saved with
    them; training runs through `pyanom.training` (checkpoint, resume, progress, NaN guard)."""

    supervision = "unsupervised"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.networks: dict[str, torch.nn.Module] | None = None
        self.history = LossHistory()

    @abc.abstractmethod
    def _build(self) -> dict[str, torch.nn.Module]:
        """Fresh networks, initialised from config.seed."""

    def _maps(self, error: torch.Tensor, size) -> torch.Tensor:
        """Per-pixel error [B, h, w] -> anomaly maps at the input size (bilinear, then smoothed)."""
        return upsample_scores(error, size, float(self.config.blur_sigma))

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        from pyanom.export.graph import ScoreGraph

        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        return ScoreGraph(self._score, self.networks)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        out = self.history.tensors()  # the training curve travels with the model
        for name, net in self.networks.items():
            out.update(module_tensors(name, net))
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        networks = self._build()
        for name, net in networks.items():
            load_module(name, net, tensors)
            net.to(self.device).eval()
        self.networks = networks
        self.history = LossHistory.from_tensors(tensors)


class Autoencoder(ReconstructionDetector):
    """Convolutional autoencoder trained with the mean squared error on normal images; the
    per-pixel squared error of the reconstruction (mean over colour channels) is the anomaly
    map, its mean over the image (or the smoothed map's maximum, see config.score) the score."""

    name = "autoencoder"
    Config = AutoencoderConfig

    def _build(self):
        cfg = self.config
        return {"autoencoder": seeded(lambda: ConvAutoencoder(cfg.image_size, cfg.latent_dim, cfg.width), cfg.seed)}

    def _fit(self, train, progress: bool) -> None:
        cfg = self.config
        data = decode_once(train, device=self.device, size=cfg.image_size, progress=progress,
                           desc=f"{self.name}: reading images")
        self.networks = {k: v.to(self.device) for k, v in self._build().items()}
        net = self.networks["autoencoder"]
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)

        def step(batch, ctx):
            x = to_model_space(data.floats(batch), cfg.image_size)
            if cfg.hflip:
                x = random_hflip(ctx.rng, x)
            loss = F.mse_loss(net(x), x)
            ctx.minimise(loss, optimizer)
            return {"loss": loss}

        self.history = Trainer(self, data, progress=progress).run([
            Stage("training", "epochs", cfg.epochs, self.networks, {"autoencoder": optimizer},
                  ShuffledBatches(len(data), cfg.batch_size), step)])

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
        data = decode_once(train, device=self.device, size=cfg.gan_size, progress=progress,
                           desc=f"{self.name}: reading images")
        self.networks = {k: v.to(self.device) for k, v in self._build().items()}
        gen, critic, encoder = (self.networks[k] for k in ("generator", "critic", "encoder"))
        optimizers = {name: torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)
                      for name, net in self.networks.items()}

        def gan_step(batch, ctx):
            real = to_model_space(data.floats(batch), cfg.gan_size)
            with torch.no_grad():
                fake = gen(self._latent(len(batch), ctx.rng))
            distance = critic(real).mean() - critic(fake).mean()
            loss = -distance + cfg.gp_weight * self._gradient_penalty(real, fake, ctx.rng)
            ctx.minimise(loss, optimizers["critic"])
            losses = {"critic_loss": loss, "wasserstein": distance, "generator_loss": None}
            if (ctx.step + 1) % cfg.n_critic == 0:  # counted over the whole stage
                critic.requires_grad_(False)
                losses["generator_loss"] = -critic(gen(self._latent(len(batch), ctx.rng))).mean()
                ctx.minimise(losses["generator_loss"], optimizers["generator"])
                critic.requires_grad_(True)
            return losses

        def freeze_gan(trainer):
            for net in (gen, critic):
                net.eval().requires_grad_(False)

        def encoder_step(batch, ctx):
            loss = self._izif(to_model_space(data.floats(batch), cfg.gan_size))[0].mean()
            ctx.minimise(loss, optimizers["encoder"])
            return {"encoder_loss": loss}

        sampler = ShuffledBatches(len(data), cfg.batch_size)
        self.history = Trainer(self, data, progress=progress).run([
            Stage("WGAN-GP", "gan_epochs", cfg.gan_epochs, {"generator": gen, "critic": critic},
                  {k: optimizers[k] for k in ("generator", "critic")}, sampler, gan_step,
                  losses=("critic_loss", "wasserstein", "generator_loss")),
            Stage("izif encoder", "encoder_epochs", cfg.encoder_epochs, {"encoder": encoder},
                  {"encoder": optimizers["encoder"]}, sampler, encoder_step, losses=("encoder_loss",),
                  start=freeze_gan)])

    def _gradient_penalty(self, real, fake, rng) -> torch.Tensor:
        """WGAN-GP: (||grad of the critic at a random point between real and fake|| - 1)^2."""
        mix = torch.rand(len(real), 1, 1, 1, generator=rng).to(self.device)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(self.networks["critic"](between).sum(), between, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def _izif(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A(x) per image and the per-pixel residual [B, h, w] (mean over colour channels)."""
        critic = self.networks["critic"]
        rebuilt = self.networks["generator"](self.networks["encoder"](x))
        residual = (x - rebuilt).pow(2)
        features = (critic.features(x) - critic.features(rebuilt)).pow(2).mean(1)
        return residual.flatten(1).mean(1) + self.config.kappa * features, residual.mean(1)

    def export_module(self, *, knn_chunk: int | None = None) -> torch.nn.Module:
        from pyanom.export.graph import AntialiasedResize, ScoreGraph

        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        cfg = self.config
        resize = AntialiasedResize(cfg.image_size, cfg.gan_size)

        def score(images):  # _score with the resize as constant matrices (at gan_size, only normalises)
            scores, residual = self._izif(to_model_space(resize(images), cfg.gan_size))
            return scores, self._maps(residual, images.shape[-2:])

        return ScoreGraph(score, {**self.networks, "resize": resize})

    def _score(self, images: torch.Tensor):
        if self.networks is None:
            raise RuntimeError(f"{self.name}: not fitted")
        scores, residual = self._izif(to_model_space(images, self.config.gan_size))
        return scores, self._maps(residual, images.shape[-2:])
