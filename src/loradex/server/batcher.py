"""Concurrent requests into the engine's mixed-adapter batches, behind a bounded queue.

Callers submit a GenerationRequest and get a Future. One worker thread takes the first waiting request,
gathers more for up to `window_ms` (at most `max_batch`), and generates them as one batch: requests for
different adapters and for the bare base share the batch (the engine gives adapters that cannot be mixed
batches of their own). When a batch fails, its requests are generated again one by one, so only a request
that fails alone gets the error (on its Future, as a loradex error: an EngineError unless the engine raised
one of its own); the others get their answers. When `max_queue` requests
already wait, `submit` raises QueueFull at once, so a server answers 429 instead of piling up work it cannot
finish. A request whose Future is cancelled while it waits is dropped unread; one cancelled while it runs has
its `cancel` event (given to `submit`) set by its caller, and the engine ends that row at its next token.
An engine that batches by itself (`forwards = True`: vLLM) gets each request at once instead, up to `max_queue`
in flight, on a pool of threads: gathering them here would only add the window's wait.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..engine import GenerationRequest
from ..errors import EngineError, QueueFull

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["Batcher", "QueueFull"]


class Batcher:
    """A worker thread generating queued requests in batches of up to `max_batch`, at most `max_queue` waiting."""

    def __init__(self, engine: Engine, *, max_batch: int = 8, window_ms: float = 10.0, max_queue: int = 64):
        self.engine, self.max_batch, self.window = engine, max_batch, window_ms / 1000
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "rejected": 0, "retried_batches": 0,
                      "failed_requests": 0}
        self._stop = threading.Event()
        self.forwards = bool(getattr(engine, "forwards", False))
        self._pool = ThreadPoolExecutor(max_workers=max_queue, thread_name_prefix="loradex-forward") \
            if self.forwards else None
        self._in_flight = threading.BoundedSemaphore(max_queue)
        self._thread = threading.Thread(target=self._forward_loop if self.forwards else self._loop,
                                        name="loradex-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting now (not counting the batch being generated)."""
        return self._queue.qsize()

    @property
    def capacity(self) -> int:
        """The most requests that may wait (`max_queue`)."""
        return self._queue.maxsize

    @property
    def full(self) -> bool:
        """True when `submit` would raise QueueFull now."""
        return self._queue.full()

    def submit(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Future:
        """Queue `request`; the Future gets its Generation, or the error the engine raises for this request
        alone. Setting `cancel` ends the request's generation early (`Engine.generate`); cancelling the Future
        before the request is taken drops it. Raises QueueFull at once when `max_queue` requests already wait."""
        future: Future = Future()
        try:
            self._queue.put_nowait((request, future, cancel))
        except queue.Full:
            self.stats["rejected"] += 1
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return future

    def close(self) -> None:
        """Stop the worker (requests still queued are not generated)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [item for item in batch if item[1].set_running_or_notify_cancel()]  # callers gone: dropped
            if not batch:
                continue
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            self._run(batch)

    def _forward_loop(self) -> None:
        """Each request to the engine at once, at most `max_queue` in flight (then they wait in the queue)."""
        assert self._pool is not None
        while not self._stop.is_set():
            if not self._in_flight.acquire(timeout=0.1):
                continue
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._in_flight.release()
                continue
            if not item[1].set_running_or_notify_cancel():
                self._in_flight.release()
                continue
            self.stats["batches"] += 1
            self.stats["requests"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], 1)
            self._pool.submit(self._run, [item]).add_done_callback(lambda _: self._in_flight.release())

    def _run(self, batch: list[tuple[GenerationRequest, Future, threading.Event | None]]) -> None:
        """Generate `batch` and settle its Futures; when the batch fails, each request again alone, so one
        request's failure is its own (the worker goes on whatever happens)."""
        try:
            results = self.engine.generate([r for r, _, _ in batch], [c for _, _, c in batch])
        except Exception as e:  # noqa: BLE001 - settled on the Futures below, never lost
            if len(batch) == 1:
                self.stats["failed_requests"] += 1
                _settle(batch[0][1], error=EngineError.of(e))
                return
            self.stats["retried_batches"] += 1
            for item in batch:
                self._run([item])
            return
        for (_, f, _), g in zip(batch, results):
            _settle(f, result=g)


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give `future` its result or error, unless its caller has cancelled it already."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # settled already: nobody waits for it
        pass
