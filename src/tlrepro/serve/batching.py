"""Bounded work: the model batcher, and the lanes for decoding and for Grad-CAM.

Batcher: requests that arrive together share one model call. Each model has a bounded queue and one worker
task. The worker takes the first waiting image, then waits at most `max_wait_ms` for more (never more than
`max_batch` in all; whatever is already queued is taken at once), runs the model once on the stacked batch
in the model's own thread (the event loop keeps accepting requests meanwhile) and resolves each request's
future with its own row of the output. A failed model call fails only the requests of that batch.

Nothing waits unbounded: a request that finds `max_queue` others waiting, or whose deadline would pass before
its answer (the call under way, the batches queued ahead of it and its own, from the measured seconds of a
model call by batch size), is refused at once with a 503 and a Retry-After, before its image is decoded and
again on arrival; a request that gave up (its deadline passed) is dropped from its batch. The times are
steady-state ones: `warm_up` traces the batch sizes the worker will form (the compiled forward pass is
traced for a batch of 1, then once for any size) and measures them, before the model serves, and a call that
traced again is left out of the measurements.

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
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlrepro.serve.schemas import ApiError, busy

log = logging.getLogger("tlrepro.serve")
SMOOTHING = 0.4  # weight of the newest measurement in the running estimate of seconds per job
SAFETY = 1.25  # a request is taken when its estimated wait, this much longer, still ends before its deadline


def predict_batch(predictor: Any, images: np.ndarray) -> np.ndarray:
    """The model's raw outputs (N, units) for uint8 images (N, S, S, 3) already decoded and resized: the same
    compiled forward pass (and float32 input) `Predictor.predict_bytes` uses."""
    import tensorflow as tf

    return predictor.forward(tf.constant(np.asarray(images, dtype=np.float32)))


def _smoothed(previous: float | None, new: float) -> float:
    return new if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * new


class LoadStopped(Exception):
    """A model's load given up because the server is stopping."""


def traces(predictor: Any) -> int | None:
    """How many times the predictor's forward pass has been traced (None when it does not say)."""
    counter = getattr(getattr(predictor, "_compiled", None), "experimental_get_tracing_count", None)
    return counter() if callable(counter) else None


class BatchTimes:
    """Seconds of one model call by batch size: the sizes measured as the model warmed up (on an idle server)
    times one factor for how much slower (or faster) the calls are now. Every call served updates the factor:
    a slower call counts at once (the machine is busier: requests taken on the old figure would miss their
    deadlines), a faster one is smoothed in. Sizes between the measured ones are interpolated, sizes beyond
    the largest taken in proportion, sizes below the smallest as the smallest."""

    def __init__(self) -> None:
        self.by_size: dict[int, float] = {}  # as measured idle (or, for a size first seen serving, as first seen)
        self.factor = 1.0

    def calibrate(self, size: int, seconds: float) -> None:
        self.by_size[size] = seconds

    def record(self, size: int, seconds: float) -> None:
        expected = self._idle(size)
        if not expected:
            self.by_size[size] = seconds
            return
        ratio = seconds / expected
        self.factor = ratio if ratio > self.factor else _smoothed(self.factor, ratio)

    def _idle(self, size: int) -> float | None:
        if not self.by_size:
            return None
        if size in self.by_size:
            return self.by_size[size]
        below = max((s for s in self.by_size if s < size), default=None)
        above = min((s for s in self.by_size if s > size), default=None)
        if above is None:
            return self.by_size[below] * size / below
        if below is None:
            return self.by_size[above]
        share = (size - below) / (above - below)
        return (1 - share) * self.by_size[below] + share * self.by_size[above]

    def estimate(self, size: int) -> float | None:
        """Seconds of a call of `size` images now (None before any measurement)."""
        idle = self._idle(size) if size > 0 else 0.0
        return None if idle is None else idle * self.factor

    def as_dict(self) -> dict[str, float]:
        return {str(k): round(v * self.factor, 4) for k, v in sorted(self.by_size.items())}


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

    def _refusal(self) -> ApiError:
        self.refused += 1
        return busy(f"the server is busy {self.name}: {self.in_hand} request(s) in hand, the limit of "
                    f"{self.setting}", self.retry_after())

    def check_room(self) -> None:
        """A 503 when a job given now would be refused (callable from any thread, before costly work)."""
        if self.in_hand >= self.capacity:
            with self._lock:
                raise self._refusal()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            if self.in_hand >= self.capacity:
                raise self._refusal()
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
    deadline: float = float("inf")  # time.monotonic


