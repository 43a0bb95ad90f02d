"""answer(): the one orchestrator. Retrieve, decide whether to abstain, prompt, generate, verify citations.

Abstention happens before generation: when no retrieved passage is similar enough to the question,
the answer says the documents do not cover it and the model is not asked to invent one.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .cite import verify
from .engine import GenerationRequest
from .prompt import NO_SOURCES, build_messages
from .retrieve import search
from .types import Filters, Hit

_NOT_COVERED = ("do not cover", "does not cover", "don't cover", "not covered by the documents")


@dataclass
class Answer:
    question: str
    answer: str
    citations: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)
    abstained: bool = False
    flagged: list[dict] = field(default_factory=list)
    timings_ms: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _source(n: int, hit: Hit) -> dict:
    s = hit.chunk.source
    quote = " ".join(hit.chunk.text.split())
    return {"n": n, "chunk_id": hit.chunk.chunk_id, "file": s.path, "page": s.page,
            "heading_path": list(s.heading_path), "span": [s.start, s.end], "doc_version": hit.chunk.doc_version,
            "score": hit.score, "dense_score": hit.dense_score, "quote": quote[:200] + ("..." if len(quote) > 200 else "")}


def _citations(verification, hits: list[Hit]) -> list[dict]:
    out = {}
    for c in verification.checks:
        hit = hits[c.n - 1]
        entry = out.setdefault(c.n, {"n": c.n, "chunk_id": hit.chunk.chunk_id, "source": hit.chunk.source.label(),
                                     "quote": c.quote, "verified": False, "added": c.added, "reasons": []})
        entry["reasons"].append(c.reason)
        if c.verified and not entry["verified"]:
            entry.update(verified=True, quote=c.quote)
    return list(out.values())


def answer(project, question: str, *, k: int | None = None, domain: str | None = None,
           filters: Filters | None = None, on_token: Callable[[str], None] | None = None) -> Answer:
    """Answer `question` from the project's documents with verified citations."""
    cfg = project.config.answer
    filters = filters or Filters(domain=domain)
    t_load = time.perf_counter()
    project.embedder, project.store  # loading models is not retrieval time: load before the clock starts
    t0 = time.perf_counter()
    hits = search(project.store, project.embedder, question, project.config.retrieval, k=k or cfg.k, filters=filters)
    t1 = time.perf_counter()
    timings = {"load": (t0 - t_load) * 1000, "retrieve": (t1 - t0) * 1000, "generate": 0.0, "verify": 0.0}
    best = max((h.dense_score or 0.0 for h in hits), default=0.0)
    sources = [_source(n, h) for n, h in enumerate(hits, start=1)]
    if best < cfg.min_dense_score:
        if on_token:
            on_token(NO_SOURCES)
        return Answer(question, NO_SOURCES, [], sources, True, [], timings, {"best_dense_score": best})
    request = GenerationRequest(tuple(build_messages(question, hits, project.config.name)), cfg.max_new_tokens,
                                ("<|im_end|>", "\nQuestion:"), cfg.temperature)
    usage: dict = {"best_dense_score": best}
    t_engine = time.perf_counter()
    engine = project.engine  # the first call loads the base model: counted as load, not generation
    t1 = time.perf_counter()
    timings["load"] += (t1 - t_engine) * 1000
    if on_token:
        pieces = []
        for piece in engine.stream(request):
            pieces.append(piece)
            on_token(piece)
        text = "".join(pieces).strip()
    else:
        gen = engine.generate([request])[0]
        text = gen.text
        timings.update(prompt=gen.timings_ms.get("prompt", 0.0))
        usage.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                     finish_reason=gen.finish_reason)
    t2 = time.perf_counter()
    verification = verify(text, [h.chunk.text for h in hits], attribute=cfg.attribute)
    t3 = time.perf_counter()
    timings.update(generate=(t2 - t1) * 1000, verify=(t3 - t2) * 1000)
    abstained = any(p in text.lower() for p in _NOT_COVERED) and not verification.checks
    return Answer(question, verification.text, _citations(verification, hits), sources, abstained,
                  verification.flagged, timings, usage)
