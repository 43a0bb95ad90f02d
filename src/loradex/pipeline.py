"""answer(): route, retrieve, decide whether to abstain, prompt, generate with the domain's adapter, verify
citations. It is the orchestrator for one question at a time (the CLI, evaluation, notebooks).

The server batches many questions into one generation, so it calls the two halves itself: `prepare` (route,
adapter, retrieval, the generation request) and `complete` (citation check, the Answer), with the engine or
its batcher in between. Both paths share these two functions and `joined`, so they cannot drift.

Routing: an explicit domain skips the router; otherwise the router picks a domain or abstains, and an
abstained query goes to the bare base model with retrieval over every source. A chosen domain limits
retrieval to its documents (when it has any) and puts its active adapter on the base model; the adapter
folder is validated (hash, base, shapes) before it is first loaded, and it is addressed by its version,
so activating or rolling back takes effect on the next request.

Abstention on evidence happens before generation: when no retrieved passage is similar enough to the
question, the answer says the documents do not cover it and the model is not asked to invent one.

Conversations (`history`, `instructions`; `loradex.conversation` has the rules): the earlier turns are kept
within `server.max_input_chars` characters, oldest dropped first; a follow-up question is routed and searched
with key terms of the earlier user turns added; the kept turns and the client's instructions reach the prompt.
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cite import (
    CITATION,
    Verification,
    content_words,
    drop_repeats,
    local_support,
    parse_citations,
    sentences,
    uncited,
    unsupported,
    verify,
    without_label,
)
from .conversation import Conversation, fit, into_messages, search_query
from .engine import Generation, GenerationRequest
from .prompt import NO_SOURCES, build_messages, system_message
from .retrieve import search, widen
from .trim import remove_sentences
from .types import Answer, Citation, Filters, Hit, Route, SourceRef

if TYPE_CHECKING:
    from .adapters.registry import AdapterRef
    from .engine import Engine
    from .project import Project

__all__ = ["Prepared", "adapter_for", "answer", "choose_route", "complete", "joined", "label_of", "prepare",
           "sources_for"]

_NOT_COVERED = ("do not cover", "does not cover", "don't cover", "not covered by the documents")
SEARCHED_MIN_STRENGTH = 0.8  # a passage searched for by the sentence's own words needs more than the usual 0.6
_FINISHED = re.compile(r"(?:[.!?:…][\"'”’)\]]*|[\"'”’)\]])$")  # how a finished sentence ends
_SOURCE_STOPS = ("\nQuestion:",)  # a small model may go on to invent the next turn of the prompt's format


def _citations(verification: Verification, hits: list[Hit]) -> tuple[Citation, ...]:
    """One Citation per cited source number: verified when any sentence citing it is supported."""
    by_n: dict[int, dict] = {}
    for c in verification.checks:
        hit = hits[c.n - 1]
        entry = by_n.setdefault(c.n, {"n": c.n, "chunk_id": hit.chunk.chunk_id, "source": hit.chunk.source.label(),
                                      "quote": c.quote, "verified": False, "added": c.added, "reasons": []})
        entry["reasons"].append(c.reason)
        if c.verified and not entry["verified"]:
            entry.update(verified=True, quote=c.quote)
    return tuple(Citation(**{**e, "reasons": tuple(e["reasons"])}) for e in by_n.values())


def choose_route(project: Project, question: str, domain: str | None = None, route: bool = True) -> Route:
    """The named domain (reason `explicit`), no domain (`not_routed`), or the router's choice."""
    if domain is not None:
        return Route(domain, 1.0, {domain: 1.0}, False, "explicit", domain)
    if not route:
        return Route(None, 0.0, {}, True, "not_routed")
    return project.route([question])[0]


def adapter_for(project: Project, domain: str | None, version: str | None = None) -> AdapterRef | None:
    """The domain's active adapter (or the given version), validated and loaded on the engine; None when it
    has none. Raises AdapterError when the adapter fails validation: it never reaches the engine."""
    if domain is None:
        return None
    registry = project.registry
    ref = registry.resolve(domain, version) if version else registry.active(domain)
    if ref is None:
        return None
    engine = project.engine
    if ref.label not in engine.loaded_adapters():
        registry.check(ref)  # refused before it ever serves
    engine.load_adapter(ref.label, ref.path)
    return ref


