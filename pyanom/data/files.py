"""Image files: finding, reading and checking them before any work starts."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# pyanom's own decompression-bomb limit, checked from the header before any pixel is decoded.
# Above PIL's (a warning at 89.5 MP, a refusal at 179 MP), since line-scan and large-part images
# reach those; 250 MP of RGB decode to 750 MB. Set by `--max-pixels` / set_max_pixels().
DEFAULT_MAX_PIXELS = 250_000_000
_max_pixels = DEFAULT_MAX_PIXELS
_pil_lock = threading.Lock()
_pil_readers = 0
_pil_limit = Image.MAX_IMAGE_PIXELS

_T = TypeVar("_T")
_R = TypeVar("_R")


def is_image_file(path: Path) -> bool:
    """Whether pyanom reads `path` as an image: a known extension, not a hidden file."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted; hidden files and folders are skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def find_images(*inputs: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Expand image files and folders (their images, sorted; sub-folders too when recursive)
    into one list in input order."""
    if not inputs:
        raise ValueError("no image or folder given")
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item, recursive=recursive)
            if not found:
                hint = "" if recursive else " (its sub-folders were not searched)"
                raise FileNotFoundError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
            paths += found
        elif item.is_file():
            if not is_image_file(item):
                raise ValueError(f"{item}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return list(dict.fromkeys(paths))


def set_max_pixels(limit: int) -> None:
    """The largest image (width x height) pyanom decodes; larger ones are refused, naming the file."""
    global _max_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_pixels must be a positive int, got {limit!r}")
    _max_pixels = limit


@contextmanager
def _pil_limit_lifted() -> Iterator[None]:
    """PIL's own bomb check off while pyanom reads (pyanom checks its limit instead); restored
    when the last concurrent reader is done, so code outside pyanom keeps PIL's guard."""
    global _pil_readers, _pil_limit
    with _pil_lock:
        if _pil_readers == 0:
            _pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _pil_readers += 1
    try:
        yield
    finally:
        with _pil_lock:
            _pil_readers -= 1
            if _pil_readers == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit


class ImageTooLarge(ValueError):
    """An image over the pixel limit (see set_max_pixels)."""


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Image.open under pyanom's pixel limit: an image over it is refused from its header."""
    with _pil_limit_lifted(), Image.open(path) as img:
        pixels = img.width * img.height
        if pixels > _max_pixels:
            raise ImageTooLarge(f"{path}: {img.width}x{img.height} is {pixels / 1e6:.1f} megapixels, over the limit "
                                f"of {_max_pixels:,} pixels; if the image is genuine, raise it: --max-pixels {pixels}")
        yield img


def image_mode(path: Path) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the header, for reporting conversions once per run."""
    with open_image(path) as img:
        return img.width, img.height, img.mode


# EXIF orientation -> the transposition that shows the image as a viewer does.
_SHOWN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation in the header read at open, before any pixel is decoded (1: as
    stored). TIFF: 1, because PIL applies a TIFF's orientation itself while decoding. An EXIF
    block that PIL finds only after the pixels (a PNG's late eXIf chunk) is not looked for, so
    the size `checked_size` reports is always the size read."""
    raw = img.info.get("exif") if img.format != "TIFF" else None
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        orientation = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: show the pixels as stored
        return 1
    return orientation if orientation in _SHOWN else 1


def _decoded(img: Image.Image) -> Image.Image:
    """The pixels of an opened image, decoded and turned as its EXIF orientation says."""
    orientation = _orientation(img)
    img.load()
    return img.transpose(_SHOWN[orientation]) if orientation in _SHOWN else img


def _read(path: Path, what: str, use):
    """use(opened image) for the file at path; a file that fails to decode is a ValueError naming
    it, `what` ("image", "mask") saying what it was read as."""
    try:
        with open_image(path) as img:
            return use(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image (unknown or corrupt header)") from None
    except ImageTooLarge:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: corrupt or truncated {what} ({err})") from None


def read_image(path: Path) -> Image.Image:
    """An image file as 8-bit RGB (see to_rgb), turned as its EXIF orientation says."""
    return _read(path, "image", lambda img: to_rgb(_decoded(img)))  # a JPEG body is first decoded here


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as every detector reads it: greyscale is replicated, 16-bit greyscale scaled to 8
    bits, float greyscale taken as [0, 1], alpha dropped. The one conversion for files, PIL images
    and arrays alike, so an image scores the same however it is passed."""
    if img.mode.startswith("I"):  # 16-bit greyscale PNG/TIFF ("I;16", "I")
        grey = np.asarray(img, dtype=np.float32) / 257.0
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        return Image.fromarray((np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def read_mask(path: Path) -> np.ndarray:
    """A defect mask as bool [H, W]: any channel above 127, or above 0 for masks stored as 0/1."""
    values = _read(path, "mask", lambda img: np.asarray(_decoded(img)))
    if values.ndim == 3:
        values = values[..., :1] if values.shape[-1] <= 2 else values[..., :3]  # drop alpha
        values = values.max(axis=-1)
    return values > (127 if values.max(initial=0) > 1 else 0)


def checked_size(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image file; raises ValueError naming the file otherwise.

    Cheap but complete: PNG chunks are CRC-checked without decoding pixels; a JPEG that ends
    with its end-of-image marker is trusted; anything else is decoded fully, so a truncated
    file of any format is caught. The size is the image's as read: after its EXIF orientation.
    """
    size = _read(path, "image", _checked)
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"{path}: image has no pixels ({size[0]}x{size[1]})")
    return size


def _checked(img: Image.Image) -> tuple[int, int]:
    size = img.size[::-1] if _orientation(img) in (5, 6, 7, 8) else img.size  # a quarter turn
    if img.format == "PNG":
        img.verify()
    elif img.format != "JPEG" or not _ends_with_jpeg_eoi(Path(img.filename)):
        size = _decoded(img).size
    return size


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        return f.read().rstrip(b"\x00").endswith(b"\xff\xd9")


def parallel_map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """fn over items on a few threads (file reads and image decoding release the GIL)."""
    if len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        return list(pool.map(fn, items))


def raise_problems(problems: Iterable[Exception], what: str) -> None:
    """Raise one error listing every problem found (the type of the first), if there are any."""
    problems = list(problems)
    if not problems:
        return
    if len(problems) == 1:
        raise problems[0]
    shown = "\n  ".join(str(p) for p in problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    raise type(problems[0])(f"{len(problems)} problems in {what}:\n  {shown}{more}")
