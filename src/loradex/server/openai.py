"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`.

- `model` is `auto` (the router picks), `base` (no router, no adapter), a domain name (its active adapter)
  or `domain@version` (that adapter version, a prefix of its hash, `sha256:` optional). The last user message
  is the question. `stream: true` sends server-sent events ending in `data: [DONE]`, a line of the answer at a
  time (a line that repeats an earlier one is never sent, `loradex.cite.RepeatFilter`); the last chunk before
  it carries the checked `answer` (bad citations and repeated sentences removed).
- Answers carry the usual fields plus `citations`, `sources`, `route`, `adapter`, `abstained`, `flagged` and
  `repeated`.
- A `loradex` object in the body tunes one request: `{"retrieval": false}` (adapter only), `{"k": 6}`.
- Non-streaming generations go through the Batcher (mixed-adapter batches, bounded queue, 429 when full);
  streams go to the engine directly and count against the same limit.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..cite import RepeatFilter
from ..errors import AdapterError
from ..pipeline import Prepared, complete, joined, prepare
from ..types import Answer, Filters
from .auth import Caller, require_key
from .errors import ApiError
from .routing import GuardedRoute
from .state import ServerState, get_state

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["ChatCompletionRequest", "ChatMessage", "LoradexOptions", "model_target", "router"]

router = APIRouter(route_class=GuardedRoute, tags=["openai"])
State = Annotated[ServerState, Depends(get_state)]
Key = Annotated[Caller, Depends(require_key)]
_EXTRAS = ("citations", "sources", "route", "adapter", "abstained", "flagged", "repeated")


class ContentPart(BaseModel):
    """One part of a message's content; only `text` parts are read."""

    model_config = ConfigDict(extra="ignore")
    type: str = ""
    text: str = ""


class ChatMessage(BaseModel):
    """A chat message: its role and its content, a string or a list of content parts."""

    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The content as text (the text parts joined by spaces), stripped."""
        if isinstance(self.content, list):
            return " ".join(p.text for p in self.content if p.type == "text").strip()
        return (self.content or "").strip()


class LoradexOptions(BaseModel):
    """loradex's own options for one request: `retrieval: false` is adapter only; `k` sources in the prompt."""

    model_config = ConfigDict(extra="ignore")
    retrieval: bool = True
    k: int | None = Field(None, ge=1, le=20)


class ChatCompletionRequest(BaseModel):
    """The body of `POST /v1/chat/completions`; fields loradex does not use are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(..., min_length=1, description="auto, base, a domain, or domain@version")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    loradex: LoradexOptions | None = None

    def question(self) -> str:
        """The last user message's text; 400 when the last user message has none."""
        last = next((m for m in reversed(self.messages) if m.role == "user"), None)
        text = last.text() if last is not None else ""
        if not text:
            raise ApiError(400, "messages must end with a user message that has text", param="messages")
        return text

    def token_budget(self) -> int | None:
        """`max_tokens`, else `max_completion_tokens`."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


class _Reply(NamedTuple):
    id: str
    created: int
    model: str


def model_target(project: Project, model: str) -> dict[str, Any]:
    """`prepare`'s routing arguments for a model name; 404 `model_not_found` for an unknown domain or version."""
    if model == "auto":
        return {"route": True}
    if model == "base":
        return {"route": False, "use_adapter": False}
    name, _, version = model.partition("@")
    domains = set(project.config.domains) | {r["domain"] for r in project.registry.versions()}
    if name not in domains:
        raise ApiError(404, f"unknown model {model!r}; GET /v1/models lists them", code="model_not_found",
                       param="model")
    if version:
        try:
            project.registry.resolve(name, version)
        except AdapterError as e:
            raise ApiError(404, str(e), code="model_not_found", param="model") from None
    return {"domain": name, "version": version or None}


def _extras(answer: Answer) -> dict[str, Any]:
    d = answer.to_dict()
    return {k: d[k] for k in _EXTRAS}


