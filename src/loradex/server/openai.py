"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`.

- `model` is `auto` (the router picks), `base` (no router, no adapter), a domain name (its active adapter)
  or `domain@version` (that adapter version, a prefix of its hash, `sha256:` optional).
- The body's fields are honoured or refused with a 400 naming them (`loradex.server.request` lists each).
  The messages are a conversation (`loradex.conversation`): the last user message is the question, earlier
  turns reach the prompt within `server.max_input_chars` (oldest dropped first), the client's system message
  becomes the prompt's instructions, and a follow-up is searched and routed with the earlier turns' key terms.
- `stop` ends generation before the stop text, which is never returned (streamed or not). `n` choices (with
  sampling) are n generations in the batcher, each checked on its own; the top-level `citations`, `flagged`,
  `repeated`, `removed` and `abstained` are choice 0's. A stream sends the choices one after another.
- `stream: true` sends server-sent events ending in `data: [DONE]`, a line of the answer at a time (a line
  that repeats an earlier one is never sent, `loradex.cite.RepeatFilter`); the last chunk of each choice
  carries its checked `answer` (bad citations and repeated sentences removed, and with `answer.unsupported:
  drop` the unsupported ones). With `stream_options:
  {"include_usage": true}` every chunk has `"usage": null` and one more chunk before `[DONE]` has the usage
  and no choices, as OpenAI sends it (a stream's tokens are counted by the engine's `count_tokens`). A failure
  after the first chunk is sent as a `data: {"error": ...}` event.
- Answers carry the usual fields plus `citations`, `sources`, `route`, `adapter`, `abstained`, `flagged`,
  `repeated`, `removed` and `conversation` (`search_query`, the earlier `turns` kept and the `dropped` ones).
- A `loradex` object in the body tunes one request: `{"retrieval": false}` (adapter only), `{"k": 6}`.
- Non-streaming generations go through the Batcher (mixed-adapter batches, bounded queue, 429 when full);
  streams go to the engine directly and count against the same limit.
- A client that goes away is noticed within `_POLL_S` while it waits (at once, mid-stream): its generation is
  cancelled (dropped from the queue, or ended at the next token), its stream slot given back, and the request
  counted in `loradex_client_disconnects_total` (no response is sent; logs show 499, nginx's "client closed").
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from ..cite import RepeatFilter
from ..conversation import Conversation, check_size
from ..errors import AdapterError, QueueFull
from ..pipeline import Prepared, complete, joined, prepare
from ..types import Answer, Filters
from .auth import Caller, require_key
from .errors import ApiError, error_event
from .request import ChatCompletionRequest, LoradexOptions, refuse
from .routing import GuardedRoute
from .state import ServerState, StreamSlot, app_state

if TYPE_CHECKING:
    from ..engine import Engine, Generation, GenerationRequest
    from ..project import Project

__all__ = ["model_target", "router"]

router = APIRouter(route_class=GuardedRoute, tags=["openai"])
State = Annotated[ServerState, Depends(app_state)]
Key = Annotated[Caller, Depends(require_key)]
_EXTRAS = ("citations", "sources", "route", "adapter", "abstained", "flagged", "repeated", "removed")
_PER_CHOICE = ("citations", "abstained", "flagged", "repeated", "removed")
_POLL_S = 0.25  # how often a waiting request checks that its client is still there
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away: logged, never received


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class _Reply(NamedTuple):
    id: str
    created: int
    model: str
    usage_chunks: bool  # stream_options.include_usage: every chunk has "usage", and a usage chunk ends


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


def _counter(engine: Engine) -> Callable[[GenerationRequest, str], tuple[int, int]] | None:
    """The engine's `count_tokens(request, text) -> (prompt, completion)`, which streams need for usage."""
    return getattr(engine, "count_tokens", None)


def _extras(prepared: Prepared, answer: Answer) -> dict[str, Any]:
    d = answer.to_dict()
    c = prepared.conversation
    return {**{k: d[k] for k in _EXTRAS},
            "conversation": {"search_query": prepared.query, "turns": len(c.history), "dropped": c.dropped}}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _prepare(state: ServerState, body: ChatCompletionRequest, conversation: Conversation, caller: Caller,
                   temperature: float) -> Prepared:
    """Route, retrieve and build the generation request with the body's stop strings, budget and temperature."""
    opts = body.loradex or LoradexOptions()
    target = model_target(state.project, body.model)
    try:
        prepared = await run_in_threadpool(
            prepare, state.project, conversation.question, k=opts.k, filters=Filters.for_caller(caller.groups),
            retrieval=opts.retrieval, history=conversation.history, instructions=conversation.instructions,
            stop=body.stops(), **target)
    except AdapterError as e:
        raise ApiError(409, f"the adapter was refused: {e}", code="adapter_refused") from None
    r, budget = prepared.request, body.token_budget()
    if r is None:
        return prepared
    return dataclasses.replace(prepared, request=dataclasses.replace(
        r, max_new_tokens=budget or r.max_new_tokens, temperature=temperature))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, caller: Key, state: State, request: Request) -> Any:
    """A chat completion (JSON, or server-sent events with `stream: true`) with citations, sources and route."""
    temperature = state.project.config.answer.temperature if body.temperature is None else float(body.temperature)
    body.check(temperature)
    conversation = body.conversation()
    check_size(conversation, state.project.config.server.max_input_chars)  # 413 before a stream starts
    usage_chunks = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    if usage_chunks and _counter(state.project.engine) is None:
        raise refuse("stream_options.include_usage", f"the {state.project.engine.name} engine cannot count the "
                     "tokens of a stream")
    t0 = time.perf_counter()
    prepared = await _prepare(state, body, conversation, caller, temperature)
    reply = _Reply(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), body.model, usage_chunks)
    state.metrics.requests.labels(model=body.model.split("@")[0], stream=str(body.stream).lower()).inc()
    if body.stream:
        return _stream(state, prepared, reply, t0, body.n, request)
    try:
        return await _complete(state, prepared, reply, t0, body.n, request)
    except ClientGone:
        state.metrics.disconnects.labels(stream="false").inc()
        return Response(status_code=CLIENT_CLOSED)


