"""Joining a Ray cluster (or starting a local one): what every part of pyanom.distributed needs."""

from __future__ import annotations

import os


def require_ray():
    """The ray module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("this needs Ray: pip install 'pyanom[ray]'") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None):
    """Join the cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a
    local one when address is None or "local"; a no-op when already connected."""
    local = address in (None, "local")
    if local:  # a single-machine cluster talks over loopback (read when ray is first imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    if not ray.is_initialized():
        if local:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    return ray
