"""The micro-batcher alone (no HTTP): admission, one model version per batch, a failed batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pyanom.serve.batcher import MicroBatcher, QueueFull


def _images(*values: float) -> list[np.ndarray]:
    return [np.full((3, 2, 2), v, np.float32) for v in values]


def _scorer(tag: str, calls: list):
    def score(batch: np.ndarray) -> list:
        calls.append((tag, len(batch)))
        if (batch == 0).all(axis=(1, 2, 3)).any():
            raise RuntimeError("zero image")
        return [(tag, float(image.mean())) for image in batch]
    return score


async def _submit(batcher: MicroBatcher, images, score):
    with batcher.admission(len(images)) as admission:
        return await batcher.submit(images, score, admission)


def test_admission_counts_images_until_queued_and_releases_what_was_not_submitted():
    async def run():
        batcher = MicroBatcher(max_batch=4, max_wait_ms=0, max_queue=3)
        with batcher.admission(2) as admission:
            assert batcher.admitted == 2
            with pytest.raises(QueueFull, match=r"2 images are waiting \(at most 3\); send this again"):
                batcher.admission(2).__enter__()
            admission.add(1)
            with pytest.raises(QueueFull):
                admission.add(1)
        assert batcher.admitted == 0  # nothing submitted: all released

    asyncio.run(run())


def test_a_batch_holds_one_model_version_and_a_failed_batch_is_rescored_alone():
    async def run():
        calls = []
        old, new = _scorer("old", calls), _scorer("new", calls)
        batcher = MicroBatcher(max_batch=8, max_wait_ms=50, max_queue=16)
        batcher.start()
        results = await asyncio.gather(_submit(batcher, _images(1, 2), old), _submit(batcher, _images(3), new),
                                       _submit(batcher, _images(4, 0, 5), new))
        await batcher.stop()
        return calls, results

    calls, (first, second, third) = asyncio.run(run())
    assert first == [("old", 1.0), ("old", 2.0)] and second == [("new", 3.0)]
    assert third[0] == ("new", 4.0) and third[2] == ("new", 5.0)
    assert isinstance(third[1], RuntimeError) and str(third[1]) == "zero image"
    # old images in a batch of their own; the new batch failed, then each of its images was scored alone
    assert calls == [("old", 2), ("new", 4), ("new", 1), ("new", 1), ("new", 1), ("new", 1)]
