"""Answer every question in every mode, score each answer, and summarise per mode with intervals.

Modes: `base` (no sources, no adapter), `rag` (all sources, base model), `adapter` (the routed domain's
adapter, no sources), `hybrid` (route, the domain's sources and adapter: the product), `oracle` (the gold
documents as the only sources, base model, never abstaining: the ceiling for reading). Every answer is greedy
as configured. The model's text is cached under `.loradex/eval/generations/` by the request that produced it
(`generation_key`: the model, the engine and the whole request, so a changed document, route, adapter or
setting generates again and nothing else does); routing, retrieval, repeat removal and citation checking run
on every eval, so a change to them is measured on the cached text in seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_text
from ..cite import Verification, unsupported
from ..errors import QueryError
from ..types import Answer, Filters
from .metrics import (
    citation_scores,
    contains_reference,
    exact_match,
    format_failures,
    hit_at_k,
    label_correct,
    reciprocal_rank,
    repeats,
    strip_citations,
    token_f1,
)
from .questions import Question
from .stats import bootstrap, paired_bootstrap

if TYPE_CHECKING:
    from ..engine import GenerationRequest
    from ..project import Project

__all__ = ["METRICS", "MODES", "evaluate", "score_answer", "summarise"]

MODES = ("base", "rag", "adapter", "hybrid", "oracle")
METRICS = ("exact_match", "token_f1", "contains_answer", "label_accuracy", "citation_recall", "citation_precision",
           "verified_citation", "unsupported_sentence", "cited_gold", "format_ok", "repetition", "abstained_right",
           "abstained_wrongly", "routed_right", "hit_at_k", "mrr", "answer_in_sources", "latency_ms",
           "completion_tokens")
Progress = Callable[[int, int], None]


def _mode_args(q: Question, mode: str) -> dict[str, Any] | None:
    """`prepare`'s arguments for `mode`; None where the mode does not apply (oracle without gold documents)."""
    if mode == "base":
        return {"route": False, "use_adapter": False, "retrieval": False}
    if mode == "rag":
        return {"route": False, "use_adapter": False}
    if mode == "adapter":
        return {"retrieval": False}
    if mode == "hybrid":
        return {}
    if not q.gold_docs:  # oracle needs the gold documents
        return None
    return {"route": False, "use_adapter": False, "filters": Filters(doc_ids=q.gold_docs), "min_dense_score": -1.0}


def generation_key(project: Project, request: GenerationRequest) -> str:
    """What a generation depends on: the base model and engine, and the whole request (the prompt with its
    sources, the adapter's content hash in its label, the decoding settings). Routing, retrieval, documents and
    adapters all reach the generation through the request, so none needs its own place in the key."""
    blob = [project.config.model, project.config.engine, dataclasses.asdict(request)]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _ask(project: Project, q: Question, mode: str, cache: Path) -> Answer | None:
    """Prepare the question as `mode` does (route, retrieve, prompt), take the model's text from the cache or
    generate it, then remove repeats and verify citations as `answer` does: a change to the verifier or the
    repeat check re-scores every cached answer without generating again."""
    from ..engine import Generation
    from ..pipeline import complete, prepare, record

    args = _mode_args(q, mode)
    if args is None:
        return None
    p = prepare(project, q.question, **args)
    if p.early_answer is not None:
        return p.early_answer
    assert p.request is not None
    path = cache / f"{generation_key(project, p.request)}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        generate_ms, gen = cached.pop("generate_ms"), Generation(**cached)
    else:
        t0 = time.perf_counter()
        gen = project.engine.generate([p.request])[0]
        generate_ms = (time.perf_counter() - t0) * 1000
        write_text(path, json.dumps({**dataclasses.asdict(gen), "generate_ms": generate_ms}))
    record(gen, p.timings, p.usage)
    return complete(project, p, gen.text, generate_ms, gen.finish_reason)


def _format_of(project: Project, q: Question, routed: str | None) -> str | None:
    domain = q.domain or routed
    fmt = q.format or (project.config.domains[domain].format if domain in project.config.domains else None)
    return fmt


