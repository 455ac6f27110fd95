"""The FastAPI application: the versioned API, health probes and the operator page.

One :class:`ServedModel` per fitted detector, each with its own micro-batcher and scoring
thread; uploads are decoded and heatmaps drawn on a pool of as many threads as the machine has
cores (more would not run faster, and every thread keeps its own high-water mark of memory). A model is read into memory once; replacing its file on disk changes nothing until
``POST /v1/models/{name}/reload``, which loads and warms up the new file beside the old model and
then swaps them between two batches: every request is answered wholly by one of them, and a file
that fails to load leaves the old model serving. Nothing here is imported by the core: it needs
the ``serve`` extra.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from pyanom.data.transforms import Preprocess
from pyanom.export.runtime import ExportedModel
from pyanom.serve.batcher import MicroBatcher, QueueFull
from pyanom.serve.config import ServeSettings
from pyanom.serve.images import InputError, Limits, decode, heatmap_png
from pyanom.serve.uploads import ClientGone, Upload, is_multipart, read_uploads
from pyanom.settings import describe

__all__ = ["ServedModel", "create_app"]

log = logging.getLogger("pyanom.serve")
_CLOSE = {408, 413}  # answered before the body was read to its end: close the connection rather than drain it


class ModelVersion:
    """One loaded model (a Detector, or a pyanom.export.ExportedModel, which answers the same
    calls on numpy arrays: then PyTorch is not needed) with its input preprocessing."""

    def __init__(self, detector, stamp=None):
        self.detector, self.stamp, self.loaded_at = detector, stamp, time.time()
        self.exported = isinstance(detector, ExportedModel)
        self.preprocess = Preprocess(detector.image_size)
        self.has_heatmap: Optional[bool] = None  # known after warm-up

    def score(self, images: np.ndarray) -> list[tuple[float, bool, Optional[np.ndarray]]]:
        """One predict call for a batch [B, 3, H, W]; runs on the scoring thread."""
        if not self.exported:
            import torch

            images = torch.from_numpy(images)
        pred = self.detector.predict(images, batch_size=len(images))
        maps = pred.anomaly_maps if pred.anomaly_maps is not None else [None] * len(images)
        return list(zip(pred.image_scores.tolist(), pred.labels.tolist(), maps))

    def warm_up(self) -> None:
        """Score one grey image so the first real request pays no first-call costs."""
        h, w = self.preprocess.image_size
        self.has_heatmap = self.score(np.full((1, 3, h, w), 0.5, np.float32))[0][2] is not None


def file_stamp(path: Optional[Path]):
    """What tells a model file (or an exported folder's files) from its replacement."""
    if path is None:
        return None
    path = Path(path)
    try:
        stats = [(f.name, f.stat()) for f in (sorted(path.iterdir()) if path.is_dir() else [path])]
    except OSError:
        return None
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)


class ServedModel:
    """A served model under one name: the version now serving, its micro-batcher, and the file it
    came from (``source``), which a reload reads again."""

    def __init__(self, name: str, detector, settings: ServeSettings, source: Optional[Path] = None):
        self.name, self.source = name, source
        self.current = ModelVersion(detector, file_stamp(source))
        self.batcher = MicroBatcher(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    max_queue=settings.max_queue, name=name)
        self.reloads = 0
        self._reloading = False

    @property
    def detector(self):
        return self.current.detector

    async def reload(self, open_model: Callable) -> None:
        """Load ``source`` again, warm it up, then serve it (see the module's docstring)."""
        if self.source is None:
            raise InputError(409, f"model {self.name!r} was given to the service in memory, not as a file: there is "
                                  "nothing to reload; restart the service with the new model")
        if self._reloading:
            raise InputError(409, f"model {self.name!r} is being reloaded already: wait for that reload to answer")
        self._reloading = True
        try:
            stamp = file_stamp(self.source)
            version = ModelVersion(await run_in_threadpool(open_model, self.source), stamp)
            await self.batcher.run_in_worker(version.warm_up)
        except Exception as err:  # noqa: BLE001 - any failure leaves the old model serving
            raise InputError(422, f"{self.source} could not be loaded ({type(err).__name__}: {err}); model "
                                  f"{self.name!r} keeps serving the model loaded before: fix or replace the file and "
                                  "ask for the reload again") from None
        finally:
            self._reloading = False
        self.current = version
        self.reloads += 1
        log.info("reloaded %s: %s from %s, threshold %.4g", self.name, version.detector.name, self.source,
                 version.detector.threshold)

    def info(self) -> dict:
        """What `GET /v1/models` reports for this model; `settings` as `pyanom info --json` gives them."""
        version = self.current
        det, exported = version.detector, version.exported
        return {"name": self.name, "detector": det.name, "supervision": det.supervision,
                "hyper_parameters": det.config if exported else dataclasses.asdict(det.config),
                "settings": None if exported else describe(type(det.config)),
                "threshold": det.threshold, "input_size": list(version.preprocess.image_size),
                "fitted_on": getattr(det, "fitted_on", None), "heatmap": version.has_heatmap,
                "scored": {"images": self.batcher.images, "batches": self.batcher.batches},
                "queue": {"waiting": self.batcher.queued + self.batcher.admitted, "max": self.batcher.max_queue},
                "runtime": det.backend if exported else "pytorch",
                "source": None if self.source is None else str(self.source), "reloads": self.reloads,
                "file_changed": self.source is not None and file_stamp(self.source) != version.stamp}


