"""`pyanom serve`: load every model (a failure stops start-up), then run uvicorn until stopped.

uvicorn stops on SIGINT/SIGTERM gracefully: it stops accepting connections, lets the requests
in flight finish (at most ``--shutdown-timeout`` seconds), then the app scores what is still
queued and stops its scoring threads. A stop by SIGTERM that drained this way exits 0 (a service
manager's normal stop); Ctrl-C exits 130 as every command does.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import signal
import socket
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
                   help="images admitted per model (being received, decoded or waiting to be scored) before "
                        "requests get 503 (default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=serving.max_bytes, help="largest image file (default %(default)s)")
    p.add_argument("--body-timeout", type=float, default=serving.body_timeout_s,
                   help="seconds a request's body may take to arrive before it gets 408 (default %(default)s)")
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

    models = {}
    for name, path in paths.items():
        models[name] = open_model(path, device=device, runtime=runtime, name=name)
        if isinstance(models[name], ExportedModel):
            how = f"exported {models[name].manifest['model_format']} model run by {models[name].backend}"
        else:
            how = "pyanom model"
        print(f"loaded {name}: {models[name].name} ({how}) from {path}, threshold {models[name].threshold:.4g}")
    return models


def open_model(path: Path, *, device: str = "cpu", runtime: str | None = None, name: str | None = None):
    """pyanom.load, with a refusal that says which model and what to do (the service does not start)."""
    from pyanom.export.runtime import is_exported
    from pyanom.registry import load

    what = f"model {name!r} ({path})" if name else str(path)
    try:
        return load(path, device=device, runtime=runtime)
    except (OSError, ValueError) as err:
        hint = "" if is_exported(path) else ("; give a .pyanom file written by `pyanom fit` or a folder written by "
                                             "`pyanom export`")
        raise (OSError if isinstance(err, OSError) else ValueError)(f"{what} cannot be served: {err}{hint}") from None


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
        from uvicorn.logging import DefaultFormatter

        from pyanom.serve.app import create_app
        from pyanom.serve.config import ServeSettings
    except ImportError as err:
        raise ImportError(f"`pyanom serve` needs the serve extra ({err}); "
                          "install it with: pip install 'pyanom[serve]'") from None
    paths = model_names(args.models)
    detectors = load_models(paths, device=args.device, runtime=args.runtime)
    api_key = args.api_key or os.environ.get("PYANOM_API_KEY") or None
    if api_key is None and not is_loopback(args.host):
        print(f"pyanom serve: warning: listening on {args.host} without an API key: anyone who can reach "
              "this port can use the service; set --api-key or PYANOM_API_KEY", file=sys.stderr)
    settings = ServeSettings(api_key=api_key, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue, max_bytes=args.max_bytes, body_timeout_s=args.body_timeout,
                             max_pixels=args.max_pixels or ServeSettings.max_pixels)
    app = create_app(detectors, settings, sources=paths,
                     open_model=functools.partial(open_model, device=args.device, runtime=args.runtime))
    log = logging.getLogger("pyanom.serve")  # request failures and reloads, beside uvicorn's own lines
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(args.log_level.upper())
    server = uvicorn.Server(uvicorn.Config(app, timeout_graceful_shutdown=args.shutdown_timeout,
                                           log_level=args.log_level))
    with _bound(args.host, args.port) as sock:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"listening on http://{host}:{sock.getsockname()[1]}/ (the operator page; the API's documentation at "
              "/docs); stop with Ctrl-C or SIGTERM", flush=True)
        previous = signal.signal(signal.SIGTERM, _drained)  # uvicorn drains, then raises SIGTERM again: here
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise RuntimeError("the service stopped during start-up (the log above says why): fix that and start it "
                           "again")
    return 0


def _drained(signum, frame) -> None:
    """SIGTERM once uvicorn has drained: the stop asked for is done, the exit is a clean one."""


def _bound(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (uvicorn listens on it), or a refusal that says what to do."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as err:
        sock.close()
        raise ValueError(f"--host {host} is not an address of this machine ({err.strerror}): give an IP address "
                         "such as 127.0.0.1, or 0.0.0.0 for every interface") from None
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}): another program (or another pyanom serve) "
                      "uses that port, or it is not an address of this machine; stop that program or choose another "
                      "--port or --host") from None
    return sock
