"""The body of `POST /v1/chat/completions`: every field of OpenAI's chat completions request (API reference,
"Create chat completion") is honoured or refused with a 400 whose `param` names it. Nothing is accepted and
ignored: a field outside the reference (and outside `loradex`) is refused too, as `unknown field`.

Honoured: `model`, `messages` (system and developer messages are the client's instructions, user and
assistant messages the conversation: `loradex.conversation`), `stream`, `stream_options.include_usage`,
`max_tokens`, `max_completion_tokens`, `temperature`, `stop` (a string or a list of up to 4; generation ends
before it and it is never returned), `n` (with sampling only: greedy decoding would give n identical
choices, so `n > 1` at temperature 0 is refused, as vLLM's `SamplingParams._verify_greedy_sampling` refused
it, "n must be 1 when using greedy sampling"), `seed` (greedy decoding is deterministic, so at temperature 0
every seed gives the one answer; with sampling the engines cannot seed one request, so a seed is refused
there), `response_format` `{"type": "text"}`.

Accepted only with the value that asks for what loradex does anyway, refused with any other (`DEFAULT_ONLY`):
`tools`, `tool_choice`, `functions`, `function_call`, `parallel_tool_calls`, `logprobs`, `top_logprobs`,
`top_p`, `frequency_penalty`, `presence_penalty`, `logit_bias`, `modalities`, `audio`, `prediction`,
`reasoning_effort`, `verbosity`, `web_search_options`, `store`, `service_tier`; likewise a message's `name`,
`tool_calls`, `tool_call_id`, `function_call`, `refusal`, `audio` and `annotations`, and content parts other
than text. Identifiers that change no answer are accepted: `user`, `safety_identifier`, `prompt_cache_key`,
`metadata` (OpenAI uses them for abuse monitoring, caching and stored completions; loradex for nothing).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ..conversation import Conversation, split_messages
from ..errors import QueryError
from .errors import ApiError

__all__ = ["DEFAULT_ONLY", "MAX_N", "ChatCompletionRequest", "ChatMessage", "ContentPart", "LoradexOptions",
           "ResponseFormat", "StreamOptions"]

MAX_N = 16  # choices one request may ask for; each is a generation in the batcher's queue
MAX_STOP = 4  # stop sequences, as OpenAI allows
_FORBID = ConfigDict(extra="forbid")


def _none(v: Any) -> bool:
    return v is None


def _empty(v: Any) -> bool:
    return v is None or v == [] or v == {}


DEFAULT_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {  # field -> (asks for the default?, why not more)
    "tools": (_empty, "tool calling is not supported (the model answers from the documents)"),
    "tool_choice": (lambda v: v in (None, "none"), "tool calling is not supported; only 'none' is accepted"),
    "functions": (_empty, "function calling is not supported"),
    "function_call": (lambda v: v in (None, "none"), "function calling is not supported; only 'none' is accepted"),
    "parallel_tool_calls": (lambda v: v in (None, False), "tool calling is not supported"),
    "logprobs": (lambda v: v in (None, False), "the engines do not return log probabilities"),
    "top_logprobs": (lambda v: v in (None, 0), "the engines do not return log probabilities"),
    "top_p": (lambda v: v in (None, 1, 1.0), "nucleus sampling is not supported; use temperature"),
    "frequency_penalty": (lambda v: v in (None, 0, 0.0), "penalties are not supported"),
    "presence_penalty": (lambda v: v in (None, 0, 0.0), "penalties are not supported"),
    "logit_bias": (_empty, "logit bias is not supported"),
    "modalities": (lambda v: v in (None, ["text"]), "only text output is supported"),
    "audio": (_none, "only text output is supported"),
    "prediction": (_none, "predicted outputs are not supported"),
    "reasoning_effort": (_none, "the served models are not reasoning models"),
    "verbosity": (_none, "answer length is set with max_tokens"),
    "web_search_options": (_none, "answers come from the project's documents, never the web"),
    "store": (lambda v: v in (None, False), "loradex does not store completions"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "there is one service tier"),
}
_MESSAGE_DEFAULT_ONLY: dict[str, Callable[[Any], bool]] = {
    "name": _none, "tool_calls": _empty, "tool_call_id": _none, "function_call": _none, "refusal": _none,
    "audio": _none, "annotations": _empty}


def refuse(param: str, why: str) -> ApiError:
    """The 400 for a field loradex does not honour with the value given."""
    return ApiError(400, f"{param} is not supported as given: {why}; leave it out or use its default",
                    code="unsupported_parameter", param=param)


class ContentPart(BaseModel):
    """One part of a message's content; text parts are read, any other type is refused."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""


