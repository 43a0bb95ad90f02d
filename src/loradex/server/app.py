"""`loradex serve`: an OpenAI-compatible API, adapter administration and a chat page, on one project.

This module only wires the app together; each part owns its routes and rules:

- `loradex.server.openai`: `POST /v1/chat/completions` and `GET /v1/models`.
- `loradex.server.request`: the chat completions body, each OpenAI field honoured or refused with a 400.
- `loradex.server.admin`: `/admin/...` (admin key only): adapters list/import/activate/rollback, documents
  ingest/remove, router fit.
- `loradex.server.auth`: API keys (`Authorization: Bearer KEY`) and access groups.
- `loradex.server.errors`: every error as an OpenAI-style body (unknown paths, wrong methods, bad fields and
  unhandled exceptions too), and the loradex-error-to-status table.
- `loradex.server.metrics`: `GET /metrics` (Prometheus text).
- `loradex.server.batcher`: the mixed-adapter batches behind a bounded queue (429 when full).
- Here: `GET /health`, `GET /` (the chat page), and `create_app` / `serve`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import HTMLResponse, Response

from . import admin, openai
from .auth import load_keys
from .batcher import Batcher
from .errors import install_handlers
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .state import ServerState, StreamSlots, app_state

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["create_app", "serve"]

STATIC = Path(__file__).parent / "static"
service = APIRouter(tags=["service"])
State = Annotated[ServerState, Depends(app_state)]


# /health and /metrics are coroutines: they run on the event loop, never waiting for a worker thread of the pool
# that streams and other synchronous handlers hold (so a probe answers however busy generation is).
@service.get("/health")
async def health(state: State) -> dict[str, Any]:
    """Liveness with the number of indexed documents, the loaded adapters, the queue depth and the router's
    state: `router` is None without domain examples, else `{"domains", "examples", "calibrated", "reason"}`
    (`calibrated` False when a domain has fewer than 3 examples; `reason` says which and what to do)."""
    engine = state.project.engine
    router = state.project.router
    routing = None if router is None else {
        "domains": len(router.domains), "examples": router.meta.get("examples"), "calibrated": router.calibrated,
        "reason": router.uncalibrated_reason}
    return {"status": "ok", "documents": len(state.project.load_manifest()["documents"]),
            "adapters_loaded": engine.loaded_adapters(), "queue_depth": state.batcher.depth, "router": routing}


@service.get("/metrics")
async def prometheus(state: State) -> Response:
    """The Prometheus text exposition (no key needed)."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@service.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    """The chat page."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


def create_app(project: Project, *, max_batch: int | None = None, window_ms: float | None = None,
               max_queue: int | None = None) -> FastAPI:
    """The ASGI app serving `project`. Loads the keys (ConfigError for a missing `key_env`), then the embedder,
    store, router and engine, before the first request. `max_batch`, `window_ms` and `max_queue` override the
    config's `server` settings."""
    cfg = project.config.server
    keys = load_keys(project.config)
    project.load()
    batcher = Batcher(project.engine, max_batch=max_batch or cfg.max_batch,
                      window_ms=cfg.batch_window_ms if window_ms is None else window_ms,
                      max_queue=max_queue or cfg.max_queue)
    streams = StreamSlots()
    metrics = Metrics(batcher, project.engine, streams)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="loradex", version="0.1.0", lifespan=lifespan)
    app.state.loradex = ServerState(project, batcher, metrics, keys, streams)
    install_handlers(app, metrics)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(service)
    return app


def serve(project: Project, host: str, port: int) -> None:  # pragma: no cover - run by the CLI and the benchmark
    """Serve `project` on host:port with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(project), host=host, port=port, log_level="warning", access_log=False)
