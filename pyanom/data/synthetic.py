"""A procedurally generated inspection set, fully offline: what `pyanom demo` fits and evaluates on.

Two kinds, both written in the MVTec AD layout with pixel masks:

* "texture": a surface (brushed metal, woven fabric or grainy leather-like material) whose
  every image varies in lighting, grain and orientation; defects are "scratch" (thin curved
  lines), "spot" (irregular blobs, darker or lighter) and "crack" (branching random walks).
* "cooccurrence": a threaded rod with a brass nut on exactly one end is good; the pose (any
  angle in the plane, position) and the lighting (level, gradient, hot spot) are random. "both_nuts" and "no_nut" are defects made only of normal-looking
  parts: every patch of them occurs in good images, only their arrangement is wrong. Their mask
  covers both nut seats (the arrangement is wrong, neither end alone). "local" defects (a spot
  or a scratch on the rod, one nut) are ordinary local anomalies, so a detector's accuracy on
  arrangement and on local defects can be compared on one set (SA-PatchCore vs PatchCore).

Every image is drawn from its own seed (set seed, kind, folder, index), so a set is reproducible
and image i does not change when the counts do.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

KINDS = ("texture", "cooccurrence")
SURFACES = ("metal", "fabric", "grain")
DEFECT_TYPES = {"texture": ("scratch", "spot", "crack"), "cooccurrence": ("both_nuts", "no_nut", "local")}

_SUPERSAMPLE = 4  # defect shapes are drawn at 4x and box-filtered, for smooth edges


def make_inspection_set(root: str | os.PathLike, *, kind: str = "texture", n_train: int = 40,
                        n_test_good: int = 15, n_test_defect: int = 15, size: int = 256, seed: int = 0,
                        surface: str = "metal", overwrite: bool = False) -> Path:
    """Write a synthetic inspection set in the MVTec AD layout under root and return root.

    n_test_defect images are spread evenly over the kind's defect types (DEFECT_TYPES[kind]).
    surface picks the material of kind="texture". An existing set under root is an error
    unless overwrite=True, which replaces a set written here before (pyanom.outputs: never a file
    it did not write).
    """
    from pyanom.outputs import OutputFolder

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {', '.join(SURFACES)}, got {surface!r}")
    for name, n, low in (("n_train", n_train, 1), ("n_test_good", n_test_good, 0),
                         ("n_test_defect", n_test_defect, 0), ("size", size, 64)):
        if isinstance(n, bool) or not isinstance(n, int) or n < low:
            raise ValueError(f"{name} must be an int >= {low}, got {n!r}")
    root = Path(root)
    if any((root / p).exists() for p in ("train", "test", "ground_truth")) and not overwrite:
        raise FileExistsError(f"{root}: already holds a data set (pass overwrite=True to replace it)")

    types = DEFECT_TYPES[kind]
    jobs = [("train", "good", i) for i in range(n_train)] + [("test", "good", i) for i in range(n_test_good)]
    jobs += [("test", types[i % len(types)], i // len(types)) for i in range(n_test_defect)]
    files = [f"{split}/{defect}/{index:03d}.png" for split, defect, index in jobs]
    files += [f"ground_truth/{defect}/{index:03d}_mask.png" for _, defect, index in jobs if defect != "good"]
    OutputFolder(root, "root").start(files)
    for split, defect, index in jobs:
        name = f"{kind}/{surface if kind == 'texture' else ''}/{split}/{defect}/{index}"
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if kind == "texture":
            image, mask = _texture_image(rng, size, surface, defect, np.random.default_rng([seed, 1]))
        else:
            image, mask = _cooccurrence_image(rng, size, defect)
        folder = root / split / defect
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_to_uint8(image)).save(folder / f"{index:03d}.png", compress_level=1)
        if defect != "good":
            masks = root / "ground_truth" / defect
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{index:03d}_mask.png", compress_level=1)
    return root


# ---------------------------------------------------------------------------------------------
# texture


def _texture_image(rng: np.random.Generator, size: int, surface: str, defect: str,
                   set_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tint = {"metal": (0.96, 1.0, 1.05), "fabric": (0.78, 0.66, 0.46), "grain": (0.62, 0.44, 0.30)}[surface]
    tint = np.array(tint) * (1 + 0.04 * set_rng.standard_normal(3))  # one hue per set
    grey = {"metal": _brushed_metal, "fabric": _woven_fabric, "grain": _grain}[surface](rng, size)
    grey = grey * _lighting(rng, size, 0.08)
    image = np.clip(grey[..., None] * tint * rng.uniform(0.94, 1.06), 0, 1)
    mask = np.zeros((size, size), bool)
    if defect == "good":
        return image, mask
    draw = {"scratch": _scratch, "spot": _spot, "crack": _crack}[defect]
    while not mask.any():  # a defect drawn (almost) off the image is redrawn
        alpha = draw(rng, size)
        mask = alpha > 0.35
    shift = rng.choice([-1, 1]) * rng.uniform(0.2, 0.35) if defect != "crack" else -rng.uniform(0.3, 0.45)
    if defect == "spot" and rng.random() < 0.5:  # a stain: darker and tinted, not just lighter or darker
        stain = np.array([0.55, 0.45, 0.3]) * rng.uniform(0.6, 1.0)
        return image * (1 - alpha[..., None]) + image * stain * alpha[..., None], mask
    return np.clip(image + shift * alpha[..., None], 0, 1), mask


def _brushed_metal(rng, size):
    """Streaks along one slightly tilted direction (the brushing), a few stronger ones, fine grain.

    The streak field is drawn coarse along the brushing (one value per 16 px) and sampled with
    linear interpolation at rotated coordinates: long streaks without a long filter.
    """
    step, rows, cols = 16.0, int(size * 1.5), int(size * 1.5 / 16) + 2
    strong = rng.random((rows, cols)) < 0.01
    field = rng.standard_normal((rows, cols)) + 3 * rng.standard_normal((rows, cols)) * strong
    field = ndimage.gaussian_filter(field, sigma=(0.7, 1.0), mode="wrap")
    angle = np.deg2rad(rng.uniform(-6, 6))
    y, x = np.mgrid[0:size, 0:size] - size / 2
    along = (x * np.cos(angle) + y * np.sin(angle)) / step + cols / 2
    across = -x * np.sin(angle) + y * np.cos(angle) + rows / 2
    streaks = _unit(ndimage.map_coordinates(field, [across, along], order=1, mode="wrap"))
    grain = _unit(ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.6))
    return 0.58 + 0.055 * streaks + 0.02 * grain


def _woven_fabric(rng, size):
    """Plain weave: warp and weft threads alternately on top, with fibre noise along each thread."""
    period = rng.uniform(7.5, 9.0) * size / 256
    angle = np.deg2rad(rng.uniform(-3, 3))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.random()
    v = (-x * np.sin(angle) + y * np.cos(angle)) / period + rng.random()
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = (np.floor(u) + np.floor(v)) % 2 == 0
    across_warp, along_warp = np.sin(np.pi * fv) ** 0.6, 0.75 + 0.25 * np.sin(np.pi * fu)
    across_weft, along_weft = np.sin(np.pi * fu) ** 0.6, 0.75 + 0.25 * np.sin(np.pi * fv)
    fibre_x = _unit(ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=(0.5, 3)))
    fibre_y = _unit(ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=(3, 0.5)))
    warp = across_warp * along_warp * (1 + 0.08 * fibre_x)
    weft = across_weft * along_weft * (1 + 0.08 * fibre_y) * 0.92
    return 0.2 + 0.55 * np.where(warp_on_top, warp, weft)


def _grain(rng, size):
    """Leather-like: noise at three scales plus small dark pores."""
    noise = sum(w * _unit(ndimage.gaussian_filter(rng.standard_normal((size, size)), s * size / 256))
                for w, s in ((0.5, 1.0), (0.35, 3.0), (0.25, 9.0)))
    pores = ndimage.gaussian_filter((rng.random((size, size)) < 0.003).astype(np.float32), 1.0)
    return 0.55 + 0.05 * noise - 1.2 * pores


def _scratch(rng, size, *, start=None, length=None, direction=None):
    """A thin, slightly curved line (quadratic Bezier); random placement unless given."""
    p0 = rng.uniform(0.15, 0.85, 2) * size if start is None else start
    length = rng.uniform(0.25, 0.55) * size if length is None else length
    direction = rng.uniform(0, 2 * np.pi) if direction is None else direction
    p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.12 * length, 2)
    t = np.linspace(0, 1, 64)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    return _draw(size, lambda d, s: d.line([tuple(p * s) for p in curve], fill=255,
                                             width=max(1, round(rng.uniform(1.2, 2.5) * s)), joint="curve"))


def _spot(rng, size, *, centre=None, radius=None):
    """An irregular blob: a polygon whose radius wanders smoothly around the centre, edges softened."""
    centre = rng.uniform(0.2, 0.8, 2) * size if centre is None else centre
    radius = rng.uniform(0.03, 0.07) * size if radius is None else radius
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = ndimage.gaussian_filter1d(rng.standard_normal(48), 3, mode="wrap")
    r = radius * (1 + 0.6 * wobble / (np.abs(wobble).max() + 1e-6) * rng.uniform(0.3, 0.6))
    r *= 1 + rng.uniform(0, 0.6) * np.cos(angles - rng.uniform(0, np.pi)) ** 2  # elongated
    points = centre + np.stack([r * np.cos(angles), r * np.sin(angles)], 1)
    alpha = _draw(size, lambda d, s: d.polygon([tuple(p * s) for p in points], fill=255))
    return ndimage.gaussian_filter(alpha, 1.0)


def _crack(rng, size):
    """A branching random walk: a main crack that forks now and then."""
    segments = []

    def walk(start, heading, steps, depth):
        point = np.array(start, float)
        for _ in range(steps):
            heading += rng.normal(0, 0.2)
            nxt = point + 2.0 * size / 256 * np.array([np.cos(heading), np.sin(heading)])
            segments.append((point, nxt, max(1.0, 1.8 - 0.5 * depth)))
            point = nxt
            if depth < 2 and rng.random() < 0.05:
                walk(point, heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0), steps // 3, depth + 1)

    walk(rng.uniform(0.25, 0.75, 2) * size, rng.uniform(0, 2 * np.pi), int(rng.integers(35, 70)), 0)
    return _draw(size, lambda d, s: [d.line([tuple(a * s), tuple(b * s)], fill=255, width=round(w * s))
                                     for a, b, w in segments])


# ---------------------------------------------------------------------------------------------
# co-occurrence: a threaded rod with one nut


def _cooccurrence_image(rng: np.random.Generator, size: int, defect: str) -> tuple[np.ndarray, np.ndarray]:
    s = size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    centre = s / 2 + rng.uniform(-0.06, 0.06, 2) * s
    angle = rng.uniform(0, 2 * np.pi)  # any pose: which end holds the nut says nothing by itself
    half_len, radius = rng.uniform(0.36, 0.40) * s, rng.uniform(0.042, 0.048) * s
    u = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
    v = -(x - centre[0]) * np.sin(angle) + (y - centre[1]) * np.cos(angle)

    background = 0.27 + 0.02 * _unit(ndimage.gaussian_filter(rng.standard_normal((s, s)), 0.8))
    background = background * _lighting(rng, s, rng.uniform(0.06, 0.18))

    rod_dist = np.hypot(np.maximum(np.abs(u) - half_len, 0), v) - radius
    rod_alpha = np.clip(0.5 - rod_dist, 0, 1)
    across = np.clip(v / radius, -1, 1)
    rod_shade = _cylinder_shade(across) * (1 - 0.13 * (0.5 + 0.5 * np.cos(2 * np.pi * u / (0.018 * s))))
    rod = rod_shade[..., None] * np.array([0.80, 0.82, 0.86])

    ends = [rng.choice([-1, 1])]
    if defect == "both_nuts":
        ends = [-1, 1]
    elif defect == "no_nut":
        ends = []
    nut_half, nut_radius = rng.uniform(0.05, 0.06) * s, 1.9 * radius
    seats = [e * (half_len - nut_half - rng.uniform(0.01, 0.025) * s) for e in (-1, 1)]
    nut_alpha = np.zeros((s, s), np.float32)
    nut = np.zeros((s, s, 3), np.float32)
    for e in ends:
        seat = seats[(e + 1) // 2]
        alpha, shade = _nut(u - seat, v, nut_half, nut_radius, rng.uniform(0, np.pi / 3))
        nut = nut * (1 - alpha[..., None]) + shade[..., None] * np.array([0.92, 0.78, 0.45]) * alpha[..., None]
        nut_alpha = np.maximum(nut_alpha, alpha)

    shadow = ndimage.shift(ndimage.gaussian_filter(np.maximum(rod_alpha, nut_alpha), 3), (0.02 * s, 0.012 * s),
                           order=1)
    image = background[..., None] * (1 - 0.45 * shadow[..., None])
    image = image * (1 - rod_alpha[..., None]) + rod * rod_alpha[..., None]
    image = image * (1 - nut_alpha[..., None]) + nut * nut_alpha[..., None]

    mask = np.zeros((s, s), bool)
    if defect in ("both_nuts", "no_nut"):
        for seat in seats:
            mask |= (np.abs(u - seat) <= nut_half) & (np.abs(v) <= nut_radius)
    elif defect == "local":
        on_rod = (rod_alpha > 0.5) & (nut_alpha < 0.5) & (np.abs(u) < half_len - 2.5 * nut_half)
        axis = np.array([np.cos(angle), np.sin(angle)])
        while not mask.any():
            where = centre + axis * rng.uniform(-0.5, 0.5) * half_len
            rust = rng.random() < 0.5
            if rust:
                alpha = _spot(rng, s, centre=where, radius=rng.uniform(0.7, 1.1) * radius)
            else:
                heading = angle + rng.choice([0, np.pi / 2]) + rng.normal(0, 0.3)
                alpha = _scratch(rng, s, start=where, length=rng.uniform(2, 5) * radius, direction=heading)
            alpha = alpha * on_rod
            mask = alpha > 0.35
        if rust:
            image = image * (1 - alpha[..., None] * (1 - np.array([0.45, 0.28, 0.15])))
        else:
            image = np.clip(image + rng.choice([-1, 1]) * rng.uniform(0.3, 0.45) * alpha[..., None], 0, 1)
    return np.clip(image * rng.uniform(0.8, 1.15), 0, 1), mask  # the light's level


def _nut(du, v, half, radius, turn):
    """Side view of a hex nut on the rod axis: its visible facets, lit from above (alpha, shade)."""
    corners = turn + np.arange(7) * np.pi / 3
    heights = radius * np.cos(corners)
    light = np.array([-0.45, 0.89])  # (across the rod, towards the viewer)
    shade = np.zeros_like(v)
    for k in range(6):
        normal = corners[k] + np.pi / 6
        if np.sin(normal) <= 0:  # facing away
            continue
        lo, hi = sorted((heights[k], heights[k + 1]))
        lit = 0.3 + 0.7 * max(0.0, float(np.cos(normal) * light[0] + np.sin(normal) * light[1]))
        shade = np.where((v >= lo) & (v < hi), lit, shade)
    extent = np.abs(heights).max()
    alpha = np.clip(0.5 + half - np.abs(du), 0, 1) * np.clip(0.5 + extent - np.abs(v), 0, 1)
    chamfer = 1 - 0.35 * np.clip(1 - (half - np.abs(du)) / (0.25 * half), 0, 1)
    return alpha.astype(np.float32), (shade * chamfer).astype(np.float32)


def _cylinder_shade(across):
    normal_z = np.sqrt(1 - across ** 2)
    diffuse = np.clip(-0.45 * across + 0.89 * normal_z, 0, 1)
    return 0.25 + 0.6 * diffuse + 0.35 * np.exp(-((across + 0.4) / 0.18) ** 2)


# ---------------------------------------------------------------------------------------------
# shared


def _lighting(rng, size, strength):
    """Smooth uneven illumination: a tilted plane plus a broad bright region."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    gx, gy = rng.normal(0, strength, 2)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    return 1 + gx * x + gy * y + strength * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.15)


def _draw(size, paint) -> np.ndarray:
    canvas = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    paint(ImageDraw.Draw(canvas), _SUPERSAMPLE)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _unit(a):
    return (a - a.mean()) / (a.std() + 1e-8)


def _to_uint8(image):
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
