"""answer(): the one orchestrator. Route, retrieve, decide whether to abstain, prompt, generate with the
domain's adapter, verify citations.

Routing: an explicit domain skips the router; otherwise the router picks a domain or abstains, and an
abstained query goes to the bare base model with retrieval over every source. A chosen domain limits
retrieval to its documents (when it has any) and puts its active adapter on the base model; the adapter
folder is validated (hash, base, shapes) before it is first loaded, and it is addressed by its version,
so activating or rolling back takes effect on the next request.

Abstention on evidence happens before generation: when no retrieved passage is similar enough to the
question, the answer says the documents do not cover it and the model is not asked to invent one.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .cite import verify
from .engine import GenerationRequest
from .prompt import NO_SOURCES, build_messages, system_message
from .retrieve import search
from .route import Route, route_queries
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
    route: dict = field(default_factory=dict)  # domain, score, scores, abstained, reason, best
    adapter: str | None = None  # name@sha256:version that generated the answer, None for the base model

    def to_dict(self) -> dict:
        return asdict(self)


def _source(n: int, hit: Hit) -> dict:
    s = hit.chunk.source
    quote = " ".join(hit.chunk.text.split())
    return {"n": n, "chunk_id": hit.chunk.chunk_id, "file": s.path, "page": s.page,
            "heading_path": list(s.heading_path), "span": [s.start, s.end], "doc_version": hit.chunk.doc_version,
            "score": hit.score, "dense_score": hit.dense_score, "quote": quote[:200] + ("..." if len(quote) > 200 else ""),
            "text": hit.chunk.text}


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


def choose_route(project, question: str, domain: str | None = None, route: bool = True) -> Route:
    if domain is not None:
        return Route(domain, 1.0, {domain: 1.0}, False, "explicit", domain)
    if not route:
        return Route(None, 0.0, {}, True, "not_routed")
    return route_queries(project, [question])[0]


def adapter_for(project, domain: str | None, version: str | None = None):
    """The domain's active adapter (or the given version), validated and loaded on the engine; None when it has none."""
    if domain is None:
        return None
    registry = project.registry
    ref = registry.resolve(domain, version) if version else registry.active(domain)
    if ref is None:
        return None
    engine = project.engine
    if ref.label not in getattr(engine, "loaded_adapters", lambda: [])():
        from .adapters.registry import validate

        validate(ref.path, registry.base, registry.base_shapes)  # refused before it ever serves
    engine.load_adapter(ref.label, ref.path)
    return ref


@dataclass
class Prepared:
    """Everything before generation: the route, the adapter, the sources and the request for the engine.
    `done` is set when the answer needs no model call (no passage close enough)."""
    question: str
    route: Route
    adapter: str | None
    hits: list[Hit]
    sources: list[dict]
    request: GenerationRequest | None
    done: Answer | None
    timings: dict
    usage: dict


def prepare(project, question: str, *, k: int | None = None, domain: str | None = None,
            filters: Filters | None = None, route: bool = True, use_adapter: bool = True,
            retrieval: bool = True, version: str | None = None) -> Prepared:
    """Route, load the domain's adapter, retrieve, and build the generation request (no generation)."""
    cfg = project.config.answer
    t_route = time.perf_counter()
    rt = choose_route(project, question, domain, route)
    chosen = rt.domain
    filters = filters or Filters()
    if chosen and filters.domain is None and project.config.domains.get(chosen) and project.config.domains[chosen].paths:
        filters = dataclasses.replace(filters, domain=chosen)
    ref = adapter_for(project, chosen, version) if use_adapter else None
    adapter = ref.label if ref else None
    t_load = time.perf_counter()
    project.embedder, project.store  # loading models is not retrieval time: load before the clock starts
    t0 = time.perf_counter()
    timings = {"route": (t_load - t_route) * 1000, "load": (t0 - t_load) * 1000, "retrieve": 0.0,
               "generate": 0.0, "verify": 0.0}
    if not retrieval:  # adapter only: the question under the serving system message, nothing to cite
        messages = ({"role": "system", "content": system_message(project.config.name)},
                    {"role": "user", "content": question})
        request = GenerationRequest(messages, cfg.max_new_tokens, ("<|im_end|>",), cfg.temperature, adapter)
        return Prepared(question, rt, adapter, [], [], request, None, timings, {})
    hits = search(project.store, project.embedder, question, project.config.retrieval, k=k or cfg.k, filters=filters)
    timings["retrieve"] = (time.perf_counter() - t0) * 1000
    best = max((h.dense_score or 0.0 for h in hits), default=0.0)
    sources = [_source(n, h) for n, h in enumerate(hits, start=1)]
    usage: dict = {"best_dense_score": best}
    if best < cfg.min_dense_score:
        done = Answer(question, NO_SOURCES, [], sources, True, [], timings, usage, rt.to_dict(), adapter)
        return Prepared(question, rt, adapter, hits, sources, None, done, timings, usage)
    request = GenerationRequest(tuple(build_messages(question, hits, project.config.name)), cfg.max_new_tokens,
                                ("<|im_end|>", "\nQuestion:"), cfg.temperature, adapter)
    return Prepared(question, rt, adapter, hits, sources, request, None, timings, usage)


def finish(project, p: Prepared, text: str, generate_ms: float = 0.0) -> Answer:
    """Verify the generated text's citations against the prepared sources and build the answer."""
    p.timings["generate"] = generate_ms
    if not p.hits:
        return Answer(p.question, text, [], [], False, [], p.timings, p.usage, p.route.to_dict(), p.adapter)
    t0 = time.perf_counter()
    verification = verify(text, [h.chunk.text for h in p.hits], attribute=project.config.answer.attribute)
    p.timings["verify"] = (time.perf_counter() - t0) * 1000
    abstained = any(x in text.lower() for x in _NOT_COVERED) and not verification.checks
    return Answer(p.question, verification.text, _citations(verification, p.hits), p.sources, abstained,
                  verification.flagged, p.timings, p.usage, p.route.to_dict(), p.adapter)


def answer(project, question: str, *, k: int | None = None, domain: str | None = None,
           filters: Filters | None = None, on_token: Callable[[str], None] | None = None,
           route: bool = True, use_adapter: bool = True, retrieval: bool = True) -> Answer:
    """Answer `question` from the project's documents with verified citations, routed to a domain's adapter.

    `domain` names the domain (no router); `route=False` skips routing (base model, all sources);
    `use_adapter=False` is RAG only; `retrieval=False` is adapter only (no sources, no citations)."""
    p = prepare(project, question, k=k, domain=domain, filters=filters, route=route, use_adapter=use_adapter,
                retrieval=retrieval)
    if p.done is not None:
        if on_token:
            on_token(p.done.answer)
        return p.done
    t_engine = time.perf_counter()
    engine = project.engine  # the first call loads the base model: counted as load, not generation
    t1 = time.perf_counter()
    p.timings["load"] += (t1 - t_engine) * 1000
    text = _generate(engine, p.request, on_token, p.timings, p.usage)
    return finish(project, p, text, (time.perf_counter() - t1) * 1000)


def _generate(engine, request: GenerationRequest, on_token, timings: dict, usage: dict) -> str:
    if on_token:
        pieces = []
        for piece in engine.stream(request):
            pieces.append(piece)
            on_token(piece)
        return "".join(pieces).strip()
    gen = engine.generate([request])[0]
    timings.update(prompt=gen.timings_ms.get("prompt", 0.0))
    usage.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                 finish_reason=gen.finish_reason)
    return gen.text
