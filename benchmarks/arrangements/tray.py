"""Arrangement set "tray": a moulded kit tray seen from above with four long slots that hold one
angle bracket, two bolts, three washers and two coil springs, one kind per slot. The parts slide:
each lies anywhere along its slot and a little across it, bolts and springs either way round and
turned a few degrees, washers at any turn, never on one another. The tray lies within +-12
degrees and a few per cent of the middle, under uneven light; the plastic's tint and grain and each
part's finish and size vary.

Defects whose every local patch occurs in good trays (a gap in a slot is as wide as the parts
happen to leave it):
  too_many     one slot holds one part more
  missing      one slot holds one part fewer (the bracket's: none)
  wrong_place  one part lies in another part's slot (its own holds one fewer)
and local ones: "scratch" (a stress-whitened line in the plastic) and "spot" (rust on a part or an
oil stain on a slot's floor). Arrangement masks cover the slots concerned.
"""

from __future__ import annotations

import math

import numpy as np

from pyanom.data.synthetic import _scratch, _spot
from scene import LIGHT, Pose, Scene, box, circle, hexagon, jitter, lighting, lit, write_set

TYPES = ("too_many", "missing", "wrong_place", "scratch", "spot")
TRAY = (0.43, 0.415)  # half width, half height (units of the image size)
SLOT = (0.385, 0.085)  # a slot's floor, half length and half width
SLOTS = [(0.0, v) for v in (-0.3, -0.1, 0.1, 0.3)]
CONTENTS = (("bracket", 1), ("bolt", 2), ("washer", 3), ("spring", 2))
PLASTIC, TABLE = (0.16, 0.30, 0.55), (0.62, 0.60, 0.56)
PART = 1.2  # parts' size: their drawings' units are PART x these
# Each part as circles (u, v, radius) covering it in its own frame, in drawing units: its extent.
FOOTPRINT = {
    "bracket": [(u, -0.03, 0.021) for u in np.arange(-0.04, 0.1, 0.032)] + [(-0.04, v, 0.021) for v in (0.0, 0.032)],
    "bolt": [(-0.06, 0.0, 0.026)] + [(u, 0.0, 0.013) for u in (-0.03, 0.0, 0.03, 0.06, 0.08)],
    "washer": [(0.0, 0.0, 0.029)],
    "spring": [(u, 0.0, 0.02) for u in (-0.035, 0.0, 0.035)],
}


