"""Ingest throughput and query latency of loradex, each against the baseline a user would otherwise have.

(a) Ingest throughput: chunks/s of loradex.ingest.ingest.index_documents over the whole SciFact corpus
    (parse + chunk + embed + store.replace; each abstract is the Markdown "# {title}\\n\\n{text}"),
    with a breakdown by stage, and store.build_indexes() (BM25 index build) timed apart. The upper limit is the
    raw embedder: embedder.embed on the search_text of exactly the same chunks, in the same commit
    batches (index_documents' default of 256 chunks), on a seeded random sample of those batches
    (--raw-chunks, 0 = all; embedding all of them again would double a run that is mostly embedding).
(b) Query latency p50/p95/mean in ms for dense, bm25 and hybrid through loradex.retrieve.search with
    the default RetrievalConfig (k 5, 50 candidates per retriever), over the 300 SciFact test claims:
      - on the SciFact index from (a), real all-MiniLM-L6-v2 vectors: figures include query embedding
        (also timed alone); dense and hybrid are timed again with torch held to one intra-op thread
        (one short query gains little from a second thread, which makes the embedding stall
        whenever anything else runs on the cores);
      - on a synthetic index of --synthetic chunks (default 100,000) built without the model: random
        unit vectors (dim 384, the embedder's), texts of words drawn from SciFact's unigram distribution
        with SciFact chunk lengths, added with store.replace in --batch-rows batches, then finish().
        The queries' MiniLM vectors are precomputed, so these figures exclude query embedding.
    Baseline: brute-force numpy cosine top-50 over the same stored vectors (one matrix-vector product
    + argpartition, ids and scores only); LanceDB dense search (store.search_vector, no embedding) is reported
    as a ratio to it, and the two top-10 lists are compared as a correctness check.
Each latency figure follows 5 untimed warm-up queries.

Run:  .venv/bin/python benchmarks/throughput_latency.py [--synthetic 100000] [--raw-chunks 2000] [--json]
Data: ../shared/data/scifact beside the repository root, or $LORADEX_DATA/scifact.
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import _common as C
from loradex.config import RetrievalConfig
from loradex.embed import Embedder
from loradex.ingest.ingest import PendingDoc, index_documents
from loradex.retrieve import search
from loradex.store import Store, open_store
from loradex.types import Chunk, Source

BATCH_CHUNKS = 256      # index_documents' default commit size
CHUNKS_PER_DOC = 3      # synthetic documents; SciFact averages 2.8 chunks per abstract
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------- timing proxies

class TimedEmbedder:
    """Delegates to an embedder, recording seconds per embed() call and in total for count_tokens()."""

    def __init__(self, inner: Embedder):
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.embed_calls: list[tuple[int, float]] = []
        self.count_seconds = 0.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.inner.embed(texts)
        self.embed_calls.append((len(texts), time.perf_counter() - t0))
        return out

    def count_tokens(self, text: str) -> int:
        t0 = time.perf_counter()
        n = self.inner.count_tokens(text)
        self.count_seconds += time.perf_counter() - t0
        return n


class TimedStore:
    """Delegates to a store, adding up the seconds spent in replace()."""

    def __init__(self, inner: Store):
        self.inner = inner
        self.replace_seconds = 0.0

    def replace(self, doc_ids, chunks, vectors) -> None:
        t0 = time.perf_counter()
        self.inner.replace(doc_ids, chunks, vectors)
        self.replace_seconds += time.perf_counter() - t0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class CachedEmbedder:
    """Answers embed() from precomputed query vectors, so a search's figure excludes query embedding."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors
        self.dim = len(next(iter(vectors.values())))
        self.name = "precomputed-queries"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])

    def count_tokens(self, text: str) -> int:
        return len(text.split())


# ---------------------------------------------------------------- (a) ingest throughput

def timed_docs(corpus: Iterable[dict], clock: dict) -> Iterator[PendingDoc]:
    """Parse lazily, as index_documents consumes documents, adding parse time to clock['parse']."""
    for record in corpus:
        t0 = time.perf_counter()
        doc = C.pending_doc(record)
        clock["parse"] += time.perf_counter() - t0
        yield doc


