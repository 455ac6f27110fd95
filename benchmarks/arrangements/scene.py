"""Drawing and writing for the arrangement sets: shapes as signed distances in an object's own
frame, painted at twice the output size and box-filtered down, and the MVTec AD writer.

Every image is drawn from its own generator, seeded by (set seed, set name, split, type,
index), so a set is reproducible and its image i does not change when the counts do.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from pyanom.data.synthetic import _lighting as lighting, _unit as unit  # noqa: F401 (the sets use both)

ARRANGEMENT_TYPES = ("too_many", "missing", "wrong_place")
LIGHT = np.array([-0.6, -0.8])  # direction the light comes from, in image coordinates (x, y)


@dataclass(frozen=True)
class Pose:
    """Where an object lies in the image: centre (x, y) and turn in output pixels and radians."""

    x: float
    y: float
    angle: float = 0.0

    def place(self, u: float, v: float, turn: float = 0.0) -> "Pose":
        """The pose of a child at (u, v) of this object's frame, turned by `turn` more."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return Pose(self.x + u * c - v * s, self.y + u * s + v * c, self.angle + turn)


class Scene:
    """An RGB picture of `size` x `size` pixels, drawn at `ss` times that and box-filtered down."""

    def __init__(self, size: int, ss: int = 2):
        self.size, self.ss = size, ss
        self.rgb = np.zeros((size * ss, size * ss, 3), np.float32)

    def frame(self, pose: Pose, reach: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """The window within `reach` output pixels of the pose's centre, and the object's own
        coordinates (u along its turned x axis, v across) of every canvas pixel in it."""
        n, ss = self.size * self.ss, self.ss
        x0, x1 = (min(n, max(0, int(math.floor(e * ss)))) for e in (pose.x - reach, pose.x + reach + 1))
        y0, y1 = (min(n, max(0, int(math.floor(e * ss)))) for e in (pose.y - reach, pose.y + reach + 1))
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5) / ss - pose.x
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5) / ss - pose.y
        c, s = math.cos(pose.angle), math.sin(pose.angle)
        u = dx[None, :] * c + dy[:, None] * s
        v = -dx[None, :] * s + dy[:, None] * c
        return (slice(y0, y1), slice(x0, x1)), u, v

    def coverage(self, distance: np.ndarray) -> np.ndarray:
        """Alpha of a shape from its signed distance in output pixels (one canvas pixel of ramp)."""
        return np.clip(0.5 - distance * self.ss, 0.0, 1.0)

    def paint(self, window, alpha: np.ndarray, colour) -> None:
        """Lay `colour` (RGB, or an RGB array over the window) over the window with `alpha`."""
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        if not len(rows):
            return
        inner = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 3:
            colour = colour[inner]
        a = alpha[inner][..., None]
        target = self.rgb[window][inner]
        target *= 1 - a
        target += colour * a

    def shade(self, window, factor: np.ndarray) -> None:
        self.rgb[window] *= factor[..., None]

    def full(self) -> tuple[slice, slice]:
        return (slice(None), slice(None))

    def noise(self, rng: np.random.Generator, sigma: float) -> np.ndarray:
        """Unit-variance smooth noise over the whole canvas, `sigma` in output pixels."""
        n = self.size * self.ss
        return unit(ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma * self.ss))

    def drop_shadow(self, alpha: np.ndarray, *, blur: float, offset: float, depth: float) -> None:
        """Darken the picture under a shadow cast away from the light by `alpha` (whole canvas)."""
        ss = self.ss
        shadow = ndimage.gaussian_filter(alpha, blur * ss)
        shadow = ndimage.shift(shadow, (-LIGHT[1] * offset * ss, -LIGHT[0] * offset * ss), order=1)
        self.rgb *= (1 - depth * shadow)[..., None]

    def lay(self, parts: list[list], *, blur: float, offset: float, depth: float) -> np.ndarray:
        """Put parts down: each a list of layers (window, alpha, colour), their shadow first; the
        parts' whole-canvas alpha (where they lie)."""
        alpha = self.canvas()
        for layers in parts:
            for window, a, _ in layers:
                alpha[window] = np.maximum(alpha[window], a)
        self.drop_shadow(alpha, blur=blur, offset=offset, depth=depth)
        for layers in parts:
            for window, a, colour in layers:
                self.paint(window, a, colour)
        return alpha

    def image(self) -> np.ndarray:
        """[size, size, 3] in [0, 1]: the canvas box-filtered to the output size."""
        n, ss = self.size, self.ss
        return self.rgb.reshape(n, ss, n, ss, 3).mean(axis=(1, 3))

    def mask(self, alpha: np.ndarray, level: float = 0.5) -> np.ndarray:
        """A whole-canvas alpha box-filtered to the output size and thresholded."""
        n, ss = self.size, self.ss
        return alpha.reshape(n, ss, n, ss).mean(axis=(1, 3)) > level

    def canvas(self) -> np.ndarray:
        """A zero whole-canvas alpha to accumulate shapes (masks, shadows) in."""
        return np.zeros(self.rgb.shape[:2], np.float32)


