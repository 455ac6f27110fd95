"""Arrangement set "board": a small circuit board seen from above, six component sites of one
footprint (two solder pads in a silkscreen outline) in two rows; five carry a chip, an
electrolytic capacitor, a resistor, a header and a tantalum capacitor, always the same one per
site, and the sixth is a spare site, bare on a good board. The board lies anywhere within
+-20 degrees and a few per cent of the middle, under uneven light; the solder mask, the parts'
colours, their seating on the pads (shift, turn, size) and the chip's lot marking vary.

Defects whose every local patch occurs on good boards:
  too_many     the spare site carries one of the five parts (one part twice on the board)
  missing      one of the five sites is bare, as the spare is
  wrong_place  two parts have swapped sites
and local ones: "scratch" (a thin line through the solder mask, copper showing) and "spot"
(a scorch mark on the board or a part). Arrangement masks cover the sites concerned.
"""

from __future__ import annotations

import math

import numpy as np

from pyanom.data.synthetic import _scratch, _spot
from scene import Pose, Scene, box, circle, jitter, lighting, lit, segment, write_set

TYPES = ("too_many", "missing", "wrong_place", "scratch", "spot")
SITES = [(u, v) for v in (-0.105, 0.105) for u in (-0.215, 0.0, 0.215)]  # board units (of the image size)
LAYOUT = ("chip", "ecap", None, "resistor", "header", "tantalum")  # what each site carries; None: spare
PARTS = tuple(p for p in LAYOUT if p)
SPARE = LAYOUT.index(None)
BOARD = (0.36, 0.25)  # half width, half height
GREEN, BENCH, SOLDER = (0.10, 0.36, 0.19), (0.40, 0.41, 0.44), (0.80, 0.80, 0.76)