class ChatMessage(BaseModel):
    """A chat message: its role and its content, a string or a list of content parts."""

    model_config = _FORBID
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: Any = None
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    refusal: Any = None
    audio: Any = None
    annotations: Any = None

    def text(self) -> str:
        """The content as text (the text parts joined by spaces), stripped."""
        if isinstance(self.content, list):
            return " ".join(p.text for p in self.content).strip()
        return (self.content or "").strip()

    def check(self, i: int) -> None:
        """Raise the 400 for what this message (number `i`) asks that loradex does not do."""
        at = f"messages[{i}]"
        if self.role in ("tool", "function"):
            raise refuse(f"{at}.role", f"{self.role} messages answer tool calls, which are not supported")
        for name in self.model_fields_set & _MESSAGE_DEFAULT_ONLY.keys():
            if not _MESSAGE_DEFAULT_ONLY[name](getattr(self, name)):
                raise refuse(f"{at}.{name}", "only the role and the text content of a message are read")
        for j, part in enumerate(self.content if isinstance(self.content, list) else []):
            if part.type != "text":
                raise refuse(f"{at}.content[{j}].type", f"{part.type!r} parts are not read; only 'text' parts are")
            if part.model_extra:
                raise refuse(f"{at}.content[{j}].{next(iter(part.model_extra))}", "a text part holds type and text")


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a last chunk with the usage and no choices."""

    model_config = _FORBID
    include_usage: StrictBool = False
    include_obfuscation: StrictBool = False


class ResponseFormat(BaseModel):
    """`response_format`: only `{"type": "text"}` is honoured (the answer is cited prose)."""

    model_config = _FORBID
    type: str
    json_schema: Any = None


class LoradexOptions(BaseModel):
    """loradex's own options for one request: `retrieval: false` is adapter only; `k` sources in the prompt."""

    model_config = _FORBID
    retrieval: StrictBool = True
    k: int | None = Field(None, ge=1, le=20)


class ChatCompletionRequest(BaseModel):
    """The body of `POST /v1/chat/completions` (see the module doc for what each field does)."""

    model_config = _FORBID
    model: str = Field(..., min_length=1, description="auto, base, a domain, or domain@version")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    response_format: ResponseFormat | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    top_p: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    store: Any = None
    service_tier: Any = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    loradex: LoradexOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"give a non-empty string or a list of at most {MAX_STOP} non-empty strings")
        return v

    def stops(self) -> tuple[str, ...]:
        """The stop sequences as a tuple (none when `stop` is null)."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def token_budget(self) -> int | None:
        """`max_tokens`, else `max_completion_tokens`."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def check(self, temperature: float) -> None:
        """Raise the 400 naming the first field this body sets to something loradex does not do, given the
        `temperature` the request will run at (the body's, else the project's `answer.temperature`)."""
        for name in sorted(self.model_fields_set & DEFAULT_ONLY.keys()):
            asks_default, why = DEFAULT_ONLY[name]
            if not asks_default(getattr(self, name)):
                raise refuse(name, why)
        for i, m in enumerate(self.messages):
            m.check(i)
        if self.response_format is not None and self.response_format.type != "text":
            raise refuse("response_format", "answers are cited prose; only {'type': 'text'} is accepted")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
        if self.stream_options is not None and self.stream_options.include_obfuscation:
            raise refuse("stream_options.include_obfuscation", "chunks are not padded")
        if self.n > 1 and temperature == 0:
            raise refuse("n", f"at temperature 0 (greedy decoding) all {self.n} choices would be the same answer; "
                         "set temperature above 0 for different samples, or n to 1")
        if self.seed is not None and temperature > 0:
            raise refuse("seed", "sampling cannot be seeded per request; greedy decoding (temperature 0) "
                         "is deterministic without one")

    def conversation(self) -> Conversation:
        """The messages as a Conversation; 400 naming `messages` when the last one is not a user message with
        text."""
        try:
            return split_messages([{"role": m.role, "content": m.text()} for m in self.messages])
        except QueryError as e:
            raise ApiError(400, str(e), param="messages") from None
