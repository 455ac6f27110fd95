"""Heatmap overlays: an anomaly map drawn in colour over its image, saved as PNG.

Colours come from small built-in tables, so nothing beyond numpy, scipy and Pillow is needed.
Pass one ``vmin`` / ``vmax`` for every image of a model (e.g. the normal-score range, or 0 and
a few times the decision threshold): the same colour then means the same score in every
picture. Left out, each map is stretched to its own range, which makes a flawless part look
as hot as a broken one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pyanom._fs import atomic_path

__all__ = ["COLORMAPS", "colorize", "draw_heatmap", "heatmap_scale", "overlay", "resize_map", "save_overlay"]


def _jet(x: np.ndarray) -> np.ndarray:
    # The classic piecewise-linear jet: dark blue, blue, cyan, yellow, red, dark red.
    return np.clip(1.5 - np.abs(4 * x[:, None] - np.array([3.0, 2.0, 1.0])), 0, 1)


# viridisLite::inferno(10): black, purple, red, orange, pale yellow; perceptually uniform.
_INFERNO = np.array([[0x00, 0x00, 0x04], [0x1B, 0x0C, 0x42], [0x4B, 0x0C, 0x6B],
                     [0x78, 0x1C, 0x6D], [0xA5, 0x2C, 0x60], [0xCF, 0x44, 0x46],
                     [0xED, 0x69, 0x25], [0xFB, 0x9A, 0x06], [0xF7, 0xD0, 0x3C],
                     [0xFC, 0xFF, 0xA4]]) / 255.0


def _inferno(x: np.ndarray) -> np.ndarray:
    knots = np.linspace(0, 1, len(_INFERNO))
    return np.stack([np.interp(x, knots, _INFERNO[:, c]) for c in range(3)], axis=1)


PNG_LEVEL = 1  # zlib level of heatmap PNGs: lossless at any level, and several times faster than 6
_LEVELS = np.linspace(0, 1, 256)
# 256-entry RGB lookup tables (float in [0, 1]).
COLORMAPS = {"jet": _jet(_LEVELS), "inferno": _inferno(_LEVELS)}


def _numpy(x, name: str, *, boolean: bool = False) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().float()
    a = np.asarray(x)
    if boolean and a.dtype == bool:
        return a
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def heatmap_scale(threshold: float, low: float) -> tuple[float, float]:
    """(vmin, vmax) of a model's heatmaps: blue at ``low`` (the smallest value of the maps drawn),
    red from 1.5x the decision threshold up. One scale for every picture of a model, so one colour
    means one score in the command's heatmaps, the report and the service."""
    return float(low), max(1.5 * float(threshold), float(low) + 1e-6)


def colorize(anomaly_map, *, vmin: float | None = None, vmax: float | None = None,
             colormap: str = "jet") -> np.ndarray:
    """Anomaly map [H,W] -> float RGB [H,W,3] in [0, 1]; scores at or below vmin get the
    coldest colour, at or above vmax the hottest."""
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    a = _map(anomaly_map)
    return COLORMAPS[colormap][_levels(a, *_range(a, vmin, vmax))]