def render(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    layout = list(LAYOUT)
    if kind == "too_many":
        layout[SPARE] = PARTS[rng.integers(len(PARTS))]
        changed = [SPARE]
    elif kind == "missing":
        changed = [_populated(rng, 1)[0]]
        layout[changed[0]] = None
    elif kind == "wrong_place":
        changed = _populated(rng, 2)
        a, b = changed
        layout[a], layout[b] = layout[b], layout[a]
    else:
        changed = []

    scene = Scene(size)
    k = size * rng.uniform(0.95, 1.05)  # pixels per board unit
    board = Pose(size / 2 + rng.uniform(-0.04, 0.04) * size, size / 2 + rng.uniform(-0.04, 0.04) * size,
                 math.radians(rng.uniform(-20, 20)))
    scene.rgb[:] = jitter(rng, BENCH, 0.03) * (1 + 0.03 * scene.noise(rng, 1.0) + 0.03 * scene.noise(rng, 8.0))[..., None]

    window, u, v = scene.frame(board, 0.5 * size)
    u, v = u / k, v / k
    outline = box(u, v, *BOARD, 0.015)
    outline = np.maximum(outline, -box(u + BOARD[0], v + BOARD[1], 0.05, 0.05))  # the notch: which way is up
    board_alpha = scene.canvas()
    board_alpha[window] = scene.coverage(outline * k)
    scene.drop_shadow(board_alpha, blur=3, offset=3, depth=0.35)
    mask_tone = 1 + 0.025 * scene.noise(rng, 0.7)[window] + 0.02 * scene.noise(rng, 5.0)[window]
    scene.paint(window, board_alpha[window], jitter(rng, GREEN, 0.04) * mask_tone[..., None])
    _copper(scene, board, k)

    scene.lay([_part(scene, rng, board.place(SITES[i][0] * k + rng.uniform(-0.007, 0.007) * k,
                                             SITES[i][1] * k + rng.uniform(-0.007, 0.007) * k,
                                             math.radians(rng.uniform(-5, 5))), p, k * rng.uniform(0.96, 1.04))
               for i, p in enumerate(layout) if p], blur=1.5, offset=2, depth=0.45)

    mask = np.zeros((size, size), bool)
    for i in changed:
        site = scene.canvas()
        w, su, sv = scene.frame(board.place(SITES[i][0] * k, SITES[i][1] * k), 0.15 * size)
        site[w] = scene.coverage(box(su, sv, 0.09 * k, 0.08 * k))
        mask |= scene.mask(site)
    on_board = scene.mask(board_alpha, 0.99)
    if kind in ("scratch", "spot"):
        mask = _local(scene, rng, kind, on_board, board, k)
    scene.rgb *= (lighting(rng, size * scene.ss, rng.uniform(0.05, 0.15)) * rng.uniform(0.85, 1.15))[..., None]
    return scene.image(), mask


def _populated(rng, n: int) -> list[int]:
    sites = [i for i, p in enumerate(LAYOUT) if p]
    return [int(i) for i in rng.choice(sites, n, replace=False)]


def _copper(scene: Scene, board: Pose, k: float) -> None:
    """What the board's design puts on every board: traces, vias, pads, outlines, edge contacts."""
    def near(cu, cv, reach):  # a window around board point (cu, cv), coordinates in board units
        w, u, v = scene.frame(board.place(cu * k, cv * k), reach * k)
        return w, u / k + cu, v / k + cv

    traces = [((-0.33, 0.0), (0.30, 0.0))]
    for su, sv in SITES:
        side = np.sign(sv)
        traces.append(((su + 0.062, sv - side * 0.03), (su + 0.062, 0.0)))  # right pad to the middle bus
        traces.append(((su - 0.062, sv + side * 0.03), (su - 0.062, side * 0.2)))  # left pad outwards, to a via
    for a, b in traces:
        w, u, v = near((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, max(abs(a[0] - b[0]), abs(a[1] - b[1])) / 2 + 0.01)
        scene.paint(w, scene.coverage(segment(u, v, a, b, 0.0035) * k), (0.16, 0.47, 0.26))
    for su, sv in SITES:
        cu, cv = su - 0.062, np.sign(sv) * 0.2
        w, u, v = near(cu, cv, 0.012)
        scene.paint(w, scene.coverage(np.maximum(circle(u - cu, v - cv, 0.009), -circle(u - cu, v - cv, 0.004)) * k),
                    (0.78, 0.66, 0.35))
        w, u, v = near(su, sv, 0.095)
        line = np.abs(box(u - su, v - sv, 0.09, 0.08)) - 0.002  # silkscreen outline
        scene.paint(w, scene.coverage(line * k), (0.90, 0.92, 0.88))
        for side in (-1, 1):
            pad = box(u - su - side * 0.062, v - sv, 0.016, 0.03, 0.002)
            scene.paint(w, scene.coverage(pad * k), np.array(SOLDER) * lit(u, v, 0.4, 0.1, board.angle)[..., None])
    for cu, cv in ((0.33, -0.22), (0.33, 0.22), (-0.33, 0.22)):  # mounting holes
        w, u, v = near(cu, cv, 0.025)
        scene.paint(w, scene.coverage(circle(u - cu, v - cv, 0.022) * k), (0.78, 0.66, 0.35))
        scene.paint(w, scene.coverage(circle(u - cu, v - cv, 0.014) * k), (0.30, 0.30, 0.32))
    for cv in np.linspace(-0.14, 0.14, 6):  # edge contacts on the right
        w, u, v = near(0.343, cv, 0.016)
        scene.paint(w, scene.coverage(box(u - 0.343, v - cv, 0.012, 0.013, 0.002) * k), (0.86, 0.72, 0.36))


def _part(scene: Scene, rng, pose: Pose, name: str, k: float) -> list:
    """The layers (window, alpha, colour) of one part, drawn in its own frame (units of k px)."""
    window, u, v = scene.frame(pose, 0.11 * k)
    u, v = u / k, v / k
    cover = lambda d: scene.coverage(d * k)  # noqa: E731
    shade = lit(u, v, 0.08, 0.18, pose.angle)[..., None]
    silver = np.array((0.74, 0.74, 0.72)) * shade
    layers = []
    if name == "chip":
        for cu in (-0.045, -0.015, 0.015, 0.045):
            for cv in (-0.052, 0.052):
                layers.append((window, cover(box(u - cu, v - cv, 0.006, 0.011)), silver))
        layers.append((window, cover(box(u, v, 0.065, 0.042, 0.004)), jitter(rng, (0.11, 0.11, 0.12), 0.08) * shade))
        layers.append((window, cover(circle(u + 0.047, v + 0.024, 0.007)), (0.30, 0.30, 0.31)))
        for cv in (-0.004, 0.014):  # the lot marking differs part to part
            length = rng.uniform(0.015, 0.035)
            layers.append((window, cover(box(u + 0.035 - length, v - cv, length, 0.003)), (0.42, 0.42, 0.42)))
    elif name == "ecap":
        r = np.hypot(u, v) / 0.05
        body = jitter(rng, (0.10, 0.16, 0.42), 0.06) * ((1.1 - 0.3 * r ** 2) * lit(u, v, 0.05, 0.25, pose.angle))[..., None]
        layers.append((window, cover(circle(u, v, 0.05)), body))
        layers.append((window, cover(np.maximum(circle(u, v, 0.05), 0.028 - u)), (0.72, 0.75, 0.80)))
        vent = np.minimum(segment(u, v, (-0.03, 0), (0.02, 0), 0.002), segment(u, v, (0, -0.03), (0, 0.03), 0.002))
        layers.append((window, cover(vent), (0.55, 0.58, 0.62)))
    elif name == "resistor":
        for side in (-1, 1):
            layers.append((window, cover(segment(u, v, (side * 0.045, 0), (side * 0.072, 0), 0.005)), silver))
        across = np.clip(v / 0.019, -1, 1)
        cylinder = (0.55 + 0.5 * np.sqrt(1 - across ** 2) - 0.15 * across)[..., None]
        body = cover(segment(u, v, (-0.05, 0), (0.05, 0), 0.019))
        layers.append((window, body, jitter(rng, (0.82, 0.70, 0.52), 0.05) * cylinder))
        for cu, colour in zip((-0.03, -0.012, 0.006, 0.03),
                              ((0.42, 0.22, 0.08), (0.08, 0.08, 0.08), (0.72, 0.12, 0.08), (0.82, 0.66, 0.26))):
            layers.append((window, body * cover(np.abs(u - cu) - 0.005), np.array(colour) * cylinder))
    elif name == "tantalum":
        for side in (-1, 1):
            layers.append((window, cover(box(u - side * 0.05, v, 0.01, 0.022)), silver))
        layers.append((window, cover(box(u, v, 0.045, 0.03, 0.003)), jitter(rng, (0.88, 0.62, 0.12), 0.05) * shade))
        layers.append((window, cover(box(u - 0.028, v, 0.006, 0.029)), (0.45, 0.26, 0.06)))
    elif name == "header":
        layers.append((window, cover(box(u, v, 0.072, 0.05, 0.004)), jitter(rng, (0.90, 0.88, 0.80), 0.03) * shade))
        holes = np.min([box(u - cu, v - cv, 0.009, 0.009) for cu in (-0.042, 0, 0.042) for cv in (-0.02, 0.02)], axis=0)
        layers.append((window, cover(holes), (0.12, 0.12, 0.12)))
        layers.append((window, cover(box(u, v + 0.05, 0.02, 0.007)), (0.68, 0.66, 0.60)))
    else:
        raise ValueError(name)
    return layers


def _local(scene: Scene, rng, kind: str, on_board: np.ndarray, board: Pose, k: float) -> np.ndarray:
    """Draw a scratch or a scorch mark somewhere on the board; its mask."""
    size, ss = scene.size, scene.ss
    mask = np.zeros((size, size), bool)
    while mask.sum() < 6:
        where = board.place(rng.uniform(-0.3, 0.3) * k, rng.uniform(-0.2, 0.2) * k)
        centre = np.array([where.x, where.y])
        if kind == "scratch":
            alpha = _scratch(rng, size, start=centre, length=rng.uniform(0.08, 0.2) * k,
                             direction=rng.uniform(0, 2 * np.pi))
        else:
            alpha = _spot(rng, size, centre=centre, radius=rng.uniform(0.015, 0.03) * k)
        alpha = alpha * on_board
        mask = alpha > 0.35
    up = np.repeat(np.repeat(alpha, ss, 0), ss, 1)
    if kind == "scratch":
        scene.paint(scene.full(), up, jitter(rng, (0.80, 0.60, 0.40), 0.05))
    else:
        scene.rgb *= 1 - up[..., None] * (1 - np.array([0.32, 0.24, 0.16], np.float32))
    return mask


def make(root, *, n_train: int, n_test_good: int, n_test_per_type: int, size: int = 256, seed: int = 0):
    """Write the set in the MVTec AD layout under root (scene.write_set)."""
    return write_set(root, "board", render, TYPES, n_train=n_train, n_test_good=n_test_good,
                     n_test_per_type=n_test_per_type, size=size, seed=seed)
