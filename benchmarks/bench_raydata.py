"""Why the Ray fit uses tasks, not Ray Data: the same shards' coreset picks computed by Ray tasks
(pyanom.distributed.fit, the backbone cached once per worker process) and by Ray Data
(map_batches over blocks of image paths, one block a shard, an actor pool loading the backbone
once per actor), on a fresh local cluster of 2 CPUs each, one after the other.

    PYANOM_DATA=../shared/data python3 -P benchmarks/bench_raydata.py [N_IMAGES] [SHARD_IMAGES]

Reports, per engine: seconds to the first result and to the last (cluster start excluded), the
summed RSS of the cluster's processes when idle and at the end, and a checksum of the final
memory bank (equal: both give the same bank). Needs pandas besides Ray (Ray Data imports it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("PYANOM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

ENGINE = r"""
import dataclasses, json, os, sys, time
import numpy as np, torch
import pyanom
from pyanom.data import open_dataset
from pyanom.distributed import connect
from pyanom.memory import MemoryBankPlan, merge_picks

engine, root, n, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = dict(image_size=128, coreset_ratio=0.01, coreset_mode="sharded", shard_images=shard)
paths = [str(s.image) for s in open_dataset(root, "train").normal().samples][:n]
det = pyanom.create("patchcore", **settings)
config_json = json.dumps(dataclasses.asdict(det.config), sort_keys=True)
plan = MemoryBankPlan(n_images=n, bytes_per_image=1, mode="sharded", budget_bytes=1, shard_images=shard)

def _started(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])  # clock ticks after boot

def cluster_rss_mb():
    # RSS of the Ray processes this script started (those younger than it)
    me, born, total = os.getpid(), _started("self"), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(pid) != me and _started(pid) >= born and b"ray" in open(f"/proc/{pid}/cmdline", "rb").read():
                total += next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total / 1024

ray = connect(None, num_cpus=2)
idle_mb = cluster_rss_mb()
start = time.perf_counter()
first = None
if engine == "tasks":
    from pyanom.distributed.fit import _shard_rows
    task = ray.remote(num_cpus=1, max_retries=3)(_shard_rows)
    pending = {task.remote("patchcore", config_json, paths[s.start:s.stop], "picks"): i for i, s in enumerate(plan.shards)}
    parts = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        parts[pending.pop(done[0])] = ray.get(done[0])
        first = first or time.perf_counter() - start
    picks = [torch.from_numpy(np.array(parts[i])) for i in range(len(plan.shards))]
else:
    import ray.data

    class Picks:
        def __init__(self):
            from pyanom.distributed.fit import _worker_detector
            self.det = _worker_detector("patchcore", config_json)
        def __call__(self, batch):
            from pyanom.distributed.fit import _shard_rows
            rows = _shard_rows("patchcore", config_json, list(batch["path"]), "picks")
            return {"shard": np.full(len(rows), batch["shard"][0]), "row": np.arange(len(rows)), "feature": rows}

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    items = [{"path": p, "shard": i} for i, s in enumerate(plan.shards) for p in paths[s.start:s.stop]]
    ds = ray.data.from_items(items, override_num_blocks=len(plan.shards)).map_batches(
        Picks, batch_size=shard, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
    got = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        first = first or time.perf_counter() - start
        for s, r, f in zip(batch["shard"], batch["row"], batch["feature"]):
            got.setdefault(int(s), {})[int(r)] = f
    picks = [torch.from_numpy(np.stack([got[i][r] for r in sorted(got[i])])) for i in range(len(plan.shards))]
seconds = time.perf_counter() - start
end_mb = cluster_rss_mb()
bank = merge_picks(picks, n * 256, 0.01, projection_dim=128, seed=0)
print(json.dumps({"engine": engine, "first_s": first, "all_s": seconds, "cluster_rss_idle_mb": idle_mb,
                  "cluster_rss_end_mb": end_mb, "bank_sha": float(bank.double().sum())}))
"""


def main(argv: list[str]) -> None:
    n, shard = (int(argv[0]) if argv else 48), (int(argv[1]) if len(argv) > 1 else 8)
    bottle = str(DATA / "mvtec" / "bottle")
    print("| engine | first shard s | all shards s | cluster RSS idle MB | cluster RSS at end MB | bank checksum |\n"
          "|---|---|---|---|---|---|")
    for engine in ("tasks", "raydata"):
        out = subprocess.run([sys.executable, "-P", "-c", ENGINE, engine, bottle, str(n), str(shard)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"| {engine} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {engine} | {r['first_s']:.1f} | {r['all_s']:.1f} | {r['cluster_rss_idle_mb']:.0f} | "
              f"{r['cluster_rss_end_mb']:.0f} | {r['bank_sha']:.6g} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
