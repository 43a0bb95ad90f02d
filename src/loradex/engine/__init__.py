"""The Engine protocol: chat messages in, text out; batched, streaming, with stop sequences and adapters.

Backends are named in `loradex.backends.ENGINES`: `local` (transformers + PEFT on this machine) and `echo`
(a deterministic fake for tests). Every backend passes `tests/contract/test_engine.py`.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["CANCELLED", "Engine", "Generation", "GenerationRequest", "cancelled", "cut_at_stop"]

CANCELLED = "cancelled"  # Generation.finish_reason of a request whose `cancel` event was set


@dataclass(frozen=True)
class GenerationRequest:
    """One chat completion to generate.

    `messages`: `{"role", "content"}` dicts in order; `max_new_tokens`: the budget in model tokens;
    `stop`: strings that end the answer (the text is cut before the first one; the end-of-sequence token
    always stops); `temperature`: 0 is greedy decoding, above 0 samples; `adapter`: the name a loaded
    adapter was given in `Engine.load_adapter`, None for the bare base model; `no_repeat_ngram`: 0 is off,
    n >= 2 means no n tokens in a row occur twice in the answer (n-gram blocking, as Paulus et al., "A Deep
    Reinforced Model for Abstractive Summarization", ICLR 2018, block repeated trigrams). Unlike transformers'
    `no_repeat_ngram_size`, the prompt does not count, so an answer may still quote its sources word for word."""

    messages: tuple[dict, ...]
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    adapter: str | None = None
    no_repeat_ngram: int = 0

    def __post_init__(self) -> None:
        if self.no_repeat_ngram == 1 or self.no_repeat_ngram < 0:
            raise ValueError("no_repeat_ngram must be 0 (off) or at least 2")


@dataclass(frozen=True)
class Generation:
    """A generated answer: its text (stop sequence cut, whitespace stripped), token counts, and why it ended:
    `stop` (end of sequence or a stop string), `length` (the token budget ran out) or `cancelled` (its
    `cancel` event was set: the text so far, which nobody may read). `timings_ms` has
    `prompt` (milliseconds to the first new token) and `generate` (the rest)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    timings_ms: dict = field(default_factory=dict)


class Engine(Protocol):
    name: str
    stats: dict[str, int]  # counters for /metrics: adapter_loads, adapter_evictions

    def generate(self, requests: Sequence[GenerationRequest],
                 cancel: Sequence[threading.Event | None] = ()) -> list[Generation]:
        """One generation per request, in order. Requests may run as one batch, mixing adapters; each result
        equals what the request would give alone. `cancel` holds, per request (or none), an event that, once
        set, ends that request's generation after at most one more token, with finish_reason `cancelled`,
        the others going on (the server sets it when a client goes away). Raises EngineError when a request
        names an adapter that was never loaded."""

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces as they are generated; joined (and stripped) they equal `generate([request])[0].text`.
        Once `cancel` is set, generation stops after at most one more token and the stream ends."""

    def load_adapter(self, name: str, path: str | Path) -> bool:
        """Make the PEFT LoRA folder `path` servable as `name` on the shared base (the base weights never
        change). Loading the same name from the same folder again is a no-op. True when it was (re)loaded."""

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters loaded now, least recently used first."""


def cancelled(cancel: Sequence[threading.Event | None], i: int) -> bool:
    """Whether request `i`'s event in `cancel` (as `Engine.generate` takes it) is set."""
    return i < len(cancel) and cancel[i] is not None and cancel[i].is_set()  # type: ignore[union-attr]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop sequence, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