@dataclass
class Batcher:
    """One model's bounded queue, its worker task and its model thread. `submit` is called from the event loop;
    the worker starts on first use (and again if the loop changed, as between test clients)."""

    predictor: Any
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 32
    deadline_s: float | None = None  # the requests' deadline: no call takes more images than it can answer in it
    stats: BatchStats = field(default_factory=BatchStats)
    times: BatchTimes = field(default_factory=BatchTimes)  # steady-state seconds of a model call by batch size
    running: int = 0  # images in the model call under way
    running_since: float = 0.0  # when it started (time.monotonic)
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

    def warm_up(self, size: int, stopping: threading.Event | None = None) -> None:
        """Trace the forward pass for the batch sizes the worker will form and measure them, in the calling
        thread (the model's loader), before the model serves: a batch of 1, of 2 (after which one trace serves
        any size) and of max_batch, each run twice, the second run timed. Stops (LoadStopped) between calls
        once `stopping` is set: the server is being stopped."""
        for n in sorted({1, min(2, self.max_batch), self.max_batch}):
            if stopping is not None and stopping.is_set():
                raise LoadStopped(self.predictor.name)
            batch = np.zeros((n, size, size, 3), np.uint8)
            predict_batch(self.predictor, batch)
            start = time.perf_counter()
            predict_batch(self.predictor, batch)
            self.times.calibrate(n, time.perf_counter() - start)

    def _call_seconds(self, size: int) -> float:
        return self.times.estimate(size) or 0.0

    def batch_limit(self) -> int:
        """The most images one call takes: max_batch, or fewer when a call that large would not end within the
        deadline (a slow model on a busy machine)."""
        size = self.max_batch
        while size > 1 and self.deadline_s is not None and SAFETY * self._call_seconds(size) > self.deadline_s:
            size -= 1
        return size

    def expected_wait(self, now: float | None = None) -> float:
        """Seconds until a request queued now would have its answer: what is left of the call under way, the
        batches queued ahead of it and its own batch (from the measured times; 0 before any). A call under way
        past its expected time says the model is slower now: the batches after it are counted that much slower."""
        now = time.monotonic() if now is None else now
        left, slower = 0.0, 1.0
        if self.running and (expected := self._call_seconds(self.running)) > 0:
            elapsed = now - self.running_since
            left, slower = max(0.0, expected - elapsed), max(1.0, elapsed / expected)
        size = self.batch_limit()
        full, rest = divmod(self.queued() + 1, size)
        return left + slower * (full * self._call_seconds(size) + self._call_seconds(rest)) + self.max_wait_ms / 1000.0

    def _full(self, waiting: int) -> ApiError:
        self.stats.refused += 1
        return busy(f"{waiting} requests are waiting for model `{self.predictor.name}`, the limit of "
                    f"serve.max_queue", self.expected_wait())

    def check_room(self, deadline: float | None = None) -> None:
        """A 503 when the queue is full, or (given the request's `deadline`, time.monotonic) when the work
        ahead of it and its own model call would end after it. Nothing ahead, a request is always taken: the
        model's own time is not a reason to wait, and its call keeps the measurements current. Callable from
        any thread: a decoding thread asks before decoding an image that would be refused anyway; the counts
        may still include requests that have just given up."""
        if (waiting := len(self._queue)) >= self.max_queue:
            raise self._full(waiting)
        if deadline is None or (not waiting and not self.running):
            return
        now = time.monotonic()
        if now + SAFETY * (wait := self.expected_wait(now)) > deadline:
            self.stats.refused += 1
            raise busy(f"model `{self.predictor.name}` would answer in about {wait:.1f} s, after this request's "
                       f"deadline (serve.deadline_s, {max(0.0, deadline - now):.1f} s left)", wait,
                       reader=f"The server is busy: this image would not be answered in time. Please try again "
                              f"in {max(1, math.ceil(wait))} s.")

    async def submit(self, image: np.ndarray, deadline: float) -> np.ndarray:
        """This image's row of the model output (shape (units,)), computed in a batch with its neighbours;
        a 503 at once when the queue is full or would keep the request past `deadline` (time.monotonic)."""
        self._ensure_worker()
        self.check_room(deadline)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(Waiting(image, future, deadline))
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
        deadline, limit = asyncio.get_running_loop().time() + self.max_wait_ms / 1000.0, self.batch_limit()
        while len(batch) < limit:
            item = await self._next(max(0.0, deadline - asyncio.get_running_loop().time()))
            if item is None:
                break
            batch.append(item)
        return batch

    def _overtaken(self, live: list[Waiting]) -> list[Waiting]:
        """The batch without the requests it would answer after their deadlines (the model turned out slower
        than when they were taken): those get their 503 now, and the call's time goes to the others. A batch none
        of which can make it still runs, so that the measurements stay current (nothing else would bring down an
        estimate that a passing slowdown raised). With nothing else waiting, its requests wait for it (the estimate
        may be what is wrong, as a request with nothing ahead is always taken); under load (others waiting), they
        get their 503 now rather than after their deadlines."""
        now = time.monotonic()
        while doomed := [w for w in live if w.deadline < now + self._call_seconds(len(live))]:
            everyone = len(doomed) == len(live)
            if everyone and not self._queue:
                break
            for w in doomed:
                self.stats.refused += 1
                w.future.set_exception(busy(f"model `{self.predictor.name}` has become slower and would answer "
                                            f"this request after its deadline (serve.deadline_s)",
                                            self.expected_wait(now)))
            if everyone:
                return live
            live = [w for w in live if not w.future.done()]
        return live

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = self._overtaken([w for w in await self._collect() if not w.future.done()])
            if not live:
                continue
            self.running, self.running_since = len(live), time.monotonic()
            traced, start = traces(self.predictor), time.perf_counter()
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
            if traces(self.predictor) == traced:  # a call that traced says nothing of the steady state
                self.times.record(len(live), time.perf_counter() - start)
            self.stats.record(len(live))
            for w, row in zip(live, outputs, strict=True):
                if not w.future.done():
                    w.future.set_result(row)
                elif w.future.cancelled():  # its request gave up waiting (a refused one has its 503 already)
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
