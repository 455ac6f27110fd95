"""Spread over training seeds of the short schedules that the trained-detector tests use (their own
settings and subsets), to set the tests' accuracy floors just under it.

    PYANOM_DATA=../shared/data OMP_NUM_THREADS=1 python -P benchmarks/experiments/seed_spread.py 0 1 2 3 4 5
"""
import os
import sys
import time
sys.path.insert(0, "tests/plugins/reconstruction"); sys.path.insert(0, "tests/plugins/segdec")
from pathlib import Path
import pyanom
from pyanom import metrics
from pyanom.data import open_dataset
import test_reconstruction as R
import test_segdec as S
data = Path(os.environ.get("PYANOM_DATA", "../shared/data"))
bottle = data / "mvtec" / "bottle"
normal = open_dataset(bottle, "train", image_size=R.SIZE).normal()
train = normal.subset(range(0, len(normal), 8))
test = open_dataset(bottle, "test", image_size=R.SIZE)
labels = test.labels.tolist()
good = [i for i, y in enumerate(labels) if y == 0][:8]
defect = [i for i, y in enumerate(labels) if y == 1][::4]
test = test.subset(good + defect)
root = data / "magnetic_tile"
split = dict(image_size=S.SIZE, test_fraction=0.3, seed=0)
classes = ["MT_Free", "MT_Break"]
ttrain = S._every_nth(open_dataset(root, "train", **split).select(classes), 1, 6)
ttest = S._every_nth(open_dataset(root, "test", **split).select(classes), 1, 4)
for seed in [int(s) for s in sys.argv[1:]]:
    t = time.time()
    out = [f"seed {seed}"]
    for name, cfg in (("autoencoder", R.AE), ("fanogan", R.GAN)):
        det = pyanom.create(name, **cfg, seed=seed).fit(train, progress=False)
        out.append(f"{name} auroc {metrics.image_auroc(test.labels, det.predict(test).image_scores):.3f}")
    det = pyanom.create("segdec", **S.SHORT, seed=seed).fit(ttrain, progress=False)
    p = det.predict(ttest, map_size="model")
    out.append(f"segdec ap {metrics.average_precision(ttest.labels, p.image_scores):.3f} "
               f"pixel_auroc {metrics.pixel_auroc(ttest.masks(), p.anomaly_maps):.3f}")
    print(", ".join(out), f"({time.time()-t:.0f} s)", flush=True)
