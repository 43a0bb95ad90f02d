"""loradex's n-gram blocking rule, in plain Python: one definition for every engine.

The transformers, onnxruntime-genai and echo engines import it as `loradex.vllm_plugin.ngram_rule`, and the vLLM
logits processor beside it (`loradex_ngram.py`, imported by vLLM with this folder on PYTHONPATH, never importing
loradex) as `ngram_rule`. n-gram blocking as in Paulus et al., "A Deep Reinforced Model for Abstractive
Summarization", ICLR 2018, applied to the answer only: the prompt's n-grams stay allowed.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def banned(output: Sequence[T], n: int) -> list[T]:
    """The tokens (ids, or words for the echo engine) that would complete, after `output`, an n-gram that
    `output` already holds: each token that followed an earlier occurrence of `output`'s last n-1 tokens.
    Empty while `output` is shorter than n; n is at least 2. O(len(output) * n) per call."""
    if len(output) < n:
        return []
    out = list(output)
    tail = out[len(out) - n + 1:]
    return [out[i + n - 1] for i in range(len(out) - n + 1) if out[i:i + n - 1] == tail]
