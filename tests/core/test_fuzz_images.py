"""Image decoding under anything a camera, a converter or a broken disk produces: every mode and
bit depth PIL writes (16-bit and float greyscale, CMYK JPEG, palette, alpha), animated GIF and
multi-page TIFF under an image extension, EXIF orientation, and each of them truncated, with bytes
changed, or with a header claiming huge dimensions.

The contract (pyanom.data.files): `checked_size` gives the (width, height) that `read_image`
and `read_mask` then read, or refuses with a ValueError naming the file; `read_image` gives
8-bit RGB of that size or a ValueError naming the file; never another exception, a crash, a
hang, or an allocation of a size only the header claims beyond the pixel limit. Decoding runs
under a memory cap and a small pixel limit (set_max_pixels), so a header's claim shows.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fuzzing import fuzz, memory_cap
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from pyanom.data import files
from pyanom.data.files import checked_size, read_image, read_mask

MAX_PIXELS = 4_000_000  # a claimed 4 MP is decoded (16 MB RGBA); more is refused from the header

# (PIL mode, formats that write it)
MODES = [("1", ["PNG", "BMP", "TIFF", "GIF"]), ("L", ["PNG", "JPEG", "BMP", "TIFF", "GIF"]),
         ("LA", ["PNG", "TIFF"]), ("P", ["PNG", "BMP", "TIFF", "GIF"]), ("RGB", ["PNG", "JPEG", "BMP", "TIFF", "GIF"]),
         ("RGBA", ["PNG", "BMP", "TIFF"]), ("CMYK", ["JPEG", "TIFF"]), ("I;16", ["PNG", "TIFF"]),
         ("I;16B", ["PNG", "TIFF"]), ("I", ["TIFF"]), ("F", ["TIFF"]), ("YCbCr", ["JPEG", "TIFF"]),
         ("LAB", ["TIFF"]), ("PA", ["TIFF"]), ("RGBX", ["JPEG", "TIFF"])]
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".png"}  # a GIF named .png


@pytest.fixture(autouse=True)
def small_pixel_limit():
    files.set_max_pixels(MAX_PIXELS)
    yield
    files.set_max_pixels(files.DEFAULT_MAX_PIXELS)


def _pixels(rng: np.random.Generator, mode: str, w: int, h: int) -> Image.Image:
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    if mode.startswith("I"):
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).convert(mode)
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32) * 1.5 - 0.25)
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, (w, h), rng.integers(0, 256, w * h * bands, dtype=np.uint8).tobytes())


@st.composite
def encoded_images(draw) -> tuple[bytes, str, str]:
    """(file bytes, suffix, what it is) of a small valid image, with one of the extras."""
    mode, formats = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(formats))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    img = _pixels(rng, mode, w, h)
    extra = draw(st.sampled_from(["none", "frames", "exif", "progressive"]))
    out = io.BytesIO()
    kwargs = {}
    if extra == "frames" and fmt != "BMP" and fmt != "JPEG":
        kwargs = {"save_all": True, "append_images": [_pixels(rng, mode, w, h) for _ in range(2)]}
    elif extra == "exif":
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))  # orientation
        kwargs = {"exif": exif.tobytes()}
    elif extra == "progressive" and fmt == "JPEG":
        kwargs = {"progressive": True}
    if fmt == "PNG" and mode == "P" and extra == "none":
        kwargs["transparency"] = 0
    img.save(out, format=fmt, **kwargs)
    return out.getvalue(), SUFFIX[fmt], f"{mode} {fmt} {w}x{h} {extra}"


def _with_png_size(data: bytes, w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h, with a correct CRC (so only decoding can tell)."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", w, h) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


def _with_jpeg_size(data: bytes, w: int, h: int) -> bytes:
    """A JPEG whose frame header (SOF) claims w x h."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            return data[:at + 5] + struct.pack(">HH", h, w) + data[at + 9:]
    return data


def _with_bmp_size(data: bytes, w: int, h: int) -> bytes:
    return data[:18] + struct.pack("<ii", w, h) + data[26:]


@st.composite
def damaged_images(draw) -> tuple[bytes, str, str]:
    data, suffix, what = draw(encoded_images())
    kind = draw(st.sampled_from(["none", "truncate", "bytes", "size", "size"]))
    if kind == "truncate":
        cut = draw(st.integers(0, len(data) - 1))
        return data[:cut], suffix, f"{what} cut at {cut}"
    if kind == "bytes":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            damaged[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(damaged), suffix, f"{what} bytes changed"
    if kind == "size":
        w, h = draw(st.sampled_from([0, 1, 2000, 65535, 2**31 - 1])), draw(st.sampled_from([0, 1, 2000, 65535]))
        if data.startswith(b"\x89PNG"):
            return _with_png_size(data, w, h), suffix, f"{what} claims {w}x{h}"
        if data.startswith(b"\xff\xd8"):
            return _with_jpeg_size(data, min(w, 65535), h), suffix, f"{what} claims {w}x{h}"
        if data.startswith(b"BM"):
            return _with_bmp_size(data, w, h), suffix, f"{what} claims {w}x{h}"
    return data, suffix, what


def _check_decoding(path) -> None:
    """The contract above, for one file."""
    with memory_cap():
        try:
            width, height = checked_size(path)
        except ValueError as err:
            assert str(path) in str(err)
            return
        for read in (read_image, read_mask):
            try:
                got = read(path)
            except ValueError as err:  # a JPEG body is decoded only here (see checked_size)
                assert str(path) in str(err)
                continue
            if read is read_image:
                assert got.mode == "RGB" and got.size == (width, height)
            else:
                assert got.dtype == bool and got.shape == (height, width)


@fuzz(scale=5)
@given(image=encoded_images())
def test_every_valid_image_reads_as_rgb_of_its_checked_size(tmp_path, image):
    data, suffix, what = image
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    width, height = checked_size(path)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (width, height), what
    mask = read_mask(path)
    assert mask.shape == (height, width), what


@fuzz(scale=10)
@given(image=damaged_images())
def test_damaged_images_are_read_or_refused_by_name(tmp_path, image):
    data, suffix, what = image
    path = tmp_path / f"damaged {what.split()[0]}{suffix}"
    path.write_bytes(data)
    _check_decoding(path)


# -- cases the fuzzing found, kept as plain tests -----------------------------------------------------
def _saved(tmp_path, name: str, img: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, format=kwargs.pop("format"), **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("w, h", [(2**31 - 1, 1), (65535, 65535), (2000, 2000)])
def test_a_png_claiming_more_pixels_than_it_holds_is_refused_by_name(tmp_path, w, h):
    path = tmp_path / "claims.png"
    path.write_bytes(_with_png_size(_saved(tmp_path, "x", Image.new("RGB", (8, 8)), format="PNG"), w, h))
    _check_decoding(path)
