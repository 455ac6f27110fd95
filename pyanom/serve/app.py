"""The FastAPI application: the versioned API, health probes and the operator page.

One :class:`ServedModel` per fitted detector, each with its own micro-batcher and scoring
thread. Nothing here is imported by the core: it needs the ``serve`` extra.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import secrets
from contextlib import asynccontextmanager
from importlib import resources
from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pyanom.data.transforms import Preprocess
from pyanom.export.runtime import ExportedModel
from pyanom.serve.batcher import MicroBatcher, QueueFull
from pyanom.serve.config import ServeSettings
from pyanom.serve.images import InputError, Limits, decode
from pyanom.visualize import heatmap_scale, overlay

__all__ = ["ServedModel", "create_app"]

_UPLOAD_TYPES = ("image/", "application/octet-stream")


class ServedModel:
    """A fitted detector (or an exported model, pyanom.export.ExportedModel, which answers the
    same calls, on numpy arrays: then PyTorch is not needed) with its input preprocessing and its
    micro-batcher."""

    def __init__(self, name: str, detector, settings: ServeSettings):
        self.name, self.detector = name, detector
        self.exported = isinstance(detector, ExportedModel)
        self.preprocess = Preprocess(detector.image_size)
        self.batcher = MicroBatcher(self.score, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                    max_queue=settings.max_queue, name=name)
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

    def info(self) -> dict:
        """What `GET /v1/models` reports for this model."""
        det, exported = self.detector, self.exported
        return {"name": self.name, "detector": det.name, "supervision": det.supervision,
                "hyper_parameters": det.config if exported else dataclasses.asdict(det.config),
                "threshold": det.threshold, "input_size": list(self.preprocess.image_size),
                "fitted_on": getattr(det, "fitted_on", None), "heatmap": self.has_heatmap,
                "scored": {"images": self.batcher.images, "batches": self.batcher.batches},
                "runtime": det.backend if exported else "pytorch"}

    def heatmap_png(self, image: np.ndarray, anomaly_map) -> str:
        """The anomaly map over the image as a base64 PNG; red from 1.5x the threshold up, so one
        colour means one score on every image of this model."""
        low, high = heatmap_scale(self.detector.threshold, float(anomaly_map.min()))
        buf = io.BytesIO()
        Image.fromarray(overlay(image, anomaly_map, vmin=low, vmax=high)).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _page() -> str:
    return resources.files("pyanom.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(detectors: dict, settings: Optional[ServeSettings] = None) -> FastAPI:
    """The service for ``{name: fitted detector}``; ready (``/readyz``) once every model is warmed up."""
    settings = settings or ServeSettings()
    if not detectors:
        raise ValueError("create_app needs at least one fitted detector")
    models = {name: ServedModel(name, det, settings) for name, det in detectors.items()}
    limits = Limits(max_bytes=settings.max_bytes, max_pixels=settings.max_pixels)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for model in models.values():
            model.batcher.start()
        for model in models.values():
            await model.batcher.run_in_worker(model.warm_up)
        app.state.ready = True
        yield
        app.state.ready = False  # uvicorn has let the in-flight requests finish by now
        for model in models.values():
            await model.batcher.stop()

    # the API pages (/docs, /redoc) load their scripts from this app, not a CDN: the line PC may be offline
    app = FastAPIOffline(title="pyanom", version="1", lifespan=lifespan, static_url="/docs-assets",
                         description="Visual inspection: score images with fitted pyanom detectors.")
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
            return _error(503, "warming up")
        return {"status": "ready", "models": list(models)}

    bearer = HTTPBearer(auto_error=False, description="the key given to `pyanom serve --api-key`, if any")

    async def require_key(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if settings.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.strip().encode(),
                                                             settings.api_key.encode()):
            raise InputError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.get("/models", summary="the models served, their hyper-parameters and thresholds")
    async def list_models():
        return [model.info() for model in models.values()]

    @v1.post("/models/{name}/predict", summary="score one or more images",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                 "image/png": {"schema": {"type": "string", "format": "binary"}},
                 "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict(name: str, request: Request, heatmap: Optional[str] = None):
        """Images as multipart files (any field names) or one image as the raw body with an image
        content type. Returns per image `image_score`, `label` ("defect" or "good"), `threshold`,
        and with `?heatmap=png` the anomaly map over the image as a base64 PNG (`heatmap_png`)."""
        model = models.get(name)
        if model is None:
            raise InputError(404, f"no model named {name!r}; served: {', '.join(models)}")
        if heatmap not in (None, "png"):
            raise InputError(400, f"heatmap must be 'png' or left out, got {heatmap!r}")
        if heatmap and not model.has_heatmap:
            raise InputError(400, f"model {name!r} ({model.detector.name}) makes no anomaly map")
        uploads = await _read_uploads(request, settings)
        model.batcher.expect(len(uploads))
        try:
            images = await run_in_threadpool(lambda: [decode(data, fname, model.preprocess, limits)
                                                      for fname, data in uploads])
        finally:
            model.batcher.expect(-len(uploads))
        results = await model.batcher.submit(images)  # queued before any other request runs: no await between
        threshold = float(model.detector.threshold)
        out = []
        for (fname, _), image, (score, defect, anomaly_map) in zip(uploads, images, results):
            item = {"filename": fname, "image_score": score, "label": "defect" if defect else "good",
                    "threshold": threshold}
            if heatmap:
                item["heatmap_png"] = await run_in_threadpool(model.heatmap_png, image, anomaly_map)
            out.append(item)
        return {"model": name, "results": out}

    app.include_router(v1)
    return app


async def _read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every image in the request, within the size limits."""
    ctype = request.headers.get("content-type", "").lower()
    request_limit = settings.max_bytes * settings.max_images + 1024 * 1024  # multipart overhead
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > request_limit:
        raise InputError(413, f"request of {length} bytes is over the limit of {request_limit} bytes")
    if ctype.startswith("multipart/form-data"):
        if length is None:
            raise InputError(411, "a multipart upload needs a Content-Length header")
        form = await request.form(max_files=settings.max_images, max_fields=settings.max_images)
        uploads = [(value.filename or key, await value.read())
                   for key, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise InputError(400, "the multipart request holds no file")
        return uploads
    if ctype.startswith(_UPLOAD_TYPES):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_bytes:
                raise InputError(413, f"body: over the limit of {settings.max_bytes} bytes")
        return [("body", bytes(body))]
    raise InputError(415, f"content type {ctype or 'none'!r}: send multipart/form-data files or one image "
                          "as the raw body with an image/* content type")