def resize_map(anomaly_map, size: tuple[int, int]) -> np.ndarray:
    """An anomaly map [h, w] as float32 [H, W] at size (height, width), bilinear (PIL's, which
    widens its kernel when shrinking): a map at a model's size drawn over the image as stored.
    `Detector.predict` returns such maps itself; this is for maps kept at the model's size
    (the command line keeps them so, for memory) and for exported models' numpy maps."""
    a = np.ascontiguousarray(_numpy(anomaly_map, "anomaly_map"), dtype=np.float32)
    if a.shape == tuple(size):
        return a
    return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def overlay(image, anomaly_map, *, vmin: float | None = None, vmax: float | None = None,
            alpha: float = 0.5, mask=None, colormap: str = "jet",
            contour_color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Blend the coloured anomaly map over the image: uint8 RGB [H,W,3].

    image: a picture as decoded (a PIL image, or a uint8 array H x W x 3 or H x W), or floats
    [3,H,W] or [1,H,W] (grey) in [0, 1], i.e. before mean/std normalisation. anomaly_map: [H,W]
    at the image's size (`resize_map`). alpha: weight of the heatmap (0 = image only). mask:
    optional ground truth [H,W]; its outline is drawn in ``contour_color``, about one pixel per
    256 pixels of image side thick so it stays visible on large images. Drawn in strips of rows,
    so beyond the picture, its map and the result, memory stays small whatever the image's size.
    """
    background = _Background(image)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    a = _map(anomaly_map)
    if a.shape != background.shape:
        raise ValueError(f"anomaly_map is {a.shape} but the image is {background.shape}; "
                         "resize the map to the image first (pyanom.visualize.resize_map)")
    low, high = _range(a, vmin, vmax)
    out = np.empty((*a.shape, 3), np.uint8)
    table = _blend_table(colormap, alpha) if background.uint8 else None
    step = max(1, (1 << 20) // max(1, a.shape[1]))
    for top in range(0, a.shape[0], step):
        rows = slice(top, min(top + step, a.shape[0]))
        index = _levels(a[rows], low, high)
        if table is not None:  # the same arithmetic as below, looked up: exact, and much faster
            bg = background.uint8_rows(rows)
            key = index.astype(np.int32)
            for c in range(3):
                out[rows, :, c] = np.take(table[c], bg[..., c % bg.shape[-1]].astype(np.int32) * 256 + key)
        else:
            rgb = background.float_rows(rows)
            out[rows] = np.rint(((1 - alpha) * rgb + alpha * COLORMAPS[colormap][index]) * 255)
    if mask is not None:
        m = _numpy(mask, "mask", boolean=True) != 0
        if m.shape != a.shape:
            raise ValueError(f"mask is {m.shape} but the image is {a.shape}")
        from scipy import ndimage  # only here: predict need not import scipy

        width = max(1, round(min(m.shape) / 256))
        inner = ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), iterations=width)
        out[m & ~inner] = contour_color
    return out


def draw_heatmap(picture, anomaly_map, *, vmin: float, vmax: float, mask=None, max_side: int | None = None,
                 alpha: float = 0.5) -> Image.Image:
    """The heatmap picture of one image: its map (at any size, e.g. the model's) resized to the
    picture and blended over it (`overlay`); ``max_side`` caps the longest side (the picture is
    shrunk first, for heatmaps of very large images)."""
    if max_side is not None and max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.BILINEAR)
        if mask is not None:
            mask = np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(picture.size)) > 127
    heat = resize_map(anomaly_map, (picture.height, picture.width))
    return Image.fromarray(overlay(picture, heat, vmin=vmin, vmax=vmax, mask=mask, alpha=alpha))


class _Background:
    """The image under the heatmap, read a strip of rows at a time."""

    def __init__(self, image):
        if isinstance(image, Image.Image):
            if image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            self.picture, self.array, self.uint8 = image, None, True
            self.shape = (image.height, image.width)
            return
        self.picture = None
        if isinstance(image, np.ndarray) and image.dtype == np.uint8:
            if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
                raise ValueError(f"a uint8 image must be H x W x 3 or H x W, got shape {image.shape}")
            self.array, self.uint8, self.shape = image, True, image.shape[:2]
            return
        img = _numpy(image, "image")
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"image must be [3,H,W] or [1,H,W], got shape {img.shape}")
        if img.size and (img.min() < -1e-3 or img.max() > 1 + 1e-3):
            raise ValueError(f"image values must lie in [0, 1] (undo the normalisation first), "
                             f"got [{img.min():.3g}, {img.max():.3g}]")
        self.array, self.uint8, self.shape = img, False, img.shape[1:]

    def uint8_rows(self, rows: slice) -> np.ndarray:
        if self.picture is not None:
            strip = np.asarray(self.picture.crop((0, rows.start, self.shape[1], rows.stop)))
        else:
            strip = self.array[rows]
        return strip[..., None] if strip.ndim == 2 else strip

    def float_rows(self, rows: slice) -> np.ndarray:
        strip = np.clip(self.array[:, rows], 0, 1).transpose(1, 2, 0)
        return np.broadcast_to(strip, (*strip.shape[:2], 3))


def _map(anomaly_map) -> np.ndarray:
    """An anomaly map as a 2-D float array (float32 kept as it is: no copy of a large map)."""
    if hasattr(anomaly_map, "detach"):
        anomaly_map = anomaly_map.detach().cpu()
    a = np.asarray(anomaly_map)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"anomaly_map must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"anomaly_map must be [H,W], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("anomaly_map contains NaN or Inf")
    return a


def _range(a: np.ndarray, vmin, vmax) -> tuple[float, float]:
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin}, vmax={vmax}")
    return (float(a.min()) if vmin is None else float(vmin)), (float(a.max()) if vmax is None else float(vmax))


def _levels(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each value's colour level 0..255 (float64 arithmetic, as `colorize` does)."""
    if not high > low:
        return np.zeros(a.shape, np.intp)
    return np.rint(np.clip((a.astype(np.float64) - low) / (high - low), 0, 1) * 255).astype(np.intp)


_TABLES: dict = {}


def _blend_table(colormap: str, alpha: float) -> np.ndarray:
    """[3, 256 * 256] uint8: channel c of an 8-bit image value v under colour level i, blended as
    `overlay` blends float images (v as float32 v / 255, then float64), looked up at v * 256 + i."""
    key = (colormap, float(alpha))
    if key not in _TABLES:
        values = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float64)
        lut = COLORMAPS[colormap]
        table = np.rint(((1 - alpha) * values[:, None, None] + alpha * lut[None]) * 255)
        _TABLES[key] = np.ascontiguousarray(table.astype(np.uint8).transpose(2, 0, 1).reshape(3, -1))
    return _TABLES[key]


def save_overlay(path, image, anomaly_map, **kwargs) -> Path:
    """Write :func:`overlay` (same keyword arguments) as a PNG at ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(overlay(image, anomaly_map, **kwargs)).save(tmp, format="PNG")
    return path
