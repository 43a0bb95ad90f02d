"""Retrieval-augmented training examples (the RAFT recipe): the adapter learns to answer from sources.

For each example the project's index is searched with the question. In about 80% of the examples the
prompt holds the gold passage (the retrieved passage that best supports the reference answer) among
distractors, and the reference answer gets `[n]` citations wherever a source supports a sentence
(by `loradex.cite`'s own check). In the rest the prompt holds only distractors and, unlike the RAFT
paper (which keeps the answer and so rewards recalling it from memory), the target is loradex's
"the documents do not cover this" answer: the adapter learns to answer from sources or abstain,
not to memorise document facts. Prompts come from `loradex.prompt.build_messages`, the function
that serves answers, so training and serving see the same prompt.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ..cite import content_words, verify
from ..prompt import NO_SOURCES, build_messages
from ..retrieve import search
from ..types import Filters, Hit
from .data import Example

if TYPE_CHECKING:
    from ..project import Project


def _gold(hits: list[Hit], answer: str) -> int | None:
    words = set(content_words(answer))
    if not words or not hits:
        return None
    overlap = [len(words & set(content_words(h.chunk.text))) / len(words) for h in hits]
    best = max(range(len(hits)), key=overlap.__getitem__)
    return best if overlap[best] >= 0.2 else None


def with_context(project: Project, examples: list[Example], *, k: int = 4, gold_share: float = 0.8,
                 domain: str | None = None, seed: int = 0) -> list[Example]:
    """Each example rebuilt with `k` retrieved sources of `domain` (all domains when None) in the prompt; the
    gold passage is among them for about `gold_share` of the examples (see the module docstring)."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        hits = search(project.store, project.embedder, ex.question, project.config.retrieval, k=k * 3,
                      filters=Filters(domain=domain))
        gold = _gold(hits, ex.answer)
        distractors = [h for i, h in enumerate(hits) if i != gold]
        if gold is not None and rng.random() < gold_share:
            chosen = rng.sample(distractors, min(k - 1, len(distractors))) + [hits[gold]]
            rng.shuffle(chosen)
            target = verify(ex.answer, [h.chunk.text for h in chosen], attribute=True).text
        else:
            chosen = rng.sample(distractors, min(k, len(distractors)))
            target = NO_SOURCES
        messages = build_messages(ex.question, chosen, project.config.name)
        out.append(Example(tuple(messages) + ({"role": "assistant", "content": target},), ex.line))
    return out
