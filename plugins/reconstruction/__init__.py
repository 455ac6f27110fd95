"""Reconstruction baselines: a convolutional autoencoder and f-AnoGAN (Schlegl et al. 2019)."""

from pyanom_plugins.reconstruction.detector import Autoencoder, FAnoGAN

__all__ = ["Autoencoder", "FAnoGAN"]
