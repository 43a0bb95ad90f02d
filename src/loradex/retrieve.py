"""Hybrid retrieval: dense and BM25 rankings fused by weighted reciprocal rank fusion.

RRF uses ranks only, so cosine and BM25 scores need no calibration against each other:
score(chunk) = sum over retrievers of weight / (rrf_k + rank). Each hit keeps both raw scores
and ranks so a user can see why it was returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import QueryError
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
    mode; `dense_score` and `bm25_score` always keep their own units. Raises QueryError for an empty query
    or an unknown mode."""
    k = k or settings.k
    mode = mode or settings.mode
    if mode not in MODES:
        raise QueryError(f"unknown retrieval mode {mode!r}: use hybrid, dense or bm25")
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
