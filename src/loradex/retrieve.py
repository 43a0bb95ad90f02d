"""Hybrid retrieval: dense and BM25 rankings fused by weighted reciprocal rank fusion.

RRF uses ranks only, so cosine and BM25 scores need no calibration against each other:
score(chunk) = sum over retrievers of weight / (rrf_k + rank). Each hit keeps both raw scores
and ranks so a user can see why it was returned.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import QueryError
from .ingest.normalize import normalize
from .types import Chunk, Filters, Hit

if TYPE_CHECKING:
    from .config import RetrievalConfig
    from .embed import Embedder
    from .store import Store

MODES = ("hybrid", "dense", "bm25")


@dataclass(frozen=True)
class Ranked:
    """One retriever's result: the chunk, that retriever's score (cosine or BM25) and its 1-based rank."""

    chunk: Chunk
    score: float
    rank: int


def _ranked(pairs: list[tuple[Chunk, float]]) -> dict[str, Ranked]:
    return {c.chunk_id: Ranked(c, s, r) for r, (c, s) in enumerate(pairs, start=1)}


def fuse(dense: dict[str, Ranked], bm25: dict[str, Ranked], settings: RetrievalConfig) -> list[Hit]:
    """Weighted RRF (Cormack, Clarke and Buettcher, SIGIR 2009) of two rankings, best first; ties by chunk id."""
    hits = []
    for cid in dense.keys() | bm25.keys():
        d, b = dense.get(cid), bm25.get(cid)
        score = (settings.dense_weight / (settings.rrf_k + d.rank) if d else 0.0) + \
                (settings.bm25_weight / (settings.rrf_k + b.rank) if b else 0.0)
        chunk = d.chunk if d else b.chunk  # type: ignore[union-attr]  # cid came from one of the two
        hits.append(Hit(chunk, score, d.score if d else None, b.score if b else None, d.rank if d else None,
                        b.rank if b else None))
    hits.sort(key=lambda h: (-h.score, h.chunk.chunk_id))
    return hits


def search(store: Store, embedder: Embedder, query: str, settings: RetrievalConfig, *,
           k: int | None = None, mode: str | None = None, filters: Filters = Filters()) -> list[Hit]:
    """The top `k` chunks for `query` under `filters`, by the configured (or given) mode, best first.

    `Hit.score` is the RRF sum in `hybrid` mode, the cosine in `dense` mode and the BM25 score in `bm25`
    mode; `dense_score` and `bm25_score` always keep their own units. The query is normalised as documents are
    (`loradex.ingest.normalize.normalize`: a ligature or full-width letter matches its plain form). Raises
    QueryError for an empty query or an unknown mode."""
    k = k or settings.k
    mode = mode or settings.mode
    if mode not in MODES:
        raise QueryError(f"unknown retrieval mode {mode!r}: use hybrid, dense or bm25")
    query = normalize(query)
    if not query.strip():
        raise QueryError("empty query")
    n = max(k, settings.candidates)
    dense = bm25 = {}
    if mode in ("hybrid", "dense"):
        dense = _ranked(store.search_vector(embedder.embed([query])[0], n, filters))
    if mode in ("hybrid", "bm25"):
        bm25 = _ranked(store.search_text(query, n, filters))
    if mode == "dense":
        return [Hit(r.chunk, r.score, r.score, None, r.rank, None) for r in dense.values()][:k]
    if mode == "bm25":
        return [Hit(r.chunk, r.score, None, r.score, None, r.rank) for r in bm25.values()][:k]
    return fuse(dense, bm25, settings)[:k]


def widen(store: Store, hits: list[Hit], window: int, max_chars: int = 1600) -> list[Hit]:
    """Each hit's passage widened by up to `window` neighbouring chunks of its document on each side, nearest
    first, while the passage stays within `max_chars` characters (the hit itself always stays whole): a
    question often matches the chunk next to the one that answers it (a procedure's first steps, and its
    deadlines one section up). A hit whose chunk an earlier, better-ranked passage already holds is dropped, so
    no text is given twice; order is kept. The widened hit keeps its id, score and heading path; its text joins
    the chunks in document order and its span runs from the first to the last. `window` 0 returns `hits`.
    This is the "sentence window" idea (a small unit to match, a larger one to read) applied to chunks."""
    if window <= 0:
        return hits
    docs: dict[str, dict[int, Chunk]] = {}
    given: dict[str, set[int]] = {}
    out = []
    for hit in hits:
        c = hit.chunk
        taken = given.setdefault(c.doc_id, set())
        if c.ordinal in taken:
            continue
        if c.doc_id not in docs:  # one store read per document, not per hit
            docs[c.doc_id] = {x.ordinal: x for x in store.chunks(c.doc_id)}
        doc = docs[c.doc_id]
        chosen, size = [c], len(c.text)
        for step in range(1, window + 1):
            for o in (c.ordinal - step, c.ordinal + step):
                n = doc.get(o)
                if n is not None and o not in taken and n.doc_version == c.doc_version \
                        and size + len(n.text) + 2 <= max_chars:
                    chosen.append(n)
                    size += len(n.text) + 2
        chosen.sort(key=lambda x: x.ordinal)
        taken.update(x.ordinal for x in chosen)
        if len(chosen) == 1:
            out.append(hit)
            continue
        source = replace(c.source, start=chosen[0].source.start, end=chosen[-1].source.end)
        focus = sum(len(x.text) + 2 for x in chosen if x.ordinal < c.ordinal)
        out.append(replace(hit, chunk=replace(c, text="\n\n".join(x.text for x in chosen), source=source),
                           focus=focus))
    return out