# -- signed distances (output pixels; negative inside) ------------------------------------------

def box(u, v, half_u: float, half_v: float, radius: float = 0.0):
    qu, qv = np.abs(u) - half_u + radius, np.abs(v) - half_v + radius
    return np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0) - radius


def circle(u, v, radius: float):
    return np.hypot(u, v) - radius


def segment(u, v, a: tuple[float, float], b: tuple[float, float], radius: float):
    """A capsule: the segment a-b thickened by `radius`."""
    au, av = u - a[0], v - a[1]
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip((au * du + av * dv) / max(du * du + dv * dv, 1e-12), 0, 1)
    return np.hypot(au - t * du, av - t * dv) - radius


def hexagon(u, v, apothem: float):
    d = np.abs(u)
    for k in (1, 2):
        a = k * math.pi / 3
        d = np.maximum(d, np.abs(u * math.cos(a) + v * math.sin(a)))
    return d - apothem


def lit(u, v, reach: float, strength: float, angle: float):
    """A linear shading factor across an object (brighter towards the light), for its turn."""
    c, s = math.cos(angle), math.sin(angle)
    lu, lv = LIGHT[0] * c + LIGHT[1] * s, -LIGHT[0] * s + LIGHT[1] * c
    return 1 + strength * np.clip((u * lu + v * lv) / reach, -1, 1)


def jitter(rng: np.random.Generator, colour, spread: float = 0.05) -> np.ndarray:
    """A colour as one copy of a part shows it: brighter or darker by `spread`, its hue a quarter as much."""
    level = 1 + spread * rng.standard_normal()
    return np.clip(np.asarray(colour, np.float32) * level * (1 + spread / 4 * rng.standard_normal(3)), 0, 1)


# -- the set on disk ----------------------------------------------------------------------------

Render = Callable[[np.random.Generator, int, str], tuple[np.ndarray, np.ndarray]]


def write_set(root: str | Path, name: str, render: Render, types: tuple[str, ...], *, n_train: int,
              n_test_good: int, n_test_per_type: int, size: int = 256, seed: int = 0,
) -> Path:
    """Write `render`'s images in the MVTec AD layout under root (a new folder): n_train good
    training images, n_test_good good and n_test_per_type of each of `types` test images with
    their masks. render(rng, size, type) gives an RGB image in [0, 1] and a boolean mask."""
    root = Path(root)
    root.mkdir(parents=True)
    jobs = [("train", "good", i) for i in range(n_train)] + [("test", "good", i) for i in range(n_test_good)]
    jobs += [("test", t, i) for t in types for i in range(n_test_per_type)]
    for split, kind, index in jobs:
        rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{split}/{kind}/{index}".encode())])
        image, mask = render(rng, size, kind)
        noise = rng.normal(0, 0.008, image.shape)  # the camera's
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(image + noise)).save(folder / f"{index:03d}.png", compress_level=1)
        if kind != "good":
            if not mask.any():
                raise AssertionError(f"{name} {kind} {index}: empty mask")
            masks = root / "ground_truth" / kind
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{index:03d}_mask.png", compress_level=1)
    return root


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