@dataclass(frozen=True)
class Prepared:
    """Everything before generation: the route, the adapter, the sources and the request for the engine.

    Exactly one of `request` and `early_answer` is set: `early_answer` is an Answer that needs no model call
    (no passage was close enough to the question). `timings` (ms) and `usage` are filled in as work goes on.
    `query` is what routing and retrieval searched for; `conversation` holds the turns that reached the prompt
    and how many were dropped to fit the budget."""

    question: str
    route: Route
    adapter: str | None
    hits: list[Hit]
    sources: tuple[SourceRef, ...]
    request: GenerationRequest | None
    early_answer: Answer | None
    timings: dict[str, float]
    usage: dict
    query: str = ""
    conversation: Conversation = field(default_factory=lambda: Conversation(""))
    filters: Filters = field(default_factory=Filters)


def sources_for(project: Project, query: str, k: int, filters: Filters) -> list[Hit]:
    """The `k` passages an answer to `query` is given: hybrid search, widened by `answer.window` neighbouring
    chunks. Training with served sources (`loradex.adapters.context`) calls this too, so both see the same."""
    cfg = project.config.answer
    hits = search(project.store, project.embedder, query, project.config.retrieval,
                  k=k * (2 if cfg.window else 1), filters=filters)  # widening merges neighbours: fetch spares
    return widen(project.store, hits, cfg.window, cfg.passage_chars)[:k]


def prepare(project: Project, question: str, *, k: int | None = None, domain: str | None = None,
            filters: Filters | None = None, route: bool = True, use_adapter: bool = True,
            retrieval: bool = True, version: str | None = None, min_dense_score: float | None = None,
            history: Sequence[dict] = (), instructions: str = "", stop: Sequence[str] = ()) -> Prepared:
    """Route, load the domain's adapter, retrieve, and build the generation request (no generation).
    `min_dense_score` replaces `answer.min_dense_score` (evaluation's oracle mode never abstains).
    `history` holds the earlier `{"role": "user" | "assistant", "content"}` turns, oldest first, and
    `instructions` the client's system message (`loradex.conversation` says how both reach the prompt and the
    search); `stop` adds stop strings to the request. Raises AdapterError for a refused adapter and QueryError
    for an empty question or one that, with `instructions`, exceeds `server.max_input_chars`."""
    cfg = project.config.answer
    conversation = fit(Conversation.of(question, history, instructions), project.config.server.max_input_chars)
    question, query = conversation.question, search_query(conversation)
    stops = (*_SOURCE_STOPS, *(s for s in stop if s not in _SOURCE_STOPS))
    t_route = time.perf_counter()
    chosen = choose_route(project, query, domain, route)
    filters = filters or Filters()
    dom = project.config.domains.get(chosen.domain) if chosen.domain else None
    if dom is not None and dom.paths and filters.domain is None:
        filters = dataclasses.replace(filters, domain=chosen.domain)
    ref = adapter_for(project, chosen.domain, version) if use_adapter else None
    adapter = ref.label if ref else None
    t_load = time.perf_counter()
    _ = project.embedder, project.store  # loading models is not retrieval time: load before the clock starts
    t0 = time.perf_counter()
    timings = {"route": (t_load - t_route) * 1000, "load": (t0 - t_load) * 1000, "retrieve": 0.0,
               "generate": 0.0, "verify": 0.0}
    if not retrieval:  # adapter only: the question under the serving system message, nothing to cite
        messages = into_messages(({"role": "system", "content": system_message(project.config.name)},
                                  {"role": "user", "content": question}), conversation)
        request = GenerationRequest(messages, cfg.max_new_tokens, tuple(stop), cfg.temperature, adapter,
                                    cfg.no_repeat_ngram)
        return Prepared(question, chosen, adapter, [], (), request, None, timings, {}, query, conversation)
    hits = sources_for(project, query, k or cfg.k, filters)
    timings["retrieve"] = (time.perf_counter() - t0) * 1000
    best = max((h.dense_score or 0.0 for h in hits), default=0.0)
    sources = tuple(SourceRef.from_hit(n, h) for n, h in enumerate(hits, start=1))
    usage: dict = {"best_dense_score": best}
    if best < (cfg.min_dense_score if min_dense_score is None else min_dense_score):
        early = Answer(question, NO_SOURCES, (), sources, True, (), timings, usage, chosen, adapter)
        return Prepared(question, chosen, adapter, hits, sources, None, early, timings, usage, query, conversation)
    messages = into_messages(build_messages(question, hits, project.config.name, cfg.passage_chars), conversation)
    request = GenerationRequest(messages, cfg.max_new_tokens, stops, cfg.temperature, adapter, cfg.no_repeat_ngram)
    return Prepared(question, chosen, adapter, hits, sources, request, None, timings, usage, query, conversation,
                    filters)


