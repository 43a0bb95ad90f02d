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

With `sources="served"` the prompt holds exactly the `k` passages `ask` would give the question
(`loradex.pipeline.sources_for`), supporting or not, and the target keeps only what they support: each
sentence of three content words or more that none of them supports in one place is removed (a labelled field left empty
reads "none stated", a numbered step left empty goes), and an answer whose first line loses all its sentences
becomes "the documents do not cover this". RAFT's recipe always puts the supporting passages in the prompt,
so a field the question does not retrieve at answer time (an excess, a limit) is one the adapter learns to
write from memory; trained on served sources it learns to write only what its sources say.

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

from ..cite import CITATION, content_words, local_support, sentences, support, verify
from ..prompt import NO_SOURCES, build_messages
from ..retrieve import search, widen
from ..trim import remove_sentences
from ..types import Filters, Hit
from .data import Example

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["ContextReport", "check_settings", "gold_passages", "trim_to_sources", "with_context"]


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


def trim_to_sources(answer: str, passages: list[str], keep: str | None = None) -> tuple[str, list[str]]:
    """`answer` with every sentence of three content words or more that none of `passages` supports
    in one place (`loradex.cite.local_support`, the check loradex cites by) removed, and the removed sentences
    (`loradex.trim.remove_sentences` keeps the layout; lines matching `keep`, a format's label line, stay as
    given). Returns `NO_SOURCES` when the first line loses all its sentences (the answer itself is not in the
    passages)."""
    def unsupported(claim: str) -> bool:
        return len(content_words(claim)) >= 3 and not any(local_support(claim, p).ok for p in passages)

    trimmed = remove_sentences(answer, unsupported, keep)
    return (NO_SOURCES if trimmed.first_emptied else trimmed.text), trimmed.removed


def _served(project: Project, ex: Example, k: int, domain: str | None, keep: str | None,
            report: ContextReport) -> Example:
    """One example with the sources `ask` would give its question and a target trimmed to them."""
    from ..pipeline import sources_for

    hits = sources_for(project, ex.question, k, Filters(domain=domain))
    texts = [h.chunk.text for h in hits]
    trimmed, removed = trim_to_sources(CITATION.sub("", ex.answer), texts, keep)
    report.unsupported += [{"line": ex.line, "sentence": s} for s in removed]
    if trimmed == NO_SOURCES:
        report.without_gold += 1
        report.no_gold_found.append(ex.line)
        target = NO_SOURCES
    else:
        report.with_gold += 1
        target = verify(trimmed, texts, attribute=True).text
    messages = build_messages(ex.question, hits, project.config.name, project.config.answer.passage_chars)
    return Example(tuple(messages) + ({"role": "assistant", "content": target},), ex.line)


def check_settings(k: int, pool: int, gold_share: float, sources: str) -> None:
    """Raises ValueError, naming the `loradex train` flag, unless 1 <= k <= pool, 0 <= gold_share <= 1 and
    `sources` is raft or served."""
    problems = [f"--context-k must be at least 1 (got {k})"] if k < 1 else []
    problems += [f"--distractor-pool must be at least --context-k (got {pool} < {k})"] if pool < k else []
    problems += [f"--gold-share must be in [0, 1] (got {gold_share})"] if not 0.0 <= gold_share <= 1.0 else []
    problems += [f"--context-sources must be raft or served (got {sources!r})"] if sources not in (
        "raft", "served") else []
    if problems:
        raise ValueError("; ".join(problems))


def with_context(project: Project, examples: list[Example], *, k: int = 4, gold_share: float = 1.0,
                 pool: int = 12, domain: str | None = None, seed: int = 0, sources: str = "raft",
                 keep: str | None = None) -> ContextReport:
    """Each example rebuilt with `k` sources of `domain` (all domains when None) retrieved from the project's
    index: `sources="raft"` draws them from the top `pool` hits, supporting passages first; `"served"` takes
    the top `k` as served and trims the target to them (`keep`: see `trim_to_sources`). The module docstring
    says more. Raises ValueError from `check_settings`."""
    check_settings(k, pool, gold_share, sources)
    rng = random.Random(seed)
    report = ContextReport([])
    answer_cfg = project.config.answer
    for ex in examples:
        if "<source 1" in ex.question:
            report.examples.append(ex)
            report.kept += 1
            continue
        if sources == "served":
            report.examples.append(_served(project, ex, k, domain, keep, report))
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