def ingest(sf: C.SciFact, embedder: Embedder, store: Store, max_tokens: int) -> tuple[list[list[Chunk]], list, dict]:
    """index_documents over the corpus, then finish(); returns the commit batches, embed calls, figures."""
    emb, timed_store, clock, batches = TimedEmbedder(embedder), TimedStore(store), {"parse": 0.0}, []
    with C.progress_bar() as bar:
        task = bar.add_task("ingest SciFact", total=len(sf.corpus))
        t0 = time.perf_counter()
        n = index_documents(timed_store, emb, timed_docs(sf.corpus, clock), max_tokens, batch_chunks=BATCH_CHUNKS,
                            on_commit=lambda docs, chunks: batches.append(chunks),
                            progress=lambda done, total: bar.update(task, completed=done), total=len(sf.corpus))
        seconds = time.perf_counter() - t0
        store.build_indexes()
        finish = time.perf_counter() - t0 - seconds
    parts = {"parse": clock["parse"], "count_tokens (chunking)": emb.count_seconds,
             "embed": sum(s for _, s in emb.embed_calls), "store.replace": timed_store.replace_seconds}
    parts["other (chunking logic, batching)"] = seconds - sum(parts.values())
    rates = np.array([k / s for k, s in emb.embed_calls])
    figures = {"documents": len(sf.corpus), "chunks": n, "commits": len(batches), "seconds": round(seconds, 2),
               "chunks_per_second": round(n / seconds, 2), "finish_seconds": round(finish, 2),
               "breakdown_seconds": {k: round(v, 2) for k, v in parts.items()},
               "embed_share": round(parts["embed"] / seconds, 4),
               "embed_chunks_per_second_per_commit": {"min": round(float(rates.min()), 1),
                                                      "p50": round(float(np.median(rates)), 1),
                                                      "max": round(float(rates.max()), 1)}}
    return batches, emb.embed_calls, figures


def pick_batches(batches: list[list[Chunk]], want: int, seed: int) -> list[int]:
    """Indices of randomly chosen commit batches holding at least `want` chunks (all when want is 0)."""
    picked, n = [], 0
    for i in np.random.default_rng(seed).permutation(len(batches)):
        if want and n >= want:
            break
        picked.append(int(i))
        n += len(batches[i])
    return sorted(picked)


def raw_embed(embedder: Embedder, batches: list[list[Chunk]], embed_calls: list, want: int, seed: int) -> dict:
    """embedder.embed on the search_text of the same chunks, batch for batch as index_documents did."""
    picked = pick_batches(batches, want, seed)
    texts = [[c.search_text() for c in batches[i]] for i in picked]
    seconds = 0.0
    with C.progress_bar() as bar:
        task = bar.add_task("raw embedder, same batches", total=len(picked))
        for batch in texts:
            t0 = time.perf_counter()
            embedder.embed(batch)
            seconds += time.perf_counter() - t0
            bar.advance(task)
    n = sum(len(b) for b in texts)
    assert all(embed_calls[i][0] == len(batches[i]) for i in picked), "commit batches and embed calls disagree"
    in_ingest = sum(embed_calls[i][1] for i in picked)
    return {"batches": len(picked), "of_batches": len(batches), "chunks": n, "seed": seed,
            "seconds": round(seconds, 2), "chunks_per_second": round(n / seconds, 2),
            "same_batches_embed_seconds_during_ingest": round(in_ingest, 2)}


# ---------------------------------------------------------------- (b) query latency

def stored_vectors(store: Store) -> tuple[list[str], np.ndarray]:
    """Chunk ids and vectors exactly as stored (reads LanceStore.table, a backend detail)."""
    table = store.table.to_arrow().select(["chunk_id", "vector"])
    flat = table["vector"].combine_chunks().flatten().to_numpy()
    return table["chunk_id"].to_pylist(), np.ascontiguousarray(flat.reshape(table.num_rows, -1), dtype=np.float32)