async def _generate(state: ServerState, request: GenerationRequest, n: int,
                    client: Request) -> tuple[list[Generation], float]:
    """`n` generations of `request` through the batcher, and the milliseconds they took. QueueFull (429) when
    the queue has no room for all `n`; ClientGone when the client goes away first (its generations are then
    cancelled: dropped from the queue, or ended at their next token)."""
    if n > 1 and state.batcher.capacity - state.batcher.depth < n:
        raise QueueFull(f"{n} choices do not fit in the queue ({state.batcher.depth} of {state.batcher.capacity} "
                        "places taken)")
    cancels = [threading.Event() for _ in range(n)]
    futures = [state.batcher.submit(request, c) for c in cancels]
    t_gen = time.perf_counter()
    waiting = asyncio.ensure_future(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
    try:
        while not (await asyncio.wait({waiting}, timeout=_POLL_S))[0]:
            if await client.is_disconnected():
                raise ClientGone
        return list(waiting.result()), (time.perf_counter() - t_gen) * 1000
    finally:
        if not waiting.done():  # the client is gone, or this handler was cancelled: nobody reads the answers
            for c, f in zip(cancels, futures):
                c.set()
                f.cancel()
            waiting.cancel()


def _choice(i: int, answer: Answer, finish_reason: str) -> dict[str, Any]:
    d = answer.to_dict()
    return {"index": i, "message": {"role": "assistant", "content": answer.answer}, "logprobs": None,
            "finish_reason": finish_reason, **{k: d[k] for k in _PER_CHOICE}}


async def _complete(state: ServerState, prepared: Prepared, reply: _Reply, t0: float, n: int,
                    client: Request) -> dict[str, Any]:
    """Generate `n` choices through the batcher (QueueFull is a 429, ClientGone when `client` goes away) and
    answer as a `chat.completion`; usage counts the prompt once and every choice's tokens."""
    gens: list[Generation] = []
    if prepared.early_answer is not None:
        answers = [prepared.early_answer] * n
    else:
        assert prepared.request is not None
        gens, ms = await _generate(state, prepared.request, n, client)
        answers = [complete(state.project, prepared, g.text, ms, g.finish_reason) for g in gens]
    prompt_tokens = gens[0].prompt_tokens if gens else 0
    completion_tokens = sum(g.completion_tokens for g in gens)
    reasons = [g.finish_reason for g in gens] or ["stop"] * n
    state.metrics.add_tokens(prompt_tokens, completion_tokens)
    state.metrics.latency.observe(time.perf_counter() - t0)
    return {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
            "choices": [_choice(i, a, r) for i, (a, r) in enumerate(zip(answers, reasons))],
            "usage": _usage(prompt_tokens, completion_tokens), **_extras(prepared, answers[0])}


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _chunk(reply: _Reply, index: int, delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
    body = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": reply.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **({"usage": None} if reply.usage_chunks else {}), **extra}
    return _sse(body)


class _SlotStream(StreamingResponse):
    """A stream that gives its slot back and cancels its generation however it ends: the last event sent, an
    error, or its client gone, before the first byte or mid-stream (watched for here, so a generation waiting
    for its next line is cancelled at once rather than when that line fails to send)."""

    def __init__(self, events: Iterator[str], slot: StreamSlot, state: ServerState):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.slot, self.state = slot, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False  # the last byte was sent: a client closing after `[DONE]` did not go away early

        async def sending(message: Any) -> None:
            nonlocal finished
            await send(message)
            finished = message["type"] == "http.response.body" and not message.get("more_body", False)

        try:
            async with anyio.create_task_group() as group:
                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if not finished:
                        self.state.metrics.disconnects.labels(stream="true").inc()
                    self.slot.release()  # the generation stops at its next token
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self.stream_response(sending)
                except OSError:  # the client went away as a chunk was sent: `finally` gives the slot back
                    pass
                group.cancel_scope.cancel()
        finally:
            self.slot.release()


def _stream(state: ServerState, prepared: Prepared, reply: _Reply, t0: float, n: int,
            request: Request) -> StreamingResponse:
    """Server-sent events from the engine's stream; 429 when streams and waiting requests fill the queue."""
    slot = state.streams.enter(state.batcher.capacity - state.batcher.depth)
    if slot is None:
        raise ApiError(429, "server busy; retry shortly", "rate_limit_error", "queue_full",
                       headers={"Retry-After": "1"})
    return _SlotStream(_events(state, prepared, reply, t0, n, request, slot.cancel), slot, state)


def _events(state: ServerState, prepared: Prepared, reply: _Reply, t0: float, n: int,
            request: Request, cancel: threading.Event) -> Iterator[str]:
    """Each choice's chunks in turn, the usage chunk when asked for, then `[DONE]`; an error as its event.
    Ends early, sending nothing more, once `cancel` is set."""
    try:
        tokens = [0, 0]  # prompt (once), completion (every choice)
        for i in range(n):
            if cancel.is_set():
                return
            yield from _choice_events(state, prepared, reply, i, tokens, cancel)
        if reply.usage_chunks:
            yield _sse({"id": reply.id, "object": "chat.completion.chunk", "created": reply.created,
                        "model": reply.model, "choices": [], "usage": _usage(*tokens)})
        yield "data: [DONE]\n\n"
        state.metrics.latency.observe(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - the status is sent already: the client gets the error as an event
        yield error_event(request, e, state.metrics)


def _choice_events(state: ServerState, prepared: Prepared, reply: _Reply, i: int, tokens: list[int],
                   cancel: threading.Event) -> Iterator[str]:
    """Choice `i`: the role, its text a line at a time, and a last chunk with the checked answer and extras."""
    yield _chunk(reply, i, {"role": "assistant", "content": ""})
    if prepared.early_answer is not None:
        answer = prepared.early_answer
        yield _chunk(reply, i, {"content": answer.answer})
    else:
        r = prepared.request
        assert r is not None
        pieces, shown = [], RepeatFilter()  # whole lines, never one that repeats an earlier one
        t_gen = time.perf_counter()
        for piece in state.project.engine.stream(r, cancel):
            pieces.append(piece)
            if text := shown.feed(piece):
                yield _chunk(reply, i, {"content": text})
        if cancel.is_set():  # the client is gone: nothing to check or send
            return
        if rest := shown.finish():
            yield _chunk(reply, i, {"content": rest})
        answer = complete(state.project, prepared, joined(pieces), (time.perf_counter() - t_gen) * 1000)
        if (count := _counter(state.project.engine)) is not None:
            prompt_tokens, completion_tokens = count(r, joined(pieces))
            tokens[0], tokens[1] = prompt_tokens, tokens[1] + completion_tokens
            state.metrics.add_tokens(prompt_tokens if i == 0 else 0, completion_tokens)
    yield _chunk(reply, i, {}, "stop", answer=answer.answer, **_extras(prepared, answer))


@router.get("/v1/models")
def list_models(caller: Key, state: State) -> dict[str, Any]:
    """`auto`, `base`, every domain and every registered adapter version (`domain@sha256:...`)."""
    ids = ["auto", "base", *state.project.config.domains, *(r["label"] for r in state.project.registry.versions())]
    return {"object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "loradex"} for i in dict.fromkeys(ids)]}
