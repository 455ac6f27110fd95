"""How far a fit and its scores move from one thread count to another (docs/guides/reproducibility.md).

    python3 -P benchmarks/experiments/thread_counts.py            # fits at 1 and 2 threads, then compares

MVTec AD bottle: 48 training images, every 4th test image; patchcore at 128 px and a 2-epoch
autoencoder at 64 px, each fitted and scored in a process of its own at 1 and at 2 threads.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
SETTINGS = {"patchcore": dict(image_size=128),
            "autoencoder": dict(image_size=64, width=8, latent_dim=16, batch_size=16, epochs=2)}


def fit_and_score(threads: int, name: str, out: str) -> None:
    torch.set_num_threads(threads)
    import pyanom
    from pyanom.data import open_dataset

    size = SETTINGS[name]["image_size"]
    root = DATA / "mvtec" / "bottle"
    train = open_dataset(root, "train", image_size=size).subset(range(48))
    test = open_dataset(root, "test", image_size=size).subset(range(0, 83, 4))
    det = pyanom.create(name, **SETTINGS[name]).fit(train, progress=False)
    det.save(out + ".pyanom")
    pred = det.predict(test)
    torch.save({"scores": pred.image_scores, "maps": pred.anomaly_maps}, out + ".pt")
    print(threads, name, hashlib.sha256(Path(out + ".pyanom").read_bytes()).hexdigest()[:16])


def compare(work: Path, name: str) -> str:
    from pyanom.archive import load_archive

    a, b = (torch.load(work / f"{name}-{t}.pt") for t in (1, 2))
    ta, tb = (load_archive(work / f"{name}-{t}.pyanom")[1] for t in (1, 2))
    weights = max(((ta[k].double() - tb[k].double()).abs().max() / ta[k].double().abs().max().clamp_min(1e-30)).item()
                  for k in ta if ta[k].is_floating_point() and ta[k].numel())
    scores = ((a["scores"] - b["scores"]).abs() / a["scores"].abs()).max().item()
    maps = ((a["maps"] - b["maps"]).abs().max() / a["maps"].abs().max()).item()
    same = all(torch.equal(ta[k], tb[k]) for k in ta)
    return (f"{name}: tensors equal {same}; weights max rel diff {weights:.2e}; scores max rel {scores:.2e}; "
            f"maps max rel {maps:.2e}")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        fit_and_score(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    else:
        work = Path(tempfile.mkdtemp(prefix="pyanom-threads-"))
        for name in SETTINGS:
            for threads in (1, 2):
                subprocess.run([sys.executable, "-P", __file__, str(threads), name, str(work / f"{name}-{threads}")],
                               check=True)
            print(compare(work, name))