async def _prepare(state: ServerState, body: ChatCompletionRequest, question: str, caller: Caller) -> Prepared:
    """Route, retrieve and build the generation request with the body's budget and temperature."""
    opts = body.loradex or LoradexOptions()
    target = model_target(state.project, body.model)
    try:
        prepared = await run_in_threadpool(
            prepare, state.project, question, k=opts.k, filters=Filters.for_caller(caller.groups),
            retrieval=opts.retrieval, **target)
    except AdapterError as e:
        raise ApiError(409, f"the adapter was refused: {e}", code="adapter_refused") from None
    r, budget = prepared.request, body.token_budget()
    if r is None:
        return prepared
    temperature = r.temperature if body.temperature is None else float(body.temperature)
    return dataclasses.replace(prepared, request=dataclasses.replace(
        r, max_new_tokens=budget or r.max_new_tokens, temperature=temperature))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, caller: Key, state: State) -> Any:
    """A chat completion (JSON, or server-sent events with `stream: true`) with citations, sources and route."""
    question = body.question()
    limit = state.project.config.server.max_input_chars
    if len(question) > limit:
        raise ApiError(413, f"the question is {len(question)} characters; the limit is {limit}",
                       code="context_length_exceeded", param="messages")
    t0 = time.perf_counter()
    prepared = await _prepare(state, body, question, caller)
    reply = _Reply(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), body.model)
    state.metrics.requests.labels(model=body.model.split("@")[0], stream=str(body.stream).lower()).inc()
    if body.stream:
        return _stream(state, prepared, reply, t0)
    return await _complete(state, prepared, reply, t0)


async def _complete(state: ServerState, prepared: Prepared, reply: _Reply, t0: float) -> dict[str, Any]:
    """Generate through the batcher (QueueFull is a 429) and answer as a `chat.completion`."""
    if prepared.early_answer is not None:
        answer, prompt_tokens, completion_tokens, finish_reason = prepared.early_answer, 0, 0, "stop"
    else:
        assert prepared.request is not None
        future = state.batcher.submit(prepared.request)
        t_gen = time.perf_counter()
        gen = await asyncio.wrap_future(future)
        answer = complete(state.project, prepared, gen.text, (time.perf_counter() - t_gen) * 1000)
        prompt_tokens, completion_tokens, finish_reason = gen.prompt_tokens, gen.completion_tokens, gen.finish_reason
        state.metrics.tokens.labels(kind="completion").inc(completion_tokens)
        state.metrics.tokens.labels(kind="prompt").inc(prompt_tokens)
    state.metrics.latency.observe(time.perf_counter() - t0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                         "finish_reason": finish_reason}],
            "usage": usage, **_extras(answer)}


def _chunk(reply: _Reply, delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
    body = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": reply.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _stream(state: ServerState, prepared: Prepared, reply: _Reply, t0: float) -> StreamingResponse:
    """Server-sent events from the engine's stream; 429 when streams and waiting requests fill the queue."""
    if not state.streams.enter(state.batcher.capacity - state.batcher.depth):
        raise ApiError(429, "server busy; retry shortly", "rate_limit_error", "queue_full",
                       headers={"Retry-After": "1"})
    return StreamingResponse(_events(state, prepared, reply, t0), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _events(state: ServerState, prepared: Prepared, reply: _Reply, t0: float) -> Iterator[str]:
    try:
        yield _chunk(reply, {"role": "assistant", "content": ""})
        if prepared.early_answer is not None:
            answer = prepared.early_answer
            yield _chunk(reply, {"content": answer.answer})
        else:
            assert prepared.request is not None
            pieces, shown = [], RepeatFilter()  # whole lines, never one that repeats an earlier one
            t_gen = time.perf_counter()
            for piece in state.project.engine.stream(prepared.request):
                pieces.append(piece)
                if text := shown.feed(piece):
                    yield _chunk(reply, {"content": text})
            if rest := shown.finish():
                yield _chunk(reply, {"content": rest})
            answer = complete(state.project, prepared, joined(pieces), (time.perf_counter() - t_gen) * 1000)
        # the last chunk carries the checked answer: the text with bad citations removed, and its sources
        yield _chunk(reply, {}, "stop", answer=answer.answer, **_extras(answer))
        yield "data: [DONE]\n\n"
        state.metrics.latency.observe(time.perf_counter() - t0)
    finally:
        state.streams.leave()


@router.get("/v1/models")
def list_models(caller: Key, state: State) -> dict[str, Any]:
    """`auto`, `base`, every domain and every registered adapter version (`domain@sha256:...`)."""
    ids = ["auto", "base", *state.project.config.domains, *(r["label"] for r in state.project.registry.versions())]
    return {"object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "loradex"} for i in dict.fromkeys(ids)]}
