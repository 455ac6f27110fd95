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


def add_serve_arguments(p, serving) -> None:
    """The options of `pyanom serve` (its defaults from ServeSettings ``serving``)."""
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model files or folders written by `pyanom export` (named by file stem), or NAME=PATH")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (or set PYANOM_API_KEY)")
    p.add_argument("--max-batch", type=int, default=serving.max_batch, help="images per predict call (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=serving.max_wait_ms,
                   help="how long a first image waits for others to batch with (default %(default)s ms)")
    p.add_argument("--max-queue", type=int, default=serving.max_queue,
                   help="images waiting per model before requests get 503 (default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=serving.max_bytes, help="largest image file (default %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM/Ctrl-C (default 30)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")


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
    """{name: fitted model} from .pyanom files or folders written by `pyanom export` (run by
    onnxruntime or OpenVINO, `runtime`), each opened by pyanom.load."""
    from pyanom.export.runtime import ExportedModel
    from pyanom.registry import load

    models = {}
    for name, path in paths.items():
        models[name] = load(path, device=device, runtime=runtime)
        if isinstance(models[name], ExportedModel):
            how = f"exported {models[name].manifest['model_format']} model run by {models[name].backend}"
        else:
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

        from pyanom.serve.config import ServeSettings
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
