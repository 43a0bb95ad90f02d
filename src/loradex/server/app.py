"""`loradex serve`: an OpenAI-compatible API, adapter administration and a chat page, on one project.

- `POST /v1/chat/completions`: `model` is `auto` (the router picks), `base` (no router, no adapter), a domain
  name (its active adapter) or `domain@version` (that adapter version). The last user message is the
  question. `stream: true` sends server-sent events ending in `data: [DONE]`. Answers carry the usual
  fields plus `citations`, `sources`, `route` and `adapter`. A `loradex` object in the body tunes one
  request: `{"retrieval": false}` (adapter only), `{"k": 6}`.
- `GET /v1/models`; `GET /health`; `GET /metrics` (Prometheus text); `GET /` the chat page.
- `/admin/...` (admin key only): adapters list/import/activate/rollback, documents ingest/remove, router fit.
- Keys: `Authorization: Bearer KEY`. A key's access groups filter retrieval: a caller only ever receives
  passages from documents without groups or sharing one of its groups; the admin key sees everything.
  With no key configured the server is open and callers see documents without groups only.
- Non-streaming generations go through the Batcher (mixed-adapter batches, bounded queue, 429 when full).
  Every error is an OpenAI-style body (`{"error": {"message", "type", "param", "code"}}`) with a 4xx status.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..adapters.registry import AdapterError
from ..engine import GenerationRequest
from ..pipeline import Answer, finish, prepare
from ..types import Filters
from .batcher import Batcher, QueueFull

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Caller:
    name: str
    groups: tuple[str, ...] | None  # None: sees every document (admin)
    admin: bool = False


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.headers = status, message, type_, code, param, headers


def load_keys(config) -> dict[str, Caller]:
    """API keys from loradex.yaml (`server.keys`, the key itself or the environment variable holding it)
    and from LORADEX_API_KEY / LORADEX_ADMIN_KEY. Keys are compared, never logged."""
    keys: dict[str, Caller] = {}
    for k in config.server.keys:
        secret = k.key or (os.environ.get(k.key_env) if k.key_env else None)
        if not secret:
            raise ValueError(f"server.keys.{k.name}: no key (set `key`, or `key_env` to a variable that is set)")
        keys[secret] = Caller(k.name, None if k.admin else tuple(k.groups), k.admin)
    if os.environ.get("LORADEX_API_KEY"):
        keys[os.environ["LORADEX_API_KEY"]] = Caller("env", ())
    if os.environ.get("LORADEX_ADMIN_KEY"):
        keys[os.environ["LORADEX_ADMIN_KEY"]] = Caller("admin", None, True)
    return keys


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = {}
        self.latency: list[float] = []

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self.lock:
            key = (name, tuple(sorted(labels.items())))
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, seconds: float) -> None:
        with self.lock:
            self.latency.append(seconds)
            del self.latency[:-10000]

    def render(self, gauges: dict[str, float]) -> str:
        lines = []
        with self.lock:
            for (name, labels), v in sorted(self.counters.items()):
                lab = ",".join(f'{k}="{val}"' for k, val in labels)
                lines.append(f"loradex_{name}{{{lab}}} {v:g}" if lab else f"loradex_{name} {v:g}")
            lat = sorted(self.latency)
        if lat:
            for q in (0.5, 0.9, 0.99):
                lines.append(f'loradex_request_seconds{{quantile="{q}"}} {lat[min(len(lat) - 1, int(q * len(lat)))]:.4f}')
            lines.append(f"loradex_request_seconds_count {len(lat)}")
            lines.append(f"loradex_request_seconds_sum {sum(lat):.4f}")
        for name, v in gauges.items():
            lines.append(f"loradex_{name} {v:g}")
        return "\n".join(lines) + "\n"


def _question(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if isinstance(content, str) and content.strip():
                return content.strip()
            break
    raise ApiError(400, "messages must end with a user message that has text", param="messages")


def _model_target(project, model: str) -> dict:
    if model == "auto":
        return {"route": True}
    if model == "base":
        return {"route": False, "use_adapter": False}
    name, _, version = model.partition("@")
    domains = set(project.config.domains) | {r["domain"] for r in project.registry.list()}
    if name not in domains:
        raise ApiError(404, f"unknown model {model!r}; GET /v1/models lists them", code="model_not_found", param="model")
    if version:
        try:
            project.registry.resolve(name, version.split("sha256:")[-1])
        except AdapterError as e:
            raise ApiError(404, str(e), code="model_not_found", param="model") from None
    return {"domain": name, "version": version or None}


def create_app(project, *, max_batch: int | None = None, window_ms: float | None = None,
               max_queue: int | None = None):
    cfg = project.config.server
    keys = load_keys(project.config)
    # load everything once, before the first request (and before threads race to do it)
    project.embedder, project.store, project.router
    engine = project.engine
    batcher = Batcher(engine, max_batch=max_batch or cfg.max_batch, window_ms=cfg.batch_window_ms if window_ms is None else window_ms,
                      max_queue=max_queue or cfg.max_queue)
    metrics = Metrics()
    streams = {"active": 0}
    streams_lock = threading.Lock()
    admin_lock = threading.Lock()
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="loradex", version="0.1.0", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.project = batcher, metrics, project

    def error_body(status: int, message: str, type_: str, code=None, param=None) -> dict:
        return {"error": {"message": message, "type": type_, "param": param, "code": code or str(status)}}

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        metrics.inc("errors_total", status=str(exc.status))
        return JSONResponse(error_body(exc.status, exc.message, exc.type, exc.code, exc.param), exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        metrics.inc("errors_total", status="400")
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse(error_body(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}",
                                       "invalid_request_error", "invalid_request", where or None), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail), "invalid_request_error"), exc.status_code)

    def caller(request: Request, admin: bool = False) -> Caller:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not keys:
            if admin:
                raise ApiError(403, "admin endpoints need an admin key: set LORADEX_ADMIN_KEY or server.keys",
                               "permission_error", "admin_disabled")
            return Caller("anonymous", ())
        who = keys.get(token)
        if who is None:
            raise ApiError(401, "missing or unknown API key: send `Authorization: Bearer KEY`",
                           "authentication_error", "invalid_api_key")
        if admin and not who.admin:
            raise ApiError(403, "this key is not an admin key", "permission_error", "not_admin")
        return who

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > cfg.max_body_bytes:
            raise ApiError(413, f"request body over {cfg.max_body_bytes} bytes", code="request_too_large")
        try:
            data = json.loads(raw or b"{}")
        except ValueError as e:
            raise ApiError(400, f"malformed JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        return data

    # ---------------------------------------------------------------- chat
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        from starlette.concurrency import run_in_threadpool

        who = caller(request)
        data = await body_of(request)
        model = data.get("model")
        messages = data.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "`model` is required: auto, base, a domain, or domain@version", param="model")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "`messages` must be a non-empty list of {role, content}", param="messages")
        question = _question(messages)
        if len(question) > cfg.max_input_chars:
            raise ApiError(413, f"the question is {len(question)} characters; the limit is {cfg.max_input_chars}",
                           code="context_length_exceeded", param="messages")
        opts = data.get("loradex") or {}
        if not isinstance(opts, dict):
            raise ApiError(400, "`loradex` must be an object", param="loradex")
        max_tokens = data.get("max_tokens", data.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096):
            raise ApiError(400, "`max_tokens` must be an integer in 1..4096", param="max_tokens")
        temperature = data.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
            raise ApiError(400, "`temperature` must be in 0..2", param="temperature")
        target = _model_target(project, model)
        t0 = time.perf_counter()
        try:
            prepared = await run_in_threadpool(
                prepare, project, question, k=opts.get("k"), filters=Filters(groups=who.groups),
                retrieval=bool(opts.get("retrieval", True)), **target)
        except AdapterError as e:
            raise ApiError(409, f"the adapter was refused: {e}", code="adapter_refused") from None
        if prepared.request is not None:
            r = prepared.request
            prepared.request = GenerationRequest(r.messages, max_tokens or r.max_new_tokens, r.stop,
                                                 r.temperature if temperature is None else float(temperature), r.adapter)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        metrics.inc("requests_total", model=model.split("@")[0], stream=str(bool(data.get("stream"))).lower())
        if data.get("stream"):
            return _stream(prepared, rid, created, model, t0)
        if prepared.done is not None:
            result = prepared.done
            usage = {"prompt_tokens": 0, "completion_tokens": 0}
            finish_reason = "stop"
        else:
            try:
                future = batcher.submit(prepared.request)
            except QueueFull as e:
                raise ApiError(429, f"server busy: {e}; retry shortly", "rate_limit_error", "queue_full",
                               headers={"Retry-After": "1"}) from None
            t_gen = time.perf_counter()
            gen = await run_in_threadpool(future.result)
            result = finish(project, prepared, gen.text, (time.perf_counter() - t_gen) * 1000)
            usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens}
            finish_reason = gen.finish_reason
            metrics.inc("tokens_total", gen.completion_tokens, kind="completion")
            metrics.inc("tokens_total", gen.prompt_tokens, kind="prompt")
        metrics.observe(time.perf_counter() - t0)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                             "finish_reason": finish_reason}],
                "usage": usage, **_extras(result)}

    def _extras(result: Answer) -> dict:
        return {"citations": result.citations, "sources": result.sources, "route": result.route,
                "adapter": result.adapter, "abstained": result.abstained, "flagged": result.flagged}

    def _stream(prepared, rid: str, created: int, model: str, t0: float):
        with streams_lock:
            if streams["active"] + batcher.depth >= batcher._queue.maxsize:
                raise ApiError(429, "server busy; retry shortly", "rate_limit_error", "queue_full",
                               headers={"Retry-After": "1"})
            streams["active"] += 1

        def chunk(delta: dict, finish_reason=None, **extra) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                if prepared.done is not None:
                    yield chunk({"content": prepared.done.answer})
                    result = prepared.done
                else:
                    pieces = []
                    t_gen = time.perf_counter()
                    for piece in engine.stream(prepared.request):
                        pieces.append(piece)
                        yield chunk({"content": piece})
                    result = finish(project, prepared, "".join(pieces).strip(), (time.perf_counter() - t_gen) * 1000)
                # the last chunk carries the checked answer: the text with bad citations removed, and its sources
                yield chunk({}, "stop", answer=result.answer, **_extras(result))
                yield "data: [DONE]\n\n"
                metrics.observe(time.perf_counter() - t0)
            finally:
                with streams_lock:
                    streams["active"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- models, health, metrics, page
    @app.get("/v1/models")
    def models(request: Request):
        caller(request)
        ids = ["auto", "base", *project.config.domains]
        for row in project.registry.list():
            ids.append(row["label"])
        seen = list(dict.fromkeys(ids))
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "loradex"} for i in seen]}

    @app.get("/health")
    def health():
        return {"status": "ok", "documents": len(project.load_manifest()["documents"]),
                "adapters_loaded": getattr(engine, "loaded_adapters", lambda: [])(), "queue_depth": batcher.depth}

    @app.get("/metrics")
    def prometheus():
        stats = getattr(engine, "stats", {})
        gauges = {"queue_depth": batcher.depth, "streams_active": streams["active"],
                  "batches_total": batcher.stats["batches"], "batched_requests_total": batcher.stats["requests"],
                  "rejected_total": batcher.stats["rejected"],
                  "adapter_loads_total": stats.get("adapter_loads", 0),
                  "adapter_evictions_total": stats.get("adapter_evictions", 0),
                  "adapters_loaded": len(getattr(engine, "loaded_adapters", lambda: [])())}
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    # ---------------------------------------------------------------- admin
    @app.get("/admin/adapters")
    def admin_adapters(request: Request):
        caller(request, admin=True)
        return {"adapters": project.registry.list()}

    @app.post("/admin/adapters/import")
    async def admin_import(request: Request):
        caller(request, admin=True)
        data = await body_of(request)
        path, domain = data.get("path"), data.get("domain")
        if not isinstance(path, str) or not isinstance(domain, str):
            raise ApiError(400, "`path` (a PEFT folder on the server) and `domain` are required")
        try:
            with admin_lock:
                ref = project.registry.register(Path(path), domain, {"imported_from": path})
                if data.get("activate"):
                    project.registry.activate(domain, ref.version)
        except (AdapterError, OSError) as e:
            raise ApiError(400, f"adapter refused: {e}", code="adapter_refused") from None
        return {"imported": ref.label, "active": bool(data.get("activate"))}

    @app.post("/admin/adapters/{domain}/activate")
    async def admin_activate(domain: str, request: Request):
        caller(request, admin=True)
        data = await body_of(request)
        try:
            with admin_lock:
                ref = project.registry.activate(domain, str(data.get("version", "")))
        except AdapterError as e:
            raise ApiError(400, str(e), code="adapter_refused") from None
        return {"active": ref.label}

    @app.post("/admin/adapters/{domain}/rollback")
    def admin_rollback(domain: str, request: Request):
        caller(request, admin=True)
        try:
            with admin_lock:
                ref = project.registry.rollback(domain)
        except AdapterError as e:
            raise ApiError(400, str(e)) from None
        return {"active": ref.label if ref else None}

    @app.post("/admin/documents/ingest")
    async def admin_ingest(request: Request):
        from ..ingest.ingest import ingest

        caller(request, admin=True)
        data = await body_of(request)
        paths = data.get("paths")
        with admin_lock:
            report = ingest(project, paths or None, prune=bool(data.get("prune")))
        return report.to_dict() if hasattr(report, "to_dict") else json.loads(json.dumps(report, default=str))

    @app.delete("/admin/documents/{doc_id:path}")
    def admin_remove(doc_id: str, request: Request):
        caller(request, admin=True)
        with admin_lock, project.lock():
            manifest = project.load_manifest()
            if doc_id not in manifest["documents"]:
                raise ApiError(404, f"document {doc_id!r} is not indexed", code="not_found")
            project.store.delete([doc_id])
            del manifest["documents"][doc_id]
            project.save_manifest(manifest)
        return {"removed": doc_id}

    @app.post("/admin/router/fit")
    def admin_fit(request: Request):
        from ..route import fit_project_router

        caller(request, admin=True)
        with admin_lock:
            router = fit_project_router(project)
            project.__dict__["router"] = router
        return {"domains": router.domains, "examples": router.meta["examples"],
                "calibration_accuracy": router.meta["calibration_accuracy"]}

    return app


def serve(project, host: str, port: int) -> None:  # pragma: no cover - exercised by the CLI and the load benchmark
    import uvicorn

    uvicorn.run(create_app(project), host=host, port=port, log_level="warning", access_log=False)

