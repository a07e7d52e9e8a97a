"""Bounded work: the model batcher, and the lanes for decoding and for Grad-CAM.

Batcher: requests that arrive together share one model call. Each model has a bounded queue and one worker
task. The worker takes the first waiting image, then waits at most `max_wait_ms` for more (never more than
`max_batch` in all; whatever is already queued is taken at once), runs the model once on the stacked batch
in the model's own thread (the event loop keeps accepting requests meanwhile) and resolves each request's
future with its own row of the output. A failed model call fails only the requests of that batch.

Nothing waits unbounded: a request that finds `max_queue` others waiting, or whose deadline the queue ahead
of it would pass (from the measured seconds per image), is refused at once with a 503 and a Retry-After; a
request that gave up (its deadline passed) is dropped from its batch.

Lane: a thread pool for one kind of work (decoding, Grad-CAM) that holds at most `workers + max_waiting`
jobs; more are refused at once (503). A job holds its place until its thread is done with it, so a client
that gives up does not free capacity the server is still spending. Predictions, decoding and explanations
each have their own threads: a slow explanation can never take the threads predictions need.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlrepro.serve.schemas import ApiError, busy

log = logging.getLogger("tlrepro.serve")
SMOOTHING = 0.3  # weight of the newest measurement in the running estimate of seconds per job


def predict_batch(predictor: Any, images: np.ndarray) -> np.ndarray:
    """The model's raw outputs (N, units) for uint8 images (N, S, S, 3) already decoded and resized: the same
    compiled forward pass (and float32 input) `Predictor.predict_bytes` uses."""
    import tensorflow as tf

    return predictor.forward(tf.constant(np.asarray(images, dtype=np.float32)))


def _smoothed(previous: float | None, new: float) -> float:
    return new if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * new


class Lane:
    """`workers` threads for one kind of work, refusing (503) a job beyond `workers + max_waiting` in hand."""

    def __init__(self, name: str, workers: int, max_waiting: int, setting: str) -> None:
        self.name, self.workers, self.capacity, self.setting = name, workers, workers + max_waiting, setting
        self._executor: ThreadPoolExecutor | None = None  # started on first use (again after close)
        self._lock = threading.Lock()
        self.in_hand = 0
        self.refused = 0
        self.seconds: float | None = None  # running estimate of one job's duration

    def retry_after(self) -> float:
        return (self.in_hand * (self.seconds or 1.0)) / self.workers

    def _timed(self, fn: Callable[..., Any], args: tuple) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds = _smoothed(self.seconds, time.perf_counter() - start)

    def _release(self, _: Any) -> None:
        with self._lock:
            self.in_hand -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self.in_hand >= self.capacity:
                self.refused += 1
                raise busy(f"the server is busy {self.name}: {self.in_hand} request(s) in hand, the limit of "
                           f"{self.setting}", self.retry_after())
            self.in_hand += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"tlrepro-{self.name}")
        try:
            job = self._executor.submit(self._timed, fn, args)
        except BaseException:
            self._release(None)
            raise
        job.add_done_callback(self._release)  # also when a job that never started is cancelled
        return await asyncio.wrap_future(job)

    def stats(self) -> dict[str, Any]:
        return {"in_hand": self.in_hand, "capacity": self.capacity, "refused": self.refused}

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest: int = 0
    refused: int = 0  # 503 at once: the queue was full, or would have passed the request's deadline
    dropped: int = 0  # requests that gave up (deadline) before their batch ran
    sizes: collections.Counter = field(default_factory=collections.Counter)  # model calls by batch size

    def record(self, size: int) -> None:
        self.requests += size
        self.batches += 1
        self.largest = max(self.largest, size)
        self.sizes[size] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "largest_batch": self.largest,
                "refused": self.refused, "dropped": self.dropped,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


@dataclass
class Waiting:
    image: np.ndarray
    future: asyncio.Future


@dataclass
class Batcher:
    """One model's bounded queue, its worker task and its model thread. `submit` is called from the event loop;
    the worker starts on first use (and again if the loop changed, as between test clients)."""

    predictor: Any
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 32
    stats: BatchStats = field(default_factory=BatchStats)
    seconds_per_image: float | None = None  # running estimate from the model calls so far
    running: int = 0  # images in the model call under way
    _queue: collections.deque = field(default_factory=collections.deque, repr=False)
    _wakeup: asyncio.Event | None = field(default=None, repr=False)
    _task: asyncio.Task | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _executor: ThreadPoolExecutor | None = field(default=None, repr=False)

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._wakeup = loop, asyncio.Event()
            self._queue.clear()
            if self._executor is None:  # the model's own thread: predictions never wait for other work's threads
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="tlrepro-model")
            self._task = loop.create_task(self._work(), name=f"batcher {self.predictor.name}")

    def queued(self) -> int:
        """Requests waiting for a model call (not counting ones that gave up)."""
        return sum(not w.future.done() for w in self._queue)

    def expected_wait(self) -> float:
        """Seconds a request queued now would wait for the work ahead of it, from the measured seconds per image
        (none when nothing is ahead: a request is never refused for the model's own time)."""
        return (self.queued() + self.running) * (self.seconds_per_image or 0.0)

    def _full(self, waiting: int) -> ApiError:
        self.stats.refused += 1
        return busy(f"{waiting} requests are waiting for model `{self.predictor.name}`, the limit of "
                    f"serve.max_queue", waiting * (self.seconds_per_image or 0.0))

    def check_room(self) -> None:
        """A 503 when the queue is full; callable from any thread (a decoding thread asks before decoding an
        image the queue has no room for). The count may still include requests that have just given up."""
        if (waiting := len(self._queue)) >= self.max_queue:
            raise self._full(waiting)

    async def submit(self, image: np.ndarray, deadline: float) -> np.ndarray:
        """This image's row of the model output (shape (units,)), computed in a batch with its neighbours;
        a 503 at once when the queue is full or would keep the request past `deadline` (loop time)."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        waiting, wait = self.queued(), self.expected_wait()
        if waiting >= self.max_queue:
            raise self._full(waiting)
        if self.seconds_per_image is not None and loop.time() + wait > deadline:
            self.stats.refused += 1
            raise busy(f"model `{self.predictor.name}` would answer in about {wait:.1f} s, after this request's "
                       f"deadline (serve.deadline_s)", wait)
        future = loop.create_future()
        self._queue.append(Waiting(image, future))
        self._wakeup.set()
        return await future

    async def _next(self, timeout: float | None) -> Waiting | None:
        """The next live waiting request, waiting at most `timeout` seconds for one (None: for ever)."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            while self._queue:
                item = self._queue.popleft()
                if not item.future.done():
                    return item
                self.stats.dropped += 1
            remaining = None if end is None else end - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return None

    async def _collect(self) -> list[Waiting]:
        batch = [await self._next(None)]
        deadline = asyncio.get_running_loop().time() + self.max_wait_ms / 1000.0
        while len(batch) < self.max_batch:
            item = await self._next(max(0.0, deadline - asyncio.get_running_loop().time()))
            if item is None:
                break
            batch.append(item)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = [w for w in await self._collect() if not w.future.done()]
            if not live:
                continue
            self.running = len(live)
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, predict_batch, self.predictor,
                                                     np.stack([w.image for w in live]))
            except asyncio.CancelledError:
                for w in live:
                    w.future.cancel()
                raise
            except Exception as exc:  # one bad batch must not stop the worker
                log.exception("model call failed for a batch of %d", len(live))
                for w in live:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            finally:
                self.running = 0
            self.seconds_per_image = _smoothed(self.seconds_per_image, (time.perf_counter() - start) / len(live))
            self.stats.record(len(live))
            for w, row in zip(live, outputs, strict=True):
                if not w.future.done():
                    w.future.set_result(row)
                else:
                    self.stats.dropped += 1

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        self._task = self._loop = self._wakeup = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