def score_answer(project: Project, q: Question, mode: str, a: Answer) -> dict[str, Any]:
    """One row: the answer, where it went, and every metric that applies to it (None where one does not)."""
    text, sources = a.answer, [s.text for s in a.sources]
    plain = strip_citations(text)
    cites = citation_scores(text, sources) if sources and not a.abstained else None  # "not covered" claims nothing
    files = list(dict.fromkeys(s.file for s in a.sources))
    fmt = _format_of(project, q, a.route.domain)
    check = project.config.formats.get(fmt) if fmt else None
    row: dict[str, Any] = {
        "exact_match": exact_match(plain, q.answers) if q.answers else None,
        "token_f1": token_f1(plain, q.answers) if q.answers else None,
        "contains_answer": float(contains_reference(plain, q.answers)) if q.answers else None,
        "label_accuracy": float(label_correct(plain, q.label, check.label if check else None)) if q.label else None,
        "citation_recall": cites.recall if cites else None,
        "citation_precision": cites.precision if cites else None,
        "verified_citation": float(any(c.verified for c in a.citations)) if cites else None,
        # a sentence no source supports: removed (answer.unsupported: drop), or left in the answer, flagged or
        # uncited (loradex.cite.unsupported); "not covered" claims nothing
        "unsupported_sentence": float(bool(a.removed) or not a.abstained and bool(
            unsupported(Verification(text, flagged=list(a.flagged))))) if sources else None,
        "cited_gold": float(any(s.file in q.gold_docs for s in a.sources if any(c.n == s.n for c in a.citations)))
        if q.gold_docs and a.citations else None,
        "format_ok": None if check is None else float(not format_failures(text, **check.model_dump(exclude={"label"}))),
        "repetition": float(repeats(text)),
        "abstained_right": float(a.abstained) if not q.answerable else None,
        "abstained_wrongly": float(a.abstained) if q.answerable else None,
        "routed_right": float(a.route.domain == q.domain) if q.domain and mode in ("adapter", "hybrid") else None,
        "hit_at_k": hit_at_k(files, q.gold_docs, len(files)) if q.gold_docs and files else None,
        "mrr": reciprocal_rank(files, q.gold_docs) if q.gold_docs and files else None,
        "answer_in_sources": float(contains_reference("\n".join(sources), q.answers)) if q.answers and sources
        else None,
        "latency_ms": sum(a.timings_ms.values()), "completion_tokens": a.usage.get("completion_tokens"),
    }
    return {"id": q.id, "mode": mode, "question": q.question, "answer": text, "abstained": a.abstained,
            "route": a.route.domain, "best": a.route.best, "adapter": a.adapter, "sources": files,
            "format": fmt, "metrics": row, "result": a.to_dict()}


def evaluate(project: Project, questions: Sequence[Question], modes: Sequence[str] = MODES, *,
             progress: Progress | None = None) -> list[dict[str, Any]]:
    """A scored row for every (question, mode) that applies (oracle needs gold documents), in question order,
    answered now or read from the cache. Raises QueryError for an unknown mode."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise QueryError(f"unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}")
    cache = project.state_dir / "eval" / "generations"
    rows, done, total = [], 0, len(questions) * len(modes)
    for q in questions:
        for mode in modes:
            result = _ask(project, q, mode, cache)
            if result is not None:
                rows.append(score_answer(project, q, mode, result))
            done += 1
            if progress:
                progress(done, total)
    return rows


def summarise(rows: Sequence[dict[str, Any]], *, seed: int = 0, baseline: str = "rag") -> dict[str, Any]:
    """Per mode and metric: the mean with its 95% bootstrap interval; and, per mode, the paired bootstrap of
    its difference from `baseline` on the questions both answered."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    by_mode = {m: {r["id"]: r["metrics"] for r in rows if r["mode"] == m} for m in modes}
    out: dict[str, Any] = {"modes": modes, "questions": len({r["id"] for r in rows}), "metrics": {}, "versus": {}}
    for m in modes:
        out["metrics"][m] = {k: _dict(bootstrap([v[k] for v in by_mode[m].values()], seed=seed)) for k in METRICS}
    if baseline in by_mode:
        for m in modes:
            if m == baseline:
                continue
            shared = [i for i in by_mode[m] if i in by_mode[baseline]]
            out["versus"][m] = {k: _dict(paired_bootstrap([by_mode[m][i][k] for i in shared],
                                                          [by_mode[baseline][i][k] for i in shared], seed=seed))
                                for k in METRICS}
    return out


def _dict(interval: Any) -> dict | None:
    return None if interval is None else interval.to_dict()
