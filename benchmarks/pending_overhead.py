"""What committing embeddings as they are computed costs ingest (`loradex.ingest.pending`).

Ingest keeps each slice of 256 vectors in `.loradex/pending.sqlite` (one transaction) before embedding the next,
so an interrupted ingest resumes, and drops them once the chunks are stored. This measures that bookkeeping on
its own, beside the embedding it protects: SciFact abstracts (`../shared/data`) embedded with all-MiniLM-L6-v2
(the baseline: what ingest spends anyway), then the same vectors through `PendingEmbeddings` with an embedder
that returns them at once (key hashing, SQLite insert, read-back lookup, and `forget`), and the resume path
(every vector read back). Ratios from one run.

    .venv/bin/python benchmarks/pending_overhead.py [--texts 2000] [--json]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C
from loradex.ingest.pending import PendingEmbeddings


class _Replay:
    """An embedder that returns precomputed vectors: PendingEmbeddings' own cost, with no model time."""

    def __init__(self, name: str, vectors: dict[str, np.ndarray]):
        self.name, self.vectors = name, vectors
        self.dim = len(next(iter(vectors.values())))

    def embed(self, texts):
        return np.stack([self.vectors[t] for t in texts])

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=2000, help="SciFact abstracts embedded (default 2000)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--out", default=str(C.RESULTS / "pending_overhead.json"), help="where to write the JSON result")
    args = p.parse_args()
    load = C.LoadMonitor()
    texts = [C.markdown_of(d) for d in C.load_scifact().corpus[: args.texts]]
    model = C.load_model("all-minilm-l6-v2")
    t0 = time.perf_counter()
    vectors = model.embed(texts)
    embed_s = time.perf_counter() - t0
    replay = _Replay(model.name, dict(zip(texts, vectors)))
    with tempfile.TemporaryDirectory() as tmp:
        pending = PendingEmbeddings(Path(tmp) / "pending.sqlite", replay)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        kept = pending.embed(texts)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = pending.embed(texts)  # an interrupted run's successor: every vector read back
        resume_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pending.forget(texts)
        forget_s = time.perf_counter() - t0
        assert np.array_equal(kept, vectors) and np.array_equal(again, vectors) and len(pending) == 0
        pending.close()
    overhead = write_s + forget_s
    result = {"texts": len(texts), "embed_seconds": round(embed_s, 3), "pending_write_seconds": round(write_s, 3),
              "pending_forget_seconds": round(forget_s, 3), "resume_read_seconds": round(resume_s, 3),
              "overhead_vs_embedding": round(overhead / embed_s, 6),
              "resume_vs_embedding": round(resume_s / embed_s, 6),
              "machine": C.machine_info(), "generated_at": C.now_iso()}

    def render(r: dict) -> str:
        rows = [("embed (all-MiniLM-L6-v2): the baseline", r["embed_seconds"], "100 %"),
                ("pending: write a slice at a time, then forget",
                 round(r["pending_write_seconds"] + r["pending_forget_seconds"], 3),
                 f"{100 * r['overhead_vs_embedding']:.2f} %"),
                ("resume: every vector read back instead of embedded", r["resume_read_seconds"],
                 f"{100 * r['resume_vs_embedding']:.2f} %")]
        return (f"{r['texts']} SciFact abstracts\n"
                + C.markdown_table(["step", "seconds", "share of the embedding time"], rows))

    C.finish(result, load, args, render)


if __name__ == "__main__":
    main()
