"""Retrieval-aware training examples (the RAFT recipe, Zhang et al., "RAFT: Adapting Language Model to
Domain Specific RAG", 2024): the adapter learns to answer from the sources in its prompt.

For each example the project's index is searched with the question (`pool` hits of the example's domain,
widened by `answer.window` neighbouring chunks as served: `loradex.retrieve.widen`).
The gold passages are the fewest hits that together support the most sentences of the reference answer
(`loradex.cite.support`, the check that verifies served answers). In about `gold_share` of the examples the
prompt holds the gold passages among distractors, `k` sources in all, and the target is the reference answer
with `[n]` added after each sentence a source supports. In the rest the prompt holds distractors only and,
unlike the RAFT paper (which keeps the answer and so rewards recalling it from memory), the target is
loradex's "the documents do not cover this": the adapter learns to answer from sources or say it cannot, not
to recite document facts. An example with no gold passage at all always gets the second form.

Sentences of a reference answer that no retrieved passage supports are reported (file line and sentence), so
the user can fix the data: a form line ("Escalation: NO - routine") needs no source, but a fact there is one
the adapter would learn to state from memory. Prompts come from `loradex.prompt.build_messages`, the function
that serves answers, so training and serving see the same prompt (its system message replaces an example's
own). Examples whose prompt already holds sources (`<source 1`) are kept as they are.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..cite import CITATION, content_words, sentences, support, verify
from ..prompt import NO_SOURCES, build_messages
from ..retrieve import search, widen
from ..types import Filters, Hit
from .data import Example

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["ContextReport", "gold_passages", "with_context"]


@dataclass
class ContextReport:
    """What `with_context` built: the examples, how many hold their gold passages, and the reference
    sentences no retrieved passage supports (`line`, `sentence`), in data order."""

    examples: list[Example]
    with_gold: int = 0
    without_gold: int = 0  # distractors only, target "not covered" (drawn, or no gold passage found)
    no_gold_found: list[int] = field(default_factory=list)  # lines of examples no passage supports at all
    unsupported: list[dict] = field(default_factory=list)
    kept: int = 0  # examples that already held sources

    def to_dict(self) -> dict:
        return {"with_gold": self.with_gold, "without_gold": self.without_gold, "no_gold_found": self.no_gold_found,
                "unsupported_sentences": self.unsupported, "kept_as_given": self.kept}


def _claims(answer: str) -> list[str]:
    """The answer's sentences worth a source: three content words or more, citations removed."""
    out = [CITATION.sub("", s).strip() for s in sentences(answer)]
    return [s for s in out if len(content_words(s)) >= 3]


def gold_passages(answer: str, hits: list[Hit], k: int) -> tuple[list[int], list[str]]:
    """Indexes into `hits` of at most `k` passages that together support the most sentences of `answer`
    (greedy set cover, best first), and the sentences none of `hits` supports."""
    claims = _claims(answer)
    supports = [{i for i, c in enumerate(claims) if support(c, h.chunk.text).ok} for h in hits]
    covered: set[int] = set()
    golds: list[int] = []
    while len(golds) < k:
        best = max(range(len(hits)), key=lambda j: (len(supports[j] - covered), -j), default=None)
        if best is None or not supports[best] - covered:
            break
        golds.append(best)
        covered |= supports[best]
    every = set().union(*supports) if supports else set()
    return golds, [c for i, c in enumerate(claims) if i not in every]


def with_context(project: Project, examples: list[Example], *, k: int = 4, gold_share: float = 1.0,
                 pool: int = 12, domain: str | None = None, seed: int = 0) -> ContextReport:
    """Each example rebuilt with `k` sources of `domain` (all domains when None) retrieved from the project's
    index, drawn from its top `pool` hits; see the module docstring. Raises ValueError for k < 1, pool < k
    or gold_share outside [0, 1]."""
    if k < 1 or pool < k or not 0.0 <= gold_share <= 1.0:
        raise ValueError(f"need 1 <= k <= pool and 0 <= gold_share <= 1 (k={k}, pool={pool}, "
                         f"gold_share={gold_share})")
    rng = random.Random(seed)
    report = ContextReport([])
    answer_cfg = project.config.answer
    for ex in examples:
        if "<source 1" in ex.question:
            report.examples.append(ex)
            report.kept += 1
            continue
        hits = widen(project.store, search(project.store, project.embedder, ex.question, project.config.retrieval,
                                           k=pool, filters=Filters(domain=domain)),
                     answer_cfg.window, answer_cfg.passage_chars)
        golds, unsupported = gold_passages(ex.answer, hits, k)
        report.unsupported += [{"line": ex.line, "sentence": s} for s in unsupported]
        distractors = [h for i, h in enumerate(hits) if i not in golds]
        draw = rng.random()
        if golds and draw < gold_share:
            chosen = [hits[i] for i in golds] + rng.sample(distractors, min(k - len(golds), len(distractors)))
            rng.shuffle(chosen)
            target = verify(CITATION.sub("", ex.answer), [h.chunk.text for h in chosen], attribute=True).text
            report.with_gold += 1
        else:
            if not golds:
                report.no_gold_found.append(ex.line)
            chosen = rng.sample(distractors, min(k, len(distractors)))
            target = NO_SOURCES
            report.without_gold += 1
        messages = build_messages(ex.question, chosen, project.config.name, answer_cfg.passage_chars)
        report.examples.append(Example(tuple(messages) + ({"role": "assistant", "content": target},), ex.line))
    return report