def numpy_topk(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k highest cosine scores (rows and query are unit vectors), best first."""
    scores = matrix @ query
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


@dataclass
class Bench:
    """One index under test and the queries run against it."""

    label: str
    store: Store
    embedder: Embedder
    texts: list[str]
    vectors: dict[str, np.ndarray]
    embedding_included: bool


def latency_row(bench: Bench, what: str, includes: str, fn, bar) -> tuple[dict, list]:
    seconds, results = C.time_each(fn, bench.texts, bar=bar, label=f"{bench.label}: {what}")
    return {"index": bench.label, "query_path": what, "includes": includes, **C.latency_summary(seconds)}, results


def search_rows(bench: Bench, bar) -> list[dict]:
    """dense, bm25 and hybrid through loradex.retrieve.search with the default RetrievalConfig."""
    settings, emb = RetrievalConfig(), "query embedding + " if bench.embedding_included else "(embedding excluded) "
    includes = {"dense": emb + "LanceDB flat cosine scan + row decoding",
                "bm25": "LanceDB full-text (BM25) search + row decoding",
                "hybrid": emb + "both searches + RRF fusion"}
    return [latency_row(bench, f"{mode} (retrieve.search)", includes[mode],
                        lambda q, m=mode: search(bench.store, bench.embedder, q, settings, mode=m), bar)[0]
            for mode in ("dense", "bm25", "hybrid")]


def single_thread_rows(bench: Bench, bar) -> list[dict]:
    """dense and hybrid again with torch held to one intra-op thread while querying (restored after)."""
    import torch

    settings, before = RetrievalConfig(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [latency_row(bench, f"{mode} (retrieve.search), torch 1 thread",
                            "as above; query embedding with torch.set_num_threads(1)",
                            lambda q, m=mode: search(bench.store, bench.embedder, q, settings, mode=m), bar)[0]
                for mode in ("dense", "hybrid")]
    finally:
        torch.set_num_threads(before)


def baseline_rows(bench: Bench, bar) -> tuple[list[dict], dict]:
    """LanceDB dense store.search_vector against brute-force numpy over the same vectors, k = candidates."""
    k = RetrievalConfig().candidates
    ids, matrix = stored_vectors(bench.store)
    lance, lance_hits = latency_row(bench, f"dense store.search_vector(k={k})",
                                    "LanceDB flat scan + row decoding, no embedding",
                                    lambda q: bench.store.search_vector(bench.vectors[q], k), bar)
    brute, brute_hits = latency_row(bench, f"numpy brute force top-{k}",
                                    "matrix-vector product + argpartition, ids only",
                                    lambda q: numpy_topk(matrix, bench.vectors[q], k), bar)
    agree = np.mean([len({c.chunk_id for c, _ in a[:10]} & {ids[j] for j in b[:10]}) / 10
                     for a, b in zip(lance_hits, brute_hits)])
    compare = {"lance_dense_over_numpy_p50": round(lance["p50_ms"] / brute["p50_ms"], 2),
               "lance_dense_over_numpy_p95": round(lance["p95_ms"] / brute["p95_ms"], 2),
               "top10_agreement_lance_vs_numpy": round(float(agree), 4), "chunks": len(ids)}
    return [lance, brute], compare


def embed_queries(embedder: Embedder, texts: list[str], bar) -> tuple[dict, dict[str, np.ndarray]]:
    seconds, vectors = C.time_each(lambda q: embedder.embed([q])[0], texts, bar=bar, label="query embedding")
    row = {"index": "-", "query_path": f"embedder.embed([query]) ({embedder.name})", "includes": "query embedding only",
           **C.latency_summary(seconds)}
    return row, dict(zip(texts, vectors))


def measure(bench: Bench) -> tuple[list[dict], dict]:
    with C.progress_bar() as bar:
        rows = search_rows(bench, bar)
        if bench.embedding_included:
            rows += single_thread_rows(bench, bar)
        more, compare = baseline_rows(bench, bar)
    return rows + more, compare


# ---------------------------------------------------------------- synthetic index

@dataclass(frozen=True)
class Vocabulary:
    words: np.ndarray    # distinct lower-cased SciFact words
    probs: np.ndarray    # their corpus frequencies, normalised
    lengths: np.ndarray  # words per real chunk (search_text)


def vocabulary(chunks: Iterable[Chunk]) -> Vocabulary:
    counts: Counter[str] = Counter()
    lengths = []
    for c in chunks:
        words = _WORD.findall(c.search_text().lower())
        counts.update(words)
        lengths.append(len(words))
    freq = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    return Vocabulary(np.array(list(counts), dtype=object), freq / freq.sum(), np.array(lengths))


def synthetic_batch(batch: int, size: int, dim: int, vocab: Vocabulary,
                    rng: np.random.Generator) -> tuple[list[Chunk], np.ndarray]:
    """`size` chunks of sampled SciFact words (CHUNKS_PER_DOC per document) and random unit vectors."""
    lengths = rng.choice(vocab.lengths, size=size)
    words = vocab.words[rng.choice(len(vocab.words), size=int(lengths.sum()), p=vocab.probs)]
    texts = [" ".join(part) for part in np.split(words, np.cumsum(lengths)[:-1])]
    chunks = [Chunk(f"syn-{batch}-{j}", f"syn-{batch}-{j // CHUNKS_PER_DOC}", j % CHUNKS_PER_DOC, text,
                    Source(f"synthetic/{batch}/{j // CHUNKS_PER_DOC}", None, (), 0, len(text)), "synthetic", 0.0)
              for j, text in enumerate(texts)]
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    return chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_synthetic(store: Store, n: int, dim: int, batch_rows: int, vocab: Vocabulary, seed: int) -> dict:
    rng, generate, replace = np.random.default_rng(seed), 0.0, 0.0
    batches = range((n + batch_rows - 1) // batch_rows)
    with C.progress_bar() as bar:
        task = bar.add_task(f"build synthetic {n:,}", total=len(batches))
        for b in batches:
            t0 = time.perf_counter()
            chunks, vectors = synthetic_batch(b, min(batch_rows, n - b * batch_rows), dim, vocab, rng)
            t1 = time.perf_counter()
            store.replace(sorted({c.doc_id for c in chunks}), chunks, vectors)
            generate, replace = generate + t1 - t0, replace + time.perf_counter() - t1
            bar.advance(task)
        t0 = time.perf_counter()
        store.build_indexes()
        finish = time.perf_counter() - t0
    assert store.count() == n, f"synthetic index holds {store.count()} chunks, expected {n}"
    return {"chunks": n, "batches": len(batches), "batch_rows": batch_rows, "generate_seconds": round(generate, 2),
            "replace_seconds": round(replace, 2), "rows_per_second_replace": round(n / replace, 1),
            "finish_seconds": round(finish, 2)}


# ---------------------------------------------------------------- report

def render(result: dict) -> str:
    ing, raw = result["ingest"], result["raw_embedder"]
    rows = [("index_documents (parse+chunk+embed+store), whole corpus", ing["chunks"], ing["seconds"],
             ing["chunks_per_second"])]
    rows += [(f"  of which {k}", None, v, None) for k, v in ing["breakdown_seconds"].items()]
    rows += [("store.build_indexes() (BM25 index)", None, ing["finish_seconds"], None),
             (f"raw embedder.embed, same chunks ({raw['batches']}/{raw['of_batches']} batches)", raw["chunks"],
              raw["seconds"], raw["chunks_per_second"]),
             ("  same batches' embed calls inside ingest", raw["chunks"],
              raw["same_batches_embed_seconds_during_ingest"], None)]
    out = ["## Ingest throughput (SciFact)", C.markdown_table(["measure", "chunks", "seconds", "chunks/s"], rows),
           f"\ningest / raw embedder (chunks/s) = {result['ingest_over_raw']:.3f}; embedding is "
           f"{ing['embed_share']:.1%} of ingest time\n", "## Query latency",
           C.markdown_table(["index", "query path", "includes", "p50 ms", "p95 ms", "mean ms"],
                            [(r["index"], r["query_path"], r["includes"], r["p50_ms"], r["p95_ms"], r["mean_ms"])
                             for r in result["latency"]["rows"]])]
    for label, c in result["latency"]["vs_numpy"].items():
        out.append(f"\n{label}: LanceDB dense / numpy = {c['lance_dense_over_numpy_p50']}x at p50, "
                   f"{c['lance_dense_over_numpy_p95']}x at p95; top-10 agreement {c['top10_agreement_lance_vs_numpy']}")
    if "synthetic_build" in result:
        s = result["synthetic_build"]
        out.append(f"\nsynthetic build: {s['chunks']:,} chunks in {s['batches']} replace() calls, "
                   f"{s['replace_seconds']} s ({s['rows_per_second_replace']:,} rows/s) "
                   f"+ finish {s['finish_seconds']} s")
    load = result["machine_load"]
    out.append(f"\n{result['machine']['cpu_cores']} cores; other processes' CPU share during the run "
               f"{load['other_processes_cpu_share']}; wall {load['wall_seconds']} s")
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = C.index_args(__doc__.split("\n\n")[0], "throughput_latency.json")  # --seed: the raw sample, synthetic data
    p.add_argument("--raw-chunks", type=int, default=2000, help="chunks re-embedded raw, whole batches (0 = all)")
    p.add_argument("--synthetic", type=int, default=100_000, help="chunks in the synthetic index (0 = skip)")
    p.add_argument("--batch-rows", type=int, default=5000, help="rows per store.replace when building it")
    return p.parse_args()


def run_synthetic(args, tmp: str, vocab: Vocabulary, texts: list[str], vectors: dict) -> tuple[dict, list, dict]:
    dim = len(next(iter(vectors.values())))  # 384 for all-MiniLM-L6-v2: the queries' vectors must fit
    store = open_store("lancedb", Path(tmp) / "synthetic", dim)
    build = build_synthetic(store, args.synthetic, dim, args.batch_rows, vocab, args.seed)
    bench = Bench(f"synthetic {args.synthetic:,}", store, CachedEmbedder(vectors), texts, vectors, False)
    rows, compare = measure(bench)
    return build, rows, compare


def run_scifact(args, tmp: str, sf: C.SciFact, embedder: Embedder,
                texts: list[str]) -> tuple[dict, list[list[Chunk]], dict[str, np.ndarray]]:
    """(a) on the whole corpus, then (b) on the index it built; returns figures, commit batches, query vectors."""
    store = open_store("lancedb", Path(tmp) / "scifact", embedder.dim)
    batches, calls, ingest_figures = ingest(sf, embedder, store, args.max_tokens)
    raw = raw_embed(embedder, batches, calls, args.raw_chunks, args.seed)
    with C.progress_bar() as bar:
        embed_row, vectors = embed_queries(embedder, texts, bar)
    rows, compare = measure(Bench(f"SciFact {ingest_figures['chunks']:,}", store, embedder, texts, vectors, True))
    figures = {"ingest": ingest_figures, "raw_embedder": raw,
               "ingest_over_raw": round(ingest_figures["chunks_per_second"] / raw["chunks_per_second"], 3),
               "latency": {"rows": [embed_row] + rows, "vs_numpy": {rows[0]["index"]: compare}}}
    return figures, batches, vectors


def main() -> None:
    args = parse_args()
    load = C.LoadMonitor()
    sf = C.load_scifact()
    texts = [sf.queries[q] for q in C.sample_ids(sf.queries, None, args.seed)]
    embedder = C.load_model(args.embedder)
    result = {"benchmark": "throughput_latency", "date": C.now_iso(), "machine": C.machine_info()}
    with tempfile.TemporaryDirectory(prefix="loradex-throughput-") as tmp:
        figures, batches, vectors = run_scifact(args, tmp, sf, embedder, texts)
        result.update(figures)
        if args.synthetic:
            vocab = vocabulary(c for b in batches for c in b)
            result["synthetic_build"], rows, compare = run_synthetic(args, tmp, vocab, texts, vectors)
            result["latency"]["rows"] += rows
            result["latency"]["vs_numpy"][rows[0]["index"]] = compare
    result["settings"] = {"embedder": embedder.name, "max_tokens": args.max_tokens, "batch_chunks": BATCH_CHUNKS,
                          "raw_chunks": args.raw_chunks, "synthetic": args.synthetic, "batch_rows": args.batch_rows,
                          "seed": args.seed, "queries": len(texts), "warmup_queries": 5,
                          "retrieval": RetrievalConfig().model_dump()}
    C.finish(result, load, args, render)


if __name__ == "__main__":
    main()
