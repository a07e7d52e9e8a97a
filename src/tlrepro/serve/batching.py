"""Request batching: images that arrive together share one model call.

Each model has an asyncio queue and one worker task. The worker takes the first waiting image, then waits at
most `max_wait_ms` for more (never more than `max_batch` in all; whatever is already queued is taken at once),
runs the model once on the stacked batch in a worker thread (the event loop keeps accepting requests
meanwhile) and resolves each request's future with its own row of the output. A failed model call fails
only the requests of that batch; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("tlrepro.serve")


def predict_batch(predictor: Any, images: np.ndarray) -> np.ndarray:
    """The model's raw outputs (N, units) for uint8 images (N, S, S, 3) already decoded and resized: the same
    compiled forward pass (and float32 input) `Predictor.predict_bytes` uses."""
    import tensorflow as tf

    return predictor.forward(tf.constant(np.asarray(images, dtype=np.float32)))


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "batches": self.batches, "largest_batch": self.largest}


@dataclass
class Batcher:
    """One model's queue and worker. `submit` is called from the event loop; the worker starts on first use
    (and again if the loop changed, as between test clients)."""

    predictor: Any
    max_batch: int = 16
    max_wait_ms: float = 5.0
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: asyncio.Queue | None = field(default=None, repr=False)
    _task: asyncio.Task | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def _ensure_worker(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._work(self._queue), name=f"batcher {self.predictor.name}")
        return self._queue

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """This image's row of the model output (shape (units,)), computed in a batch with its neighbours."""
        future = asyncio.get_running_loop().create_future()
        await self._ensure_worker().put((image, future))
        return await future

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_ms / 1000.0
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            batch = await self._collect(queue)
            live = [(image, future) for image, future in batch if not future.done()]  # skip cancelled requests
            if not live:
                continue
            try:
                outputs = await asyncio.to_thread(predict_batch, self.predictor, np.stack([i for i, _ in live]))
            except asyncio.CancelledError:
                for _, future in live:
                    future.cancel()
                raise
            except Exception as exc:  # one bad batch must not stop the worker
                log.exception("model call failed for a batch of %d", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.requests += len(live)
            self.stats.batches += 1
            self.stats.largest = max(self.stats.largest, len(live))
            for (_, future), row in zip(live, outputs, strict=True):
                if not future.done():
                    future.set_result(row)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        self._task = self._queue = self._loop = None
