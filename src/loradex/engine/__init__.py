"""The Engine protocol: chat messages in, text out; batched, streaming, with stop sequences.

Backends: `local` (transformers on this machine) and `echo` (a deterministic fake for tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[dict, ...]
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    adapter: str | None = None  # a loaded adapter's name; None is the bare base model


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    timings_ms: dict = field(default_factory=dict)  # prompt (to the first token), generate (the rest)


class Engine(Protocol):
    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One generation per request, in order; requests may be run as one batch."""

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as they are generated."""


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop sequence, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
