"""Micro-batching: images that arrive together are scored in one ``predict`` call.

The first image of a batch waits at most ``max_wait_ms`` for company and a batch holds at most
``max_batch`` images. At most ``max_queue`` images are admitted at once, counted from the moment
their request arrives (before its body is read) until they are scored: past that
:meth:`MicroBatcher.admit` refuses at once (:class:`QueueFull`), so neither the queue, nor the
memory of bodies being received, nor every client's latency grows without bound. Scoring runs on
one worker thread per model, off the event loop, so the service keeps answering while a batch is
scored.

Every image is submitted with the scoring function of the model version that decoded it, and a
batch holds images of one version only: a model reloaded while images wait is swapped between
two batches, never inside one.

Images of requests already received but still being decoded (:meth:`MicroBatcher.expect`) are
waited for beyond ``max_wait_ms``, up to one batch's scoring time: under load, the clients
answered by one batch send their next images together, and without this the first of them
would leave as a batch of a few while the rest are decoded, halving the batches' size.

When a batch fails, each of its images is scored alone, so one image that makes the detector
raise fails its own request only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

Score = Callable[[np.ndarray], list]  # batch [B,3,H,W] -> B results


class QueueFull(RuntimeError):
    """The service is at capacity; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """The images of one request counted against the queue bound, from arrival until queued."""

    def __init__(self, batcher: "MicroBatcher"):
        self.batcher, self.count = batcher, 0

    def add(self, count: int) -> None:
        """Count ``count`` more images, or raise QueueFull when they do not fit."""
        b = self.batcher
        if b.queued + b.admitted + count > b.max_queue:
            wait = (b.queued + b.admitted + count) * b.seconds_per_image
            raise QueueFull(f"model {b.name!r} is busy: {b.queued + b.admitted} images are waiting (at most "
                            f"{b.max_queue}); send this again in a few seconds", retry_after=max(1, round(wait)))
        b.admitted += count
        self.count += count

    def release(self, count: int) -> None:
        self.batcher.admitted -= count
        self.count -= count


class MicroBatcher:
    """Collects single images into batches for a ``score(batch [B,3,H,W]) -> list of B results``."""

    def __init__(self, *, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64, name: str = "model"):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1 and max_wait_ms >= 0, got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.name = name
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.batches = self.images = 0  # scored so far: images / batches is the mean batch size
        self.admitted = 0  # images of requests being received or decoded (not yet queued)
        self.seconds_per_image = 0.05  # refined by every batch; sets Retry-After and the wait for decodes
        self._pending: collections.deque = collections.deque()  # (image, future, score)
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pyanom-score-{name}")
        self._expected = 0  # images received and being decoded: the next batch waits for them

    @property
    def queued(self) -> int:
        """Images waiting for a batch (not those being scored)."""
        return len(self._pending)

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Score what is still queued, then stop the worker thread."""
        while self._pending:
            await asyncio.sleep(self.max_wait or 0.001)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def run_in_worker(self, fn: Callable, *args):
        """Run fn on the scoring thread (warm-ups use it, so they warm that thread's state)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @contextlib.contextmanager
    def admission(self, count: int) -> Iterator[Admission]:
        """Admit ``count`` images (QueueFull when they do not fit); what is not submitted by the
        end of the block is released."""
        admission = Admission(self)
        admission.add(count)
        try:
            yield admission
        finally:
            self.admitted -= admission.count

    def expect(self, count: int) -> None:
        """``count`` images are being decoded and will be submitted (a negative count: they were, or failed)."""
        self._expected += count
        if self._arrived is not None:
            self._arrived.set()  # a batch being formed re-reads how long to wait

    async def submit(self, images: Sequence[np.ndarray], score: Score, admission: Admission) -> list:
        """Results (or the exceptions raised scoring them) for admitted images, in order, scored by
        ``score`` together with whatever else is waiting for the same ``score``."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        admission.release(len(images))
        self._pending.extend((image, future, score) for image, future in zip(images, futures))
        self._arrived.set()
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def _take_batch(self) -> list:
        score = self._pending[0][2]
        batch = []
        while self._pending and len(batch) < self.max_batch and self._pending[0][2] == score:
            batch.append(self._pending.popleft())
        return [item for item in batch if not item[1].done()]  # client gone

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            first = loop.time()
            for_company = first + self.max_wait
            for_decodes = first + max(self.max_wait, self.seconds_per_image * self.max_batch)
            while len(self._pending) < self.max_batch and (
                    left := (for_decodes if self._expected > 0 else for_company) - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if batch:
                await self._score(batch)

    async def _score(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        score = batch[0][2]
        self.batches, self.images = self.batches + 1, self.images + len(batch)
        start = loop.time()
        try:
            results = await self.run_in_worker(score, np.stack([image for image, _, _ in batch]))
        except Exception as err:  # noqa: BLE001 - the detector may fail in any way: find whose image it was
            if len(batch) == 1:
                _settle(batch[0][1], error=err)
                return
            for image, future, _ in batch:
                try:
                    (result,) = await self.run_in_worker(score, image[None])
                except Exception as alone:  # noqa: BLE001 - goes to this image's request only
                    _settle(future, error=alone)
                else:
                    _settle(future, result=result)
            return
        self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * (loop.time() - start) / len(batch)
        for (_, future, _), result in zip(batch, results):
            _settle(future, result=result)


def _settle(future: asyncio.Future, *, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