def complete(project: Project, p: Prepared, text: str, generate_ms: float = 0.0,
             finish_reason: str | None = None) -> Answer:
    """Remove repeated sentences from the generated `text`, verify its citations against the prepared sources
    and build the Answer. With `finish_reason` "length" (the token budget ran out), an unfinished last
    sentence is left out before checking and kept in `usage["unfinished"]`: half a sentence is not an answer,
    and loradex would otherwise cite it."""
    p.timings["generate"] = generate_ms
    text, repeated = drop_repeats(text.strip())
    usage = dict(p.usage)  # its own: the n answers of one request share `p`
    if finish_reason == "length":
        text = _without_unfinished(text, usage)
    if not p.hits:
        return Answer(p.question, text, (), (), False, (), p.timings, usage, p.route, p.adapter, tuple(repeated))
    t0 = time.perf_counter()
    cfg = project.config.answer
    verification = verify(text, [h.chunk.text for h in p.hits], attribute=cfg.attribute)
    hits, sources = p.hits, p.sources
    if cfg.attribute and cfg.search_support:
        hits, verification = _research(project, p, text, verification)
        sources = (*p.sources, *(SourceRef.from_hit(n, h, in_prompt=False)
                                 for n, h in enumerate(hits[len(p.hits):], start=len(p.hits) + 1)))
    removed: list[str] = []
    label = label_of(project, p.route.domain)
    if cfg.unsupported == "drop":
        verification, removed = _drop_unsupported(verification, label)
    p.timings["verify"] = (time.perf_counter() - t0) * 1000
    abstained = any(x in verification.text.lower() for x in _NOT_COVERED) and not verification.checks
    unmarked = [] if abstained else _uncited(verification, [h.chunk.text for h in hits], label)
    return Answer(p.question, verification.text, _citations(verification, hits), sources, abstained,
                  (*verification.flagged, *unmarked), p.timings, usage, p.route, p.adapter, tuple(repeated),
                  tuple(removed))


def label_of(project: Project, domain: str | None) -> str | None:
    """The `label` regular expression of the domain's format (its judgement line), None without one."""
    dom = project.config.domains.get(domain) if domain else None
    fmt = project.config.formats.get(dom.format) if dom and dom.format else None
    return fmt.label if fmt else None


def _uncited(verification: Verification, passages: list[str], label: str | None = None) -> list[dict]:
    """The answer's sentences of three content words or more that carry no citation, in the form of
    `Verification.flagged` (`sentence` without its field label, `cited` empty, `supported_by` the sources that
    support it in one place, `local_support`): with attribution on, which cites every sentence a source
    supports, that list is empty, so each of these is a sentence no source supports. The domain format's
    `label` line (a judgement, "Escalation: NO - routine theft report") needs no source and is not listed."""
    return [{"sentence": claim, "cited": [],
             "supported_by": [n for n, p in enumerate(passages, start=1) if local_support(claim, p).ok]}
            for sent, claim in uncited(verification.text) if not (label and re.search(label, sent.strip()))]


def _without_unfinished(text: str, usage: dict) -> str:
    """`text` without its last sentence when that does not end as a sentence does (., !, ?, :, a closing quote
    or bracket, or a citation), recorded in `usage["unfinished"]`; unchanged when it is the only sentence."""
    parts = sentences(text)
    if len(parts) < 2 or parse_citations(parts[-1]) or _FINISHED.search(CITATION.sub("", parts[-1]).rstrip()):
        return text
    usage["unfinished"] = parts[-1]
    return text[: text.rstrip().rfind(parts[-1])].rstrip()


def _drop_unsupported(verification: Verification, keep: str | None) -> tuple[Verification, list[str]]:
    """`answer.unsupported: drop`: the verified answer without the sentences no source supports
    (`loradex.cite.unsupported`) and their checks, and the removed sentences. Lines matching `keep` (the
    domain format's label line, a judgement such as "Escalation: NO - routine") stay. An answer left with no
    sentence of three content words says the documents do not cover the question."""
    bad = set(unsupported(verification))
    if not bad:
        return verification, []
    trimmed = remove_sentences(verification.text, bad.__contains__, keep)
    if not any(len(content_words(c)) >= 3 for c in trimmed.kept):
        return Verification(NO_SOURCES, removed=verification.removed), trimmed.removed
    gone = set(trimmed.removed)
    checks = [c for c in verification.checks if without_label(c.sentence) not in gone]
    flagged = [f for f in verification.flagged if without_label(f["sentence"]) not in gone]
    return Verification(trimmed.text, checks, verification.removed, flagged), trimmed.removed


