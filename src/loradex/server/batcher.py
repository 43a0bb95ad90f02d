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

from ..engine import GenerationRequest


class QueueFull(RuntimeError):
    """The queue is at its limit; retry after a moment."""


class Batcher:
    def __init__(self, engine, *, max_batch: int = 8, window_ms: float = 10.0, max_queue: int = 64):
        self.engine, self.max_batch, self.window = engine, max_batch, window_ms / 1000
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "rejected": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loradex-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, request: GenerationRequest) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((request, future))
        except queue.Full:
            self.stats["rejected"] += 1
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return future

    def close(self) -> None:
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