class RequestIds:
    """Gives every request an id (the ``X-Request-ID`` header of its response) and turns an
    exception nothing else handled into a 500 that names the id, logged once with its traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = secrets.token_hex(6)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as err:  # noqa: BLE001 - logged here, once, and answered as a 500
            log.error("request %s (%s %s) failed: %s: %s", request_id, scope["method"], scope["path"],
                      type(err).__name__, err, exc_info=err)
            if not started:
                await _failed(request_id, f"the service failed on this request ({type(err).__name__}: {err})")(
                    scope, receive, send_with_id)


def _failed(request_id: str, what: str) -> JSONResponse:
    return JSONResponse({"error": f"{what}; it is logged as request {request_id}: send the request again, and "
                                  "report the request id if it keeps failing", "request_id": request_id},
                        status_code=500)


def _error(status: int, message: str, headers: Optional[dict] = None, **extra) -> JSONResponse:
    if status in _CLOSE:
        headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _page() -> str:
    return resources.files("pyanom.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(detectors: dict, settings: Optional[ServeSettings] = None, *, sources: Optional[dict] = None,
               open_model: Optional[Callable] = None) -> FastAPI:
    """The service for ``{name: fitted detector}``; ready (``/readyz``) once every model is warmed
    up. ``sources`` ({name: path}) are the files the models were loaded from, read again on a
    reload by ``open_model(path)`` (default: pyanom.load)."""
    settings = settings or ServeSettings()
    if not detectors:
        raise ValueError("create_app needs at least one fitted detector")
    if open_model is None:
        from pyanom.registry import load as open_model
    sources = sources or {}
    models = {name: ServedModel(name, det, settings, sources.get(name)) for name, det in detectors.items()}
    limits = Limits(max_bytes=settings.max_bytes, max_pixels=settings.max_pixels)

    async def on_pictures(fn, *args):
        """fn(*args) on the decode and heatmap threads."""
        return await asyncio.get_running_loop().run_in_executor(app.state.pictures, fn, *args)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pictures = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="pyanom-pictures")
        for model in models.values():
            model.batcher.start()
        for model in models.values():
            await model.batcher.run_in_worker(model.current.warm_up)
        app.state.ready = True
        yield
        app.state.ready = False  # uvicorn has let the in-flight requests finish by now
        for model in models.values():
            await model.batcher.stop()
        app.state.pictures.shutdown(wait=True)

    # the API pages (/docs, /redoc) load their scripts from this app, not a CDN: the line PC may be offline
    app = FastAPIOffline(title="pyanom", version="1", lifespan=lifespan, static_url="/docs-assets",
                         description="Visual inspection: score images with fitted pyanom detectors.")
    app.add_middleware(RequestIds)
    app.state.ready = False
    app.state.models = models

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, err: InputError):
        return _error(err.status, str(err))

    @app.exception_handler(QueueFull)
    async def _busy(request: Request, err: QueueFull):
        return _error(503, str(err), headers={"Retry-After": str(err.retry_after)})

    page = _page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def operator_page():
        return page

    @app.get("/healthz", summary="the process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="every model is loaded and warmed up")
    async def readyz(request: Request):
        if not request.app.state.ready:
            return _error(503, "warming up: the models are being loaded; ask again in a few seconds")
        return {"status": "ready", "models": list(models)}

    bearer = HTTPBearer(auto_error=False, description="the key given to `pyanom serve --api-key`, if any")

    async def require_key(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if settings.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.strip().encode(),
                                                             settings.api_key.encode()):
            raise InputError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                  "service was started with")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    def served(name: str) -> ServedModel:
        if name not in models:
            raise InputError(404, f"no model named {name!r}: use one of {', '.join(models)} (GET /v1/models lists "
                                  "them)")
        return models[name]

    @v1.get("/models", summary="the models served, their hyper-parameters and thresholds")
    async def list_models():
        return [model.info() for model in models.values()]

    @v1.post("/models/{name}/reload", summary="load the model's file again and serve it")
    async def reload(name: str):
        """Reads the model's file (or exported folder) again, warms it up, then serves it: requests
        in flight finish on the old model, later ones get the new one. If the file cannot be loaded
        the old model keeps serving (422, saying why). Returns the model as /v1/models lists it."""
        model = served(name)
        await model.reload(open_model)
        return model.info()

    @v1.post("/models/{name}/predict", summary="score one or more images",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                 "image/png": {"schema": {"type": "string", "format": "binary"}},
                 "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict(name: str, request: Request, heatmap: Optional[str] = None,
                      heatmap_size: Optional[int] = Query(None, description="with heatmap=png: the heatmap's "
                                                          "longest side in pixels (default: the image's own size)")):
        """Images as multipart files (any field names) or one image as the raw body with an image
        content type. Returns per image `filename`, `image_score`, `label` ("defect" or "good"),
        `threshold`, and with `?heatmap=png` the anomaly map over the image as a base64 PNG
        (`heatmap_png`) at the image's own size (or `heatmap_size` pixels on its longest side).
        In a multipart request a file that cannot be scored gets `error` and `status` (and
        `image_score` and `label` null) while the others are scored; the request fails only when
        none can be."""
        model = served(name)
        if heatmap not in (None, "png"):
            raise InputError(400, f"heatmap must be 'png' or left out, got {heatmap!r}: ask for ?heatmap=png")
        if heatmap_size is not None and heatmap_size < 1:
            raise InputError(400, f"heatmap_size must be a number of pixels >= 1, got {heatmap_size}: ask for e.g. "
                                  "?heatmap=png&heatmap_size=512, or leave it out for the image's own size")
        version = model.current  # this request is answered by this version alone, even across a reload
        if heatmap and not version.has_heatmap:
            raise InputError(400, f"model {name!r} ({version.detector.name}) makes no anomaly map: leave out "
                                  "?heatmap=png")
        request_id = request.scope["state"]["request_id"]
        with model.batcher.admission(1) as admission:
            try:
                uploads = await read_uploads(request, settings)
            except ClientGone as gone:
                log.info("request %s: %s", request_id, gone)
                return Response(status_code=400)  # nobody is there to read it
            admission.add(len(uploads) - 1)
            model.batcher.expect(len(uploads))
            try:
                decoded = await on_pictures(_decode_all, uploads, version, limits, bool(heatmap))
            finally:
                model.batcher.expect(-len(uploads))
            good = [i for i, d in enumerate(decoded) if not isinstance(d, InputError)]
            results = dict(zip(good, await model.batcher.submit([decoded[i][0] for i in good], version.score,
                                                                admission)))
        threshold = float(version.detector.threshold)
        out = [_answer(upload, results.get(i, decoded[i]), threshold, request_id) for i, upload in enumerate(uploads)]
        if heatmap:
            for i, item in enumerate(out):
                if item["image_score"] is not None:
                    item["heatmap_png"] = await on_pictures(heatmap_png, decoded[i][1], results[i][2], threshold,
                                                            heatmap_size)
        failed = [item for item in out if "error" in item]
        if len(failed) < len(out):
            return {"model": name, "results": out}
        first = failed[0]
        extra = {"request_id": request_id} if first["status"] == 500 else {}
        if not is_multipart(request):
            return _error(first["status"], first["error"], **extra)
        message = first["error"] if len(out) == 1 else (f"none of the {len(out)} files could be scored (each result "
                                                        "says why): fix or replace them and send them again")
        return _error(first["status"], message, model=name, results=out, **extra)

    app.include_router(v1)
    return app


def _answer(upload: Upload, outcome, threshold: float, request_id: str) -> dict:
    """One upload's result: its score and label, or why it has none (a refusal, or what the
    detector raised: logged here, once, with the request id)."""
    item = {"filename": upload.filename, "image_score": None, "label": None, "threshold": threshold}
    if isinstance(outcome, InputError):
        item.update(error=str(outcome), status=outcome.status)
    elif isinstance(outcome, BaseException):
        log.error("request %s: the detector failed on %s: %s: %s", request_id, upload.called,
                  type(outcome).__name__, outcome, exc_info=outcome)
        item.update(error=f"the detector failed on {upload.called} ({type(outcome).__name__}: {outcome}); it is "
                          f"logged as request {request_id}: check that the image shows what this model inspects, "
                          "and report the request id if it keeps failing", status=500, request_id=request_id)
    else:
        score, defect, _ = outcome
        item.update(image_score=score, label="defect" if defect else "good")
    return item


def _decode_all(uploads: list[Upload], version: ModelVersion, limits: Limits, keep_picture: bool) -> list:
    """Each upload decoded for ``version``, or the InputError that says why it cannot be."""
    decoded = []
    for upload in uploads:
        try:
            decoded.append(decode(upload.data, upload.called, version.preprocess, limits, keep_picture=keep_picture))
        except InputError as err:
            decoded.append(err)
    return decoded
