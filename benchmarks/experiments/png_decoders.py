"""PNG decoding time of the MVTec AD bottle test images (900 x 900 RGB), one thread, ms per image:
PIL (what pyanom uses) against the decoders installed of imagecodecs, pyspng and OpenCV, each
checked to give PIL's pixels; then what pyanom's own reading adds (resize to 256, array).

    OMP_NUM_THREADS=1 python3 -P benchmarks/experiments/png_decoders.py
"""

import glob
import io
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pyanom.data.files import read_image
from pyanom.data.transforms import Preprocess

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
paths = sorted(glob.glob(str(DATA / "mvtec" / "bottle" / "test" / "*" / "*.png")))[:30]
raw = [Path(p).read_bytes() for p in paths]
reference = np.asarray(Image.open(io.BytesIO(raw[0])).convert("RGB"))


def timed(name: str, decode) -> None:
    best = min(_once(decode) for _ in range(3))
    print(f"{name}: {1000 * best / len(raw):.2f} ms")


def _once(decode) -> float:
    start = time.perf_counter()
    for data in raw:
        decode(data)
    return time.perf_counter() - start


timed("PIL", lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")))
try:
    import imagecodecs
    assert np.array_equal(imagecodecs.png_decode(raw[0]), reference)
    timed("imagecodecs", imagecodecs.png_decode)
except ImportError:
    print("imagecodecs: not installed")
try:
    import pyspng
    assert np.array_equal(pyspng.load(raw[0]), reference)
    timed("pyspng", pyspng.load)
except ImportError:
    print("pyspng: not installed")
try:
    import cv2
    cv2.setNumThreads(1)
    decode = lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # noqa: E731
    assert np.array_equal(decode(raw[0]), reference)
    timed("OpenCV", decode)
except ImportError:
    print("OpenCV: not installed")
pre = Preprocess(256)
timed("pyanom: read_image + resize 256 + array", lambda d: pre.array(read_image(io.BytesIO(d))))