def _research(project: Project, p: Prepared, text: str, verification: Verification) -> tuple[list[Hit], Verification]:
    """The prompt's hits with the passages `_search_support` found that the answer cites appended, and the
    answer verified against them all."""
    found = _search_support(project, p, verification)
    while found:
        hits = [*p.hits, *found]
        checked = verify(text, [h.chunk.text for h in hits], attribute=True)
        cited = [h for n, h in enumerate(found, start=len(p.hits) + 1) if n in checked.cited]
        if len(cited) == len(found):
            return hits, checked
        found = cited  # attribution preferred another source for that sentence: drop the passage, renumber
    return p.hits, verification


def _search_support(project: Project, p: Prepared, verification: Verification) -> list[Hit]:
    """Passages outside the prompt that support sentences of the answer no prompt source supports: each such
    sentence (at most `answer.search_support`) is searched for with the answer's own retrieval settings and
    filters (the route's domain, the caller's access groups), and the best of its top 3 hits that supports it
    in one place (`loradex.cite.local_support`, polarity included) with at least `SEARCHED_MIN_STRENGTH` of
    its words is kept: a search by the sentence's own words finds passages that share them, so the bar is
    higher than for the sources the model was given. Only found passages the answer ends up citing are kept.
    The answer's text is not changed: a sentence nothing supports stays flagged or uncited. After RARR's
    research stage (Gao et al., "RARR: Researching and Revising What Language Models Say, Using Language
    Models", ACL 2023)."""
    seen = {h.chunk.chunk_id for h in p.hits}
    found: list[Hit] = []
    for claim in unsupported(verification)[: project.config.answer.search_support]:
        hits = search(project.store, project.embedder, claim, project.config.retrieval, k=3, filters=p.filters)
        checked = [(local_support(claim, h.chunk.text), -i, h) for i, h in enumerate(hits)
                   if h.chunk.chunk_id not in seen]
        ok = [(s.strength, i, h) for s, i, h in checked if s.ok and s.strength >= SEARCHED_MIN_STRENGTH]
        if ok:
            best = max(ok, key=lambda x: x[:2])[2]
            seen.add(best.chunk.chunk_id)
            found.append(best)
    return found


def joined(pieces: Iterable[str]) -> str:
    """The answer text of streamed pieces: what `Engine.generate` would have returned."""
    return "".join(pieces).strip()


def answer(project: Project, question: str, *, k: int | None = None, domain: str | None = None,
           filters: Filters | None = None, on_token: Callable[[str], None] | None = None,
           route: bool = True, use_adapter: bool = True, retrieval: bool = True,
           min_dense_score: float | None = None, history: Sequence[dict] = (), instructions: str = "") -> Answer:
    """Answer `question` from the project's documents with verified citations, routed to a domain's adapter.

    `domain` names the domain (no router); `route=False` skips routing (base model, all sources);
    `use_adapter=False` is RAG only; `retrieval=False` is adapter only (no sources, no citations);
    `on_token` receives the text as it is generated; `history` and `instructions` are the earlier turns and
    the client's system message of a conversation (see `prepare`). Raises AdapterError for a refused adapter
    and QueryError for an empty question."""
    p = prepare(project, question, k=k, domain=domain, filters=filters, route=route, use_adapter=use_adapter,
                retrieval=retrieval, min_dense_score=min_dense_score, history=history, instructions=instructions)
    if p.early_answer is not None:
        if on_token:
            on_token(p.early_answer.answer)
        return p.early_answer
    t_engine = time.perf_counter()
    engine = project.engine  # the first call loads the base model: counted as load, not generation
    t1 = time.perf_counter()
    p.timings["load"] += (t1 - t_engine) * 1000
    assert p.request is not None
    text = _generate(engine, p.request, on_token, p.timings, p.usage)
    return complete(project, p, text, (time.perf_counter() - t1) * 1000, p.usage.get("finish_reason"))


def _generate(engine: Engine, request: GenerationRequest, on_token: Callable[[str], None] | None,
              timings: dict, usage: dict) -> str:
    if on_token:
        pieces = []
        for piece in engine.stream(request):
            pieces.append(piece)
            on_token(piece)
        return joined(pieces)
    gen = engine.generate([request])[0]
    record(gen, timings, usage)
    return gen.text


def record(gen: Generation, timings: dict, usage: dict) -> None:
    """Put a generation's time to the first token (ms) into `timings` and its token counts and finish reason
    into `usage`, as an Answer reports them."""
    timings.update(prompt=gen.timings_ms.get("prompt", 0.0))
    usage.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                 finish_reason=gen.finish_reason)