def render(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    contents = [[name] * count for name, count in CONTENTS]
    changed = []
    if kind in ("too_many", "missing"):
        c = int(rng.integers(len(contents)))
        contents[c] = contents[c] + [contents[c][0]] if kind == "too_many" else contents[c][1:]
        changed = [c]
    elif kind == "wrong_place":
        a, b = (int(i) for i in rng.choice(len(contents), 2, replace=False))
        contents[b] = contents[b] + [contents[a][0]]
        contents[a] = contents[a][1:]
        changed = [a, b]

    scene = Scene(size)
    k = size * rng.uniform(0.96, 1.04)
    tray = Pose(size / 2 + rng.uniform(-0.03, 0.03) * size, size / 2 + rng.uniform(-0.03, 0.03) * size,
                math.radians(rng.uniform(-12, 12)))
    scene.rgb[:] = jitter(rng, TABLE, 0.03) * (1 + 0.025 * scene.noise(rng, 1.0) + 0.03 * scene.noise(rng, 10.0))[..., None]
    window, u, v = scene.frame(tray, 0.5 * size)
    u, v = u / k, v / k
    tray_alpha = scene.canvas()
    tray_alpha[window] = scene.coverage(box(u, v, *TRAY, 0.04) * k)
    scene.drop_shadow(tray_alpha, blur=4, offset=4, depth=0.35)
    plastic = jitter(rng, PLASTIC, 0.04) * (1 + 0.03 * scene.noise(rng, 1.5)[window])[..., None]
    scene.paint(window, tray_alpha[window], plastic * 1.12)

    c, s = math.cos(tray.angle), math.sin(tray.angle)
    light = np.array([LIGHT[0] * c + LIGHT[1] * s, -LIGHT[0] * s + LIGHT[1] * c])  # in the tray's frame
    floors = scene.canvas()
    for cu, cv in SLOTS:
        alpha = scene.coverage(box(u - cu, v - cv, *SLOT, 0.02) * k)
        floors[window] = np.maximum(floors[window], alpha)
        wall = box(u - cu + 0.025 * light[0], v - cv + 0.025 * light[1], *SLOT, 0.02)  # the wall's shadow
        shade = 0.82 * (1 - 0.35 * np.clip(0.5 + wall / 0.012, 0, 1))
        scene.paint(window, alpha, plastic * shade[..., None])

    parts = []
    for (cu, cv), names in zip(SLOTS, contents):
        for name, (pu, pv, turn) in zip(names, _placements(rng, names)):
            pose = tray.place((cu + pu) * k, (cv + pv) * k, turn)
            parts.append(_part(scene, rng, pose, name, PART * k * rng.uniform(0.96, 1.04)))
    on_parts = scene.lay(parts, blur=1.2, offset=1.8, depth=0.45)

    mask = np.zeros((size, size), bool)
    for i in changed:
        region = scene.canvas()
        region[window] = scene.coverage(box(u - SLOTS[i][0], v - SLOTS[i][1], *SLOT, 0.02) * k)
        mask |= scene.mask(region)
    if kind == "scratch":
        mask = _scratch_on(scene, rng, scene.mask(tray_alpha, 0.99), tray, k, plastic.mean((0, 1)))
    elif kind == "spot":
        mask = _spot_on(scene, rng, on_parts, floors, tray, k)
    scene.rgb *= (lighting(rng, size * scene.ss, rng.uniform(0.05, 0.15)) * rng.uniform(0.85, 1.15))[..., None]
    return scene.image(), mask


def _placements(rng, names: list[str]) -> list[tuple[float, float, float]]:
    """(u, v, turn) in a slot for each part: in a random order along the slot with random gaps,
    a random offset across it; bolts, springs and the bracket lie along it either way round."""
    turns = [rng.uniform(0, 2 * np.pi) if n == "washer" else rng.integers(2) * np.pi + math.radians(rng.normal(0, 6))
             for n in names]
    extents = []
    for name, turn in zip(names, turns):
        c, s = math.cos(turn), math.sin(turn)
        us = [PART * (a * c - b * s) for a, b, _ in FOOTPRINT[name]]
        vs = [PART * (a * s + b * c) for a, b, _ in FOOTPRINT[name]]
        r = [PART * r for _, _, r in FOOTPRINT[name]]
        extents.append((min(x - q for x, q in zip(us, r)), max(x + q for x, q in zip(us, r)),
                        min(y - q for y, q in zip(vs, r)), max(y + q for y, q in zip(vs, r))))
    room = 2 * (SLOT[0] - 0.01) - sum(hi - lo for lo, hi, _, _ in extents)
    if room < 0:
        raise RuntimeError(f"{names} do not fit in a slot")
    gaps = rng.dirichlet(np.ones(len(names) + 1)) * room
    order = rng.permutation(len(names))
    placed = [None] * len(names)
    at = -SLOT[0] + 0.01
    for gap, i in zip(gaps, order):
        lo, hi, vlo, vhi = extents[i]
        at += gap
        across = max(0.0, SLOT[1] - 0.008 - (vhi - vlo) / 2)
        placed[i] = (at - lo, rng.uniform(-across, across) - (vlo + vhi) / 2, turns[i])
        at += hi - lo
    return placed


def _part(scene: Scene, rng, pose: Pose, name: str, k: float) -> list:
    """The layers (window, alpha, colour) of one part, drawn in its own frame (units of k px)."""
    window, u, v = scene.frame(pose, 0.1 * k)
    u, v = u / k, v / k
    cover = lambda d: scene.coverage(d * k)  # noqa: E731
    metal = jitter(rng, (0.70, 0.71, 0.73), 0.06)
    if name == "bracket":
        plate = np.minimum(box(u - 0.025, v + 0.03, 0.0825, 0.0175, 0.004), box(u + 0.04, v - 0.0025, 0.0175, 0.05, 0.004))
        holes = np.minimum(circle(u - 0.07, v + 0.03, 0.008), circle(u + 0.04, v - 0.045, 0.008))
        colour = metal * lit(u, v, 0.1, 0.25, pose.angle)[..., None]
        return [(window, cover(np.maximum(plate, -holes)), colour)]
    if name == "bolt":
        across = np.clip(v / 0.011, -1, 1)
        thread = 0.82 + 0.18 * np.cos(2 * np.pi * (u + 0.4 * v) / 0.009)
        shank = metal * ((0.55 + 0.5 * np.sqrt(1 - across ** 2) - 0.15 * across) * thread)[..., None]
        head = metal * 1.05 * lit(u + 0.06, v, 0.026, 0.3, pose.angle)[..., None]
        return [(window, cover(box(u - 0.02, v, 0.06, 0.011, 0.003)), shank),
                (window, cover(hexagon(u + 0.06, v, 0.022)), head),
                (window, cover(hexagon(u + 0.06, v, 0.008)), metal * 0.35)]
    if name == "washer":
        ring = np.maximum(circle(u, v, 0.028), -circle(u, v, 0.012))
        colour = metal * 0.95 * lit(u, v, 0.028, 0.35, pose.angle)[..., None]
        return [(window, cover(ring), colour)]
    if name == "spring":
        turns = np.abs(((u + 0.45 * v) / 0.011) % 1 - 0.5)  # the coil's wire, turn after turn
        across = np.clip(v / 0.018, -1, 1)
        colour = np.array((0.34, 0.35, 0.39)) * (0.6 + 0.6 * np.sqrt(1 - across ** 2))[..., None]
        body = cover(box(u, v, 0.05, 0.018, 0.006)) * np.clip((0.36 - turns) * 12, 0, 1)
        return [(window, body, colour)]
    raise ValueError(name)


def _scratch_on(scene: Scene, rng, on_tray: np.ndarray, tray: Pose, k: float, plastic) -> np.ndarray:
    mask = np.zeros(on_tray.shape, bool)
    while mask.sum() < 6:
        where = tray.place(rng.uniform(-0.35, 0.35) * k, rng.uniform(-0.33, 0.33) * k)
        alpha = _scratch(rng, scene.size, start=np.array([where.x, where.y]), length=rng.uniform(0.08, 0.2) * k,
                         direction=rng.uniform(0, 2 * np.pi)) * on_tray
        mask = alpha > 0.35
    up = np.repeat(np.repeat(alpha, scene.ss, 0), scene.ss, 1)
    scene.paint(scene.full(), up * 0.8, np.clip(plastic * 1.4 + 0.25, 0, 1))
    return mask


def _spot_on(scene: Scene, rng, parts: np.ndarray, floors: np.ndarray, tray: Pose, k: float) -> np.ndarray:
    """Rust on a part, or an oil stain on a compartment floor (half and half)."""
    rust = rng.random() < 0.5
    where = scene.mask(parts if rust else floors, 0.99) & ~(scene.mask(parts, 0.01) if not rust else False)
    size, ss = scene.size, scene.ss
    mask = np.zeros((size, size), bool)
    ys, xs = np.nonzero(where)
    while mask.sum() < 6:
        i = rng.integers(len(ys))
        alpha = _spot(rng, size, centre=np.array([xs[i] + 0.5, ys[i] + 0.5]),
                      radius=rng.uniform(0.012, 0.025) * k) * where
        mask = alpha > 0.35
    up = np.repeat(np.repeat(alpha, ss, 0), ss, 1)[..., None]
    tint = np.array([0.62, 0.36, 0.18] if rust else [0.35, 0.33, 0.28], np.float32)
    scene.rgb *= 1 - up * (1 - tint)
    return mask


def make(root, *, n_train: int, n_test_good: int, n_test_per_type: int, size: int = 256, seed: int = 0):
    """Write the set in the MVTec AD layout under root (scene.write_set)."""
    return write_set(root, "tray", render, TYPES, n_train=n_train, n_test_good=n_test_good,
                     n_test_per_type=n_test_per_type, size=size, seed=seed)
