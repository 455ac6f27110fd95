"""Past one machine, on Ray (optional extra ``pyanom[ray]``): a memory bank built from shards
on a cluster, a memory bank held by several actors, and batch scoring of large folders.

The unit of work is a shard of images (pyanom.memory.MemoryBankPlan): the same shards, in
the same order, as the bounded-memory fit on one machine, so a cluster fit equals the local
sharded fit. Images are read by path: on a multi-node cluster they must lie on storage that
every node mounts at the same path.
"""

from __future__ import annotations

from pyanom.distributed.cluster import connect, require_ray
from pyanom.distributed.fit import use_ray
from pyanom.distributed.knn import ShardedMemoryBank, load_sharded, shard_memory_bank

__all__ = ["connect", "require_ray", "ShardedMemoryBank", "load_sharded", "shard_memory_bank", "use_ray"]
