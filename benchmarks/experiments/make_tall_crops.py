"""KolektorSDD2-shaped images from magnetic tile: tall crops at KolektorSDD2's aspect (about 230
wide x 630 high, height / width 2.74), for benchmarks of non-square image sizes.

Each magnetic tile image is cut to the largest window of that aspect it holds, at its own pixels
(no resizing): full height and height / 2.74 wide, or full width and 2.74 x width high where the
image is narrower. Where the window goes is drawn from a seeded generator: uniformly for a good
image; for a defective one uniformly among the positions that keep at least half of its mask's
pixels (the most-keeping position where none keeps half), so every defective crop shows its
defect and the class folder's label stays true. Written as `<class>/<name>.png` and, for defective
images, `<class>/<name>_mask.png` (the "folders" layout), losslessly from the decoded JPEG.

    python benchmarks/experiments/make_tall_crops.py ../shared/data/magnetic_tile /tmp/tall_tiles
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ASPECT = 630 / 230  # KolektorSDD2: height / width


def crop_window(h: int, w: int, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image's tall window."""
    ch, cw = (h, round(h / ASPECT)) if round(h / ASPECT) <= w else (round(w * ASPECT), w)
    vertical = ch < h  # the window slides down the image, else across it
    span = (h - ch) if vertical else (w - cw)
    starts = np.arange(span + 1)
    if mask is not None and mask.any():
        profile = mask.sum(1 if vertical else 0)
        kept = np.convolve(profile, np.ones(ch if vertical else cw), mode="valid")
        ok = starts[kept >= kept.max() / 2] if kept.max() >= profile.sum() / 2 else starts[kept == kept.max()]
        start = int(rng.choice(ok))
    else:
        start = int(rng.integers(0, span + 1))
    return (start, 0, ch, cw) if vertical else (0, start, ch, cw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="magnetic tile folder (MT_<class>/Imgs/<name>.jpg + .png)")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    sizes = []
    for image in sorted(args.source.glob("MT_*/Imgs/*.jpg")):
        cls = image.parent.parent.name
        mask = np.asarray(Image.open(image.with_suffix(".png")).convert("L")) > 127
        pixels = Image.open(image).convert("L")
        top, left, ch, cw = crop_window(pixels.height, pixels.width, mask, rng)
        (args.out / cls).mkdir(parents=True, exist_ok=True)
        pixels.crop((left, top, left + cw, top + ch)).save(args.out / cls / f"{image.stem}.png")
        if cls != "MT_Free":
            Image.fromarray(mask[top:top + ch, left:left + cw].astype(np.uint8) * 255).save(
                args.out / cls / f"{image.stem}_mask.png")
        sizes.append((cw, ch))
    w, h = np.array(sizes).T
    print(f"{len(sizes)} crops in {args.out}: width {np.median(w):.0f} (median; {w.min()}-{w.max()}), "
          f"height {np.median(h):.0f} ({h.min()}-{h.max()})")


if __name__ == "__main__":
    main()
