"""Micro-batching: images that arrive together are scored in one ``predict`` call.

The first image of a batch waits at most ``max_wait_ms`` for company, a batch holds at most
``max_batch`` images, and at most ``max_queue`` images wait at once: past that
:meth:`MicroBatcher.submit` refuses at once (:class:`QueueFull`) instead of letting the
queue, and every client's latency, grow without bound. Scoring runs on one worker thread
per model, off the event loop, so the service keeps answering while a batch is scored.

Images of requests already received but still being decoded (:meth:`MicroBatcher.expect`) are
waited for beyond ``max_wait_ms``, up to one batch's scoring time: under load, the clients
answered by one batch send their next images together, and without this the first of them
would leave as a batch of a few while the rest are decoded, halving the batches' size.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np


class QueueFull(RuntimeError):
    """The service is at capacity; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class MicroBatcher:
    """Collects single images into batches for ``score(batch [B,3,H,W]) -> list of B results``."""

    def __init__(self, score: Callable[[np.ndarray], list], *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 max_queue: int = 64, name: str = "model"):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1 and max_wait_ms >= 0, got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.score, self.name = score, name
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.batches = self.images = 0  # scored so far: images / batches is the mean batch size
        self._pending: collections.deque = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pyanom-score-{name}")
        self._seconds_per_image = 0.05  # refined by every batch; sets Retry-After and the wait for decodes
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
        """Run fn on the scoring thread (warm-up uses it, so it warms that thread's state)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def expect(self, count: int) -> None:
        """``count`` images are being decoded and will be submitted (a negative count: they were, or failed)."""
        self._expected += count
        if self._arrived is not None:
            self._arrived.set()  # a batch being formed re-reads how long to wait

    async def submit(self, images: Sequence[np.ndarray]) -> list:
        """Results for these images (in order), scored together with whatever else is waiting."""
        if len(self._pending) + len(images) > self.max_queue:
            wait = (len(self._pending) + len(images)) * self._seconds_per_image
            raise QueueFull(f"model {self.name!r} is busy: {len(self._pending)} images are waiting "
                            f"(at most {self.max_queue}); retry shortly", retry_after=max(1, round(wait)))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self._pending.extend(zip(images, futures))
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            first = loop.time()
            for_company = first + self.max_wait
            for_decodes = first + max(self.max_wait, self._seconds_per_image * self.max_batch)
            while len(self._pending) < self.max_batch and (
                    left := (for_decodes if self._expected > 0 else for_company) - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            batch = [(image, fut) for image, fut in batch if not fut.done()]  # client gone
            if not batch:
                continue
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            start = loop.time()
            try:
                results = await self.run_in_worker(self.score, np.stack([image for image, _ in batch]))
            except Exception as err:  # noqa: BLE001 - the error goes to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * (loop.time() - start) / len(batch)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
