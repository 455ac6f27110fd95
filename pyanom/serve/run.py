"""`pyanom serve`: load every model (a failure stops start-up), then run uvicorn until stopped.

uvicorn stops on SIGINT/SIGTERM gracefully: it stops accepting connections, lets the requests
in flight finish (at most ``--shutdown-timeout`` seconds), then the app scores what is still
queued and stops its scoring threads.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path


def model_names(specs: list[str]) -> dict[str, Path]:
    """``PATH`` (named by its file stem) or ``NAME=PATH`` -> {name: path}; names must be unique."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"model name {name!r} (from {spec!r}): use letters, digits, '-', '_' or '.'; "
                             "name it with NAME=PATH")
        if name in out:
            raise ValueError(f"two models are named {name!r} ({out[name]} and {path}); name them with NAME=PATH")
        out[name] = Path(path)
    return out


def load_models(paths: dict[str, Path], *, device: str = "cpu", runtime: str | None = None) -> dict:
    """{name: fitted detector} from .pyanom files, or from folders written by `pyanom export`
    (run by onnxruntime or OpenVINO, `runtime`: see pyanom.export.load)."""
    from pyanom.export.runtime import is_exported, load

    models = {}
    for name, path in paths.items():
        if is_exported(path):
            models[name] = load(path, backend=runtime)
            how = f"exported {models[name].manifest['model_format']} model run by {models[name].backend}"
        else:
            import pyanom

            models[name] = pyanom.load(path, device=device)
            how = "pyanom model"
        print(f"loaded {name}: {models[name].name} ({how}) from {path}, threshold {models[name].threshold:.4g}")
    return models


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args) -> int:
    try:
        import uvicorn

        from pyanom.serve import ServeSettings
        from pyanom.serve.app import create_app
    except ImportError as err:
        raise ImportError(f"`pyanom serve` needs the serve extra ({err}); "
                          "install it with: pip install 'pyanom[serve]'") from None
    detectors = load_models(model_names(args.models), device=args.device, runtime=args.runtime)
    api_key = args.api_key or os.environ.get("PYANOM_API_KEY") or None
    if api_key is None and not is_loopback(args.host):
        print(f"pyanom serve: warning: listening on {args.host} without an API key: anyone who can reach "
              "this port can use the service; set --api-key or PYANOM_API_KEY", file=sys.stderr)
    settings = ServeSettings(api_key=api_key, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue, max_bytes=args.max_bytes,
                             max_pixels=args.max_pixels or ServeSettings.max_pixels)
    app = create_app(detectors, settings)
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.shutdown_timeout,
                log_level=args.log_level)
    return 0
