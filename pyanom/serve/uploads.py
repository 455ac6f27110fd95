"""Reading a predict request's images off the connection, within the size and time limits.

The whole body must arrive within ``body_timeout_s`` of the request's start: a client that sends
half a body and waits, or trickles it slower than that, gets 408 and its connection is closed, so
it holds neither a connection nor memory for long. A client that goes away mid-body is noted in
one log line (:class:`ClientGone`); nothing is scored for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from pyanom.serve.config import ServeSettings
from pyanom.serve.images import InputError

_UPLOAD_TYPES = ("image/", "application/octet-stream")


class ClientGone(Exception):
    """The client closed the connection before its request body was complete."""


@dataclass
class Upload:
    filename: str  # the file name sent, or "body" for a raw image body
    data: bytes
    raw: bool = False  # the request's body itself

    @property
    def called(self) -> str:
        """The upload as messages name it."""
        return "the uploaded image" if self.raw else self.filename


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_uploads(request: Request, settings: ServeSettings) -> list[Upload]:
    """Every image in the request (multipart files under any field names, or one raw image body)."""
    ctype = request.headers.get("content-type", "").lower()
    request_limit = settings.max_bytes * settings.max_images + 1024 * 1024  # multipart overhead
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > request_limit:
        raise InputError(413, f"the request is {length} bytes, over the limit of {request_limit} bytes: send "
                              f"fewer images per request (at most {settings.max_images}) or smaller files")
    multipart = ctype.startswith("multipart/form-data")
    if not multipart and not ctype.startswith(_UPLOAD_TYPES):
        raise InputError(415, f"content type {ctype or 'none'!r} is not an upload: send multipart/form-data files "
                              "or one image as the raw body with an image/* content type")
    if multipart and length is None:
        raise InputError(411, "a multipart upload needs a Content-Length header: send the files with their length")
    body = _Body(request, settings.max_bytes if not multipart else request_limit)
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            if multipart:
                return await _multipart(request, body, settings)
            return [Upload("body", await body.read(), raw=True)]
    except TimeoutError:
        raise InputError(408, f"the request body did not arrive within {settings.body_timeout_s:g} s (only "
                              f"{body.came(length)} came): check the connection and send it again") from None
    except ClientDisconnect:
        raise ClientGone(f"the client closed the connection after {body.came(length)} of its body; nothing was "
                         "scored") from None


class _Body:
    """The request body as it arrives, counted and bounded."""

    def __init__(self, request: Request, limit: int):
        self.request, self.limit, self.received = request, limit, 0

    async def chunks(self):
        async for chunk in self.request.stream():
            self.received += len(chunk)
            if self.received > self.limit:
                raise InputError(413, f"the request body is over the limit of {self.limit} bytes: send a smaller "
                                      "file, or start the service with a larger --max-bytes")
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def came(self, length: str | None) -> str:
        """How much of the body has arrived, in words."""
        return f"{self.received}{f' of {length}' if length else ''} bytes"


async def _multipart(request: Request, body: _Body, settings: ServeSettings) -> list[Upload]:
    parser = MultiPartParser(request.headers, body.chunks(), max_files=settings.max_images,
                             max_fields=settings.max_images)
    try:
        form = await parser.parse()
    except MultiPartException as err:  # the parser's own refusals (too many files, bad framing)
        raise InputError(400, f"the multipart body could not be read ({err.message}): send at most "
                              f"{settings.max_images} files as multipart/form-data") from None
    try:
        uploads = [Upload(value.filename or key, await value.read())
                   for key, value in form.multi_items() if isinstance(value, UploadFile)]
    finally:
        await form.close()
    if not uploads:
        raise InputError(400, "the multipart request holds no file: send the images as file fields")
    return uploads
