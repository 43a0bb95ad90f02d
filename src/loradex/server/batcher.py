"""Concurrent requests into the engine's mixed-adapter batches, behind a bounded queue.

Callers submit a GenerationRequest and get a Future. One worker thread takes the first waiting request,
gathers more for up to `window_ms` (at most `max_batch`), and generates them as one batch: requests for
different adapters and for the bare base share the batch. When `max_queue` requests already wait, `submit`
raises QueueFull at once, so a server answers 429 instead of piling up work it cannot finish.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ..engine import GenerationRequest
from ..errors import QueueFull

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["Batcher", "QueueFull"]


class Batcher:
    """A worker thread generating queued requests in batches of up to `max_batch`, at most `max_queue` waiting."""

    def __init__(self, engine: Engine, *, max_batch: int = 8, window_ms: float = 10.0, max_queue: int = 64):
        self.engine, self.max_batch, self.window = engine, max_batch, window_ms / 1000
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "rejected": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loradex-batcher", daemon=True)
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

    def submit(self, request: GenerationRequest) -> Future:
        """Queue `request`; the Future gets its Generation (or the engine's error). Raises QueueFull at once
        when `max_queue` requests already wait."""
        future: Future = Future()
        try:
            self._queue.put_nowait((request, future))
        except queue.Full:
            self.stats["rejected"] += 1
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return future

    def close(self) -> None:
        """Stop the worker (requests still queued are not generated)."""
        self._stop.set()
        self._thread.join(timeout=5)

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
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                results = self.engine.generate([r for r, _ in batch])
            except Exception as e:  # every waiting caller gets the error, the worker goes on
                for _, f in batch:
                    f.set_exception(e)
                continue
            for (_, f), g in zip(batch, results):
                f.set_result(g)
