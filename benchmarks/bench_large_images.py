"""Peak memory of `pyanom predict` on large images: a 48 MP RGB picture (8000 x 6000) and a 187.5 MP
greyscale line-scan picture (15000 x 12500), each scored and drawn with a full-size heatmap, in a
process of its own (peak RSS from the kernel: ru_maxrss).

    python3 -P benchmarks/bench_large_images.py [--json benchmarks/results/large_images.json]

The budget (issue 33): under 3 GB for 48 MP, under 4 GB for 187 MP. The images are generated (a ramp
plus a faint random texture, which compresses like a real part) into a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import pyanom
from pyanom.data import make_inspection_set, open_dataset

RUN = """
import json, resource, sys
from pyanom import runs
result = runs.predict_folder(sys.argv[1], [sys.argv[2]], sys.argv[3], say=None)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "scored": result.scored}))
"""
CASES = {"48 MP RGB (8000 x 6000)": (8000, 6000, "RGB", 3 * 1024),
         "187.5 MP grey (15000 x 12500)": (15000, 12500, "L", 4 * 1024)}


def picture(path: Path, width: int, height: int, mode: str) -> None:
    tile = np.random.default_rng(0).integers(0, 12, (256, 256), dtype=np.uint8)
    ramp = (np.arange(width) * 200 // width).astype(np.uint8)
    image = Image.fromarray(np.tile(tile, (height // 256 + 1, width // 256 + 1))[:height, :width] + ramp)
    (image if mode == "L" else image.convert("RGB")).save(path, compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyanom-large-"))
    make_inspection_set(work / "small", n_train=8, n_test_good=1, n_test_defect=1, size=64, seed=0)
    det = pyanom.create("patchcore", image_size=256, coreset_ratio=0.1)
    det.fit(open_dataset(work / "small", "train"), progress=False)
    model = det.save(work / "m.pyanom")
    rows = []
    for name, (width, height, mode, budget_mb) in CASES.items():
        folder = work / name.split()[0]
        folder.mkdir()
        picture(folder / "part.png", width, height, mode)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-P", "-c", RUN, str(model), str(folder), str(work / "out" / folder.name)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"case": name, "peak_rss_mb": round(report["peak_mb"]), "budget_mb": budget_mb,
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1])
    result = {"benchmark": "large_images", "command": "python3 -P benchmarks/bench_large_images.py",
              "machine": f"{platform.machine()}", "date": datetime.date.today().isoformat(), "entries": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
