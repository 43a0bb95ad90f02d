"""Retrieval quality of loradex on BEIR SciFact (test split: 300 claims over 5,183 abstracts).

What is measured, per retrieval mode (dense, bm25, hybrid) and for a few hybrid fusion settings:
nDCG@10 (graded as in BEIR / trec_eval: gain = qrels score, discount log2(rank + 1)), recall@10,
recall@100 and MRR@10, plus index build time and per-query latency.

How: every abstract becomes the Markdown text "# {title}\\n\\n{text}" and goes through the library's
real path: parse_bytes(..., "markdown") -> PendingDoc -> index_documents (structure-aware chunking
at --max-tokens, all-MiniLM-L6-v2 embeddings, LanceDB store) -> store.build_indexes() (BM25 index). Each
claim runs loradex.retrieve.search with `candidates` chunks per retriever and k = candidates; the
chunk ranking is folded into a document ranking (each document at the rank of its first, i.e.
best, chunk) and scored against qrels/test.tsv. Published references: BEIR BM25 nDCG@10 0.665,
all-MiniLM-L6-v2 about 0.645.

Run:  .venv/bin/python benchmarks/scifact_retrieval.py [--limit N] [--seed S] [--max-tokens 220] [--json]
Data: ../shared/data/scifact beside the repository root, or $LORADEX_DATA/scifact.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field

import _common as C
from loradex.config import RetrievalConfig
from loradex.embed import Embedder
from loradex.ingest.ingest import index_documents
from loradex.retrieve import search
from loradex.store import Store, open_store
from loradex.types import Hit


@dataclass(frozen=True)
class Run:
    """One row of the results: a retrieval mode with RetrievalConfig overrides."""

    name: str
    mode: str
    overrides: dict = field(default_factory=dict)
    published: float | None = None


def planned_runs(candidates: int) -> list[Run]:
    deep = {"candidates": candidates, "k": candidates}
    return [
        Run("dense", "dense", deep, C.PUBLISHED_NDCG10["all-minilm-l6-v2"]),
        Run("bm25", "bm25", deep, C.PUBLISHED_NDCG10["bm25"]),
        Run("hybrid (rrf_k 60, dense 1.0 / bm25 1.0: defaults)", "hybrid", deep),
        Run("hybrid rrf_k 10", "hybrid", {**deep, "rrf_k": 10}),
        Run("hybrid dense 1.0 / bm25 0.5", "hybrid", {**deep, "bm25_weight": 0.5}),
        Run("hybrid dense 0.5 / bm25 1.0", "hybrid", {**deep, "dense_weight": 0.5}),
        Run("hybrid, candidates 50 (library default)", "hybrid", {"candidates": 50, "k": 50}),
    ]


# ---------------------------------------------------------------- metrics

def ndcg_at(ranking: list[str], rels: dict[str, int], k: int = 10) -> float:
    dcg = sum(max(rels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranking: list[str], rels: dict[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranking: list[str], rels: dict[str, int], k: int = 10) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranking[:k]) if rels.get(d, 0) > 0), 0.0)


def evaluate(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int) -> dict:
    """Mean metrics over the ranked queries. recall@100 is null when the search asked for fewer than
    100 chunks (k < 100), so no 100-document ranking could come back; a search that finds fewer
    documents than that (BM25 with few matching terms) simply misses the rest."""
    n = len(rankings)
    mean = lambda f: round(sum(f(r, qrels[q]) for q, r in rankings.items()) / n, 4)  # noqa: E731
    return {"ndcg@10": mean(ndcg_at), "recall@10": mean(lambda r, q: recall_at(r, q, 10)),
            "recall@100": mean(lambda r, q: recall_at(r, q, 100)) if k >= 100 else None,
            "mrr@10": mean(mrr_at), "min_docs_returned": min(len(r) for r in rankings.values()),
            "queries_under_100_docs": sum(len(r) < 100 for r in rankings.values())}


def document_ranking(hits: list[Hit]) -> list[str]:
    """Chunk hits -> distinct documents, each at the rank of its best (first) chunk."""
    return list(dict.fromkeys(h.chunk.doc_id for h in hits))


# ---------------------------------------------------------------- indexing and querying

def build_index(sf: C.SciFact, embedder: Embedder, store: Store, max_tokens: int) -> dict:
    """Index the whole corpus through index_documents, then finish(); returns counts and timings."""
    with C.progress_bar() as bar:
        task = bar.add_task("index SciFact", total=len(sf.corpus))
        t0 = time.perf_counter()
        chunks = index_documents(store, embedder, (C.pending_doc(d) for d in sf.corpus), max_tokens,
                                 progress=lambda done, total: bar.update(task, completed=done),
                                 total=len(sf.corpus))
        t1 = time.perf_counter()
        store.build_indexes()
        t2 = time.perf_counter()
    return {"documents": len(sf.corpus), "chunks": chunks, "index_seconds": round(t1 - t0, 2),
            "finish_seconds": round(t2 - t1, 2), "chunks_per_second": round(chunks / (t1 - t0), 2)}


def run_queries(store: Store, embedder: Embedder, queries: dict[str, str], run: Run,
                bar) -> tuple[dict[str, list[str]], list[float]]:
    """Search every query under one Run; returns document rankings and per-query seconds."""
    settings = RetrievalConfig(mode=run.mode, **run.overrides)
    task = bar.add_task(f"query {run.mode:6} {run.name[:28]}", total=len(queries))
    rankings, seconds = {}, []
    for qid, text in queries.items():
        t0 = time.perf_counter()
        hits = search(store, embedder, text, settings)
        seconds.append(time.perf_counter() - t0)
        rankings[qid] = document_ranking(hits)
        bar.advance(task)
    return rankings, seconds


def measure_runs(store: Store, embedder: Embedder, sf: C.SciFact, qids: list[str], candidates: int) -> list[dict]:
    queries = {q: sf.queries[q] for q in qids}
    search(store, embedder, queries[qids[0]], RetrievalConfig())  # warm-up: first-query costs stay out of timings
    rows = []
    with C.progress_bar() as bar:
        for run in planned_runs(candidates):
            rankings, seconds = run_queries(store, embedder, queries, run, bar)
            settings = RetrievalConfig(mode=run.mode, **run.overrides)
            rows.append({"name": run.name, "mode": run.mode, "settings": settings.model_dump(),
                         **evaluate(rankings, sf.qrels, settings.k), "published_ndcg@10": run.published,
                         "query_latency": C.latency_summary(seconds)})
    return rows


# ---------------------------------------------------------------- report

def render(result: dict) -> str:
    idx, s = result["index"], result["settings"]
    head = (f"SciFact test, {s['queries']} queries{' (sample, seed ' + str(s['seed']) + ')' if s['limit'] else ''}; "
            f"{idx['documents']} docs -> {idx['chunks']} chunks (max_tokens {s['max_tokens']}), "
            f"embedder {s['embedder']}, candidates {s['candidates']}; index {idx['index_seconds']} s "
            f"+ finish {idx['finish_seconds']} s; {result['machine']['cpu_cores']} cores, other processes' "
            f"CPU share during the run {result['machine_load']['other_processes_cpu_share']}.\n")
    rows = [(r["name"], r["ndcg@10"], r["recall@10"], r["recall@100"], r["mrr@10"], r["published_ndcg@10"],
             r["query_latency"]["p50_ms"], r["query_latency"]["p95_ms"]) for r in result["runs"]]
    return head + "\n" + C.markdown_table(
        ["run", "nDCG@10", "recall@10", "recall@100", "MRR@10", "published nDCG@10", "p50 ms", "p95 ms"], rows)


def parse_args() -> argparse.Namespace:
    p = C.index_args(__doc__.split("\n\n")[0], "scifact.json")
    p.add_argument("--candidates", type=int, default=300, help="chunks per retriever, and k (default 300)")
    p.add_argument("--limit", type=int, default=0, help="evaluate a random sample of N test queries (--seed)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    load = C.LoadMonitor()
    sf = C.load_scifact()
    qids = C.sample_ids(sf.queries, args.limit, args.seed)
    embedder = C.load_model(args.embedder)
    with tempfile.TemporaryDirectory(prefix="loradex-scifact-") as tmp:
        store = open_store("lancedb", tmp, embedder.dim)
        index = build_index(sf, embedder, store, args.max_tokens)
        runs = measure_runs(store, embedder, sf, qids, args.candidates)
    result = {"benchmark": "scifact_retrieval", "date": C.now_iso(), "machine": C.machine_info(),
              "settings": {"max_tokens": args.max_tokens, "candidates": args.candidates, "embedder": embedder.name,
                           "store": "lancedb", "queries": len(qids), "limit": args.limit or None, "seed": args.seed,
                           "document_markdown": "# {title}\\n\\n{text}",
                           "ndcg": "graded, gain = qrels score, discount log2(rank+1) (BEIR/trec_eval)",
                           "doc_aggregation": "max score: first occurrence of a doc_id in chunk rank order"},
              "index": index, "runs": runs, "published_ndcg@10": C.PUBLISHED_NDCG10}
    C.finish(result, load, args, render)


if __name__ == "__main__":
    main()
