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

__all__ = ["ServerState", "StreamSlots", "get_state"]


class StreamSlots:
    """Streaming answers in progress. Streams bypass the batcher but share its limit: a stream is refused when
    open streams plus waiting requests reach the queue's capacity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0

    def enter(self, limit: int) -> bool:
        """Take a slot unless `limit` slots are taken; False when refused."""
        with self._lock:
            if self.active >= limit:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        """Give a slot back (the stream ended or its client went away)."""
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
    """FastAPI dependency: the app's ServerState."""
    state: ServerState = request.app.state.loradex
    return state
