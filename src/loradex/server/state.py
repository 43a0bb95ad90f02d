"""What the route handlers share, built once by `create_app`: the project, the batcher, the metrics, the API
keys, the lock admin writes take and the count of open streams. It sits on `app.state.loradex`; handlers get
it through the `get_state` dependency."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from ..project import Project
    from .auth import Caller
    from .batcher import Batcher
    from .metrics import Metrics

__all__ = ["ServerState", "StreamSlot", "StreamSlots", "app_state", "get_state"]


class StreamSlot:
    """One stream's place: `cancel` ends its generation; `release` (idempotent) sets it and gives the place
    back, so every way a stream can end (its last event, an error, its client gone before or during it) may
    call it."""

    def __init__(self, slots: StreamSlots) -> None:
        self.cancel = threading.Event()
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        self.cancel.set()
        with _RELEASE:
            slots, self._slots = self._slots, None
        if slots is not None:
            slots.leave()


_RELEASE = threading.Lock()


class StreamSlots:
    """Streaming answers in progress. Streams bypass the batcher but share its limit: a stream is refused when
    open streams plus waiting requests reach the queue's capacity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    def enter(self, limit: int) -> StreamSlot | None:
        """Take a slot unless `limit` slots are taken; None when refused."""
        with self._lock:
            if self.active >= limit:
                return None
            self.active += 1
            return StreamSlot(self)

    def leave(self) -> None:
        """Give a slot back (called once per slot, by `StreamSlot.release`)."""
        with self._lock:
            self.active -= 1


@dataclass(frozen=True)
class ServerState:
    """Everything a route handler needs; one per app."""

    project: Project
    batcher: Batcher
    metrics: Metrics
    keys: dict[str, Caller]
    streams: StreamSlots
    admin_lock: threading.Lock = field(default_factory=threading.Lock)  # adapter, document and router writes


def get_state(request: Request) -> ServerState:
    """The app's ServerState."""
    state: ServerState = request.app.state.loradex
    return state


async def app_state(request: Request) -> ServerState:
    """FastAPI dependency: the app's ServerState. A coroutine, as FastAPI runs a plain function dependency on a
    worker thread of the pool that streams hold, and `/health` must answer however busy that pool is."""
    return get_state(request)
