"""A deterministic fake engine for tests: answers with the first sentence of source 1, cited as [1].

It reads the prompt format of `loradex.prompt`, so pipeline tests exercise real prompts and real
citation checks without model weights.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EngineError
from ..prompt import NO_SOURCES
from ..vllm_plugin.ngram_rule import banned
from . import CANCELLED, Generation, GenerationRequest, cancelled, cut_at_stop

if TYPE_CHECKING:
    from ..project import Project

_SOURCE1 = re.compile(r"<source 1[^>]*>\n(.*?)\n</source 1>", re.S)


def _no_repeat(words: list[str], n: int) -> list[str]:
    """`words` without each word that would complete an n-gram already written (n = 0: unchanged)."""
    if not n:
        return words
    out: list[str] = []
    for w in words:
        if w not in banned(out, n):
            out.append(w)
    return out


class EchoEngine:
    """The fake engine. `reply` fixes the answer (for tests of what happens to a given text); a word is a token.
    `token_delay_s` (seconds) makes `stream` wait before each word, as a model does (for tests of clients that
    go away mid-stream)."""

    name = "echo"

    def __init__(self, reply: str | None = None, token_delay_s: float = 0.0):
        self.reply = reply  # a fixed reply, for tests of what happens to a given answer
        self.token_delay_s = token_delay_s
        self.streamed_words = 0  # words `stream` has produced, in all: what a cancelled stream did not make
        self.calls = 0
        self.adapters: dict[str, str] = {}  # name -> folder, as loaded (the echo answer ignores them)
        self.served: list[str | None] = []  # the adapter of every request generated, in order
        self.stats = {"adapter_loads": 0, "adapter_evictions": 0}

    def load_adapter(self, name: str, path: str | Path) -> bool:
        fresh = self.adapters.get(name) != str(path)
        self.adapters[name] = str(path)
        self.stats["adapter_loads"] += fresh
        return fresh

    def loaded_adapters(self) -> list[str]:
        return list(self.adapters)

    def _answer(self, request: GenerationRequest) -> str:
        if self.reply is not None:
            return self.reply
        m = _SOURCE1.search(request.messages[-1]["content"])
        if not m:
            return NO_SOURCES
        first = re.split(r"(?<=[.!?])\s", m.group(1).strip(), maxsplit=1)[0]
        return f"{first} [1]"

    def generate(self, requests: Sequence[GenerationRequest],
                 cancel: Sequence[threading.Event | None] = ()) -> list[Generation]:
        self.calls += 1
        out = []
        for i, r in enumerate(requests):
            if r.adapter is not None and r.adapter not in self.adapters:
                raise EngineError(f"adapter {r.adapter!r} is not loaded; load it first (engine.load_adapter)")
            if cancelled(cancel, i):
                out.append(Generation("", 0, 0, CANCELLED, {"prompt": 0.0, "generate": 0.0}))
                continue
            self.served.append(r.adapter)
            words = _no_repeat(self._answer(r).split(" "), r.no_repeat_ngram)
            text, stopped = cut_at_stop(" ".join(words[: r.max_new_tokens]), r.stop)
            reason = "stop" if stopped or len(words) <= r.max_new_tokens else "length"
            out.append(Generation(text, sum(len(m["content"].split()) for m in r.messages),
                                  min(len(words), r.max_new_tokens), reason, {"prompt": 0.0, "generate": 0.0}))
        return out

    def count_tokens(self, request: GenerationRequest, text: str) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of `request` answered with `text`: words, as `generate` counts them."""
        return sum(len(m["content"].split()) for m in request.messages), len(text.split())

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[str]:
        text = self.generate([request])[0].text
        for i, word in enumerate(text.split(" ")):
            if cancel is not None and cancel.is_set():
                return
            time.sleep(self.token_delay_s)
            self.streamed_words += 1
            yield word if i == 0 else " " + word


def from_project(project: Project) -> EchoEngine:
    """The `echo` entry of `loradex.backends.ENGINES`: needs no model."""
    return EchoEngine()
