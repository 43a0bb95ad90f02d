"""Shared helpers for the loradex benchmarks.

Locates and loads BEIR SciFact (read-only, never copied into the repository), turns an abstract into
a document through the library's own path (Markdown -> parse_bytes -> PendingDoc), and provides
rich progress bars on stderr, latency statistics, Markdown tables, machine facts and result files.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from loradex.embed import Embedder, load_embedder
from loradex.ingest.ingest import PendingDoc
from loradex.ingest.parse import parse_bytes
from loradex.types import DocMeta

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STDERR = Console(stderr=True)
PUBLISHED_NDCG10 = {"bm25": 0.665, "all-minilm-l6-v2": 0.645}  # BEIR paper; SBERT/MTEB (about)


# ---------------------------------------------------------------- data

def data_root() -> Path:
    """`$LORADEX_DATA` if set, else `../shared/data` beside the repository root."""
    env = os.environ.get("LORADEX_DATA")
    return Path(env).expanduser().resolve() if env else REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class SciFact:
    corpus: list[dict]                  # {"_id", "title", "text"}, in file order
    queries: dict[str, str]             # test query id -> claim text
    qrels: dict[str, dict[str, int]]    # test query id -> {corpus id: graded relevance}


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_scifact() -> SciFact:
    """The SciFact corpus, test queries and test qrels; exits with a clear message if absent."""
    folder = data_root() / "scifact"
    corpus_path, queries_path, qrels_path = (folder / "corpus.jsonl", folder / "queries.jsonl",
                                             folder / "qrels" / "test.tsv")
    missing = [str(p) for p in (corpus_path, queries_path, qrels_path) if not p.is_file()]
    if missing:
        sys.exit(f"SciFact data not found: missing {', '.join(missing)}\n"
                 f"Expected BEIR SciFact under {folder}; set LORADEX_DATA to the folder that holds scifact/.")
    qrels = _read_qrels(qrels_path)
    queries = {q["_id"]: q["text"] for q in _read_jsonl(queries_path) if q["_id"] in qrels}
    if len(queries) != len(qrels):
        sys.exit(f"{queries_path}: {len(qrels) - len(queries)} test queries named in {qrels_path} have no text")
    return SciFact(_read_jsonl(corpus_path), queries, qrels)


def sample_ids(ids: Iterable[str], limit: int | None, seed: int) -> list[str]:
    """All ids (sorted) or a random sample of `limit` of them drawn with `seed`."""
    ids = sorted(ids, key=lambda s: (len(s), s))
    if not limit or limit >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, limit), key=lambda s: (len(s), s))


def markdown_of(doc: dict) -> str:
    return f"# {doc['title']}\n\n{doc['text']}"


def pending_doc(doc: dict) -> PendingDoc:
    """One corpus record as the library sees a Markdown file: parsed, versioned by a SHA-256 prefix."""
    data = markdown_of(doc).encode("utf-8")
    doc_version = hashlib.sha256(data).hexdigest()[:16]
    return PendingDoc(doc["_id"], doc["_id"], doc_version, 0.0, DocMeta(), parse_bytes(data, "markdown"))


# ---------------------------------------------------------------- model

def load_model(name: str) -> Embedder:
    """The embedder by name, with the tokenizer's over-length notices (from token counting) silenced."""
    if not name.startswith("hashing"):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    return load_embedder(name)


# ---------------------------------------------------------------- timing and output

def progress_bar() -> Progress:
    """A progress bar on stderr, so stdout stays clean for the table or the JSON."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=STDERR, transient=False)


def time_each(fn: Callable[[str], object], items: Sequence[str], *, warmup: int = 5,
              bar: Progress | None = None, label: str = "") -> tuple[list[float], list[object]]:
    """Seconds of `fn(item)` for each item, after `warmup` untimed calls; also the results."""
    for item in items[:warmup]:
        fn(item)
    task = bar.add_task(label, total=len(items)) if bar else None
    seconds, results = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        seconds.append(time.perf_counter() - t0)
        if bar:
            bar.advance(task)
    return seconds, results


def latency_summary(seconds: Sequence[float]) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": int(ms.size)}


def index_args(description: str, out_name: str) -> argparse.ArgumentParser:
    """A parser with the options every SciFact index benchmark takes: --max-tokens, --seed, --embedder, --json
    and --out (default `results/<out_name>`); the benchmark adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--max-tokens", type=int, default=220, help="chunk bound in embedder tokens (default 220)")
    p.add_argument("--seed", type=int, default=0, help="seed of any sample the benchmark draws (default 0)")
    p.add_argument("--embedder", default="all-minilm-l6-v2", help="embedder name (default all-minilm-l6-v2)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the tables")
    p.add_argument("--out", default=str(RESULTS / out_name), help="where to write the JSON result")
    return p


def finish(result: dict, load: LoadMonitor, args: argparse.Namespace, render: Callable[[dict], str]) -> None:
    """Add the machine's load and wall time to `result`, write it to `args.out` as JSON, and print the tables
    (the JSON with `args.json`)."""
    result["machine_load"] = load.report()
    result["wall_seconds"] = result["machine_load"]["wall_seconds"]
    path = write_json(Path(args.out), result)
    print(json.dumps(result, indent=2) if args.json else render(result))
    STDERR.print(f"wrote {path} ({result['wall_seconds']} s)")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    import torch

    return {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(),
            "packages": {p: _package_version(p) for p in ("loradex", "lancedb", "pyarrow", "numpy", "torch",
                                                          "transformers")}}


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is inside user


def _own_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class LoadMonitor:
    """How much CPU other processes used while a benchmark ran: timings are only fair on a quiet machine."""

    def __init__(self):
        self.wall, self.own, self.busy = time.perf_counter(), _own_cpu_seconds(), _machine_busy_seconds()
        self.loadavg_start = os.getloadavg()

    def report(self) -> dict:
        wall, own, busy = time.perf_counter() - self.wall, _own_cpu_seconds() - self.own, _machine_busy_seconds()
        other = None if busy is None or self.busy is None else max(0.0, busy - self.busy - own)
        share = None if other is None else other / (wall * (os.cpu_count() or 1))
        if share is not None and share > 0.05:
            STDERR.print(f"[yellow]warning: other processes used {share:.0%} of the machine's CPU during this run; "
                         "timings are inflated, rerun on a quiet machine[/yellow]")
        return {"wall_seconds": round(wall, 1), "own_cpu_seconds": round(own, 1),
                "other_processes_cpu_seconds": None if other is None else round(other, 1),
                "other_processes_cpu_share": None if share is None else round(share, 3),
                "loadavg_start": [round(x, 2) for x in self.loadavg_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, Any]:
    """(seconds of the fastest of `repeats` calls of `fn`, what the last call returned)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def example_project(tmp: Path, engine: str | None = None):
    """A private, ingested copy of examples/insurance (documents and config) under `tmp`; `engine` replaces the
    configured engine (`local` for a benchmark of the transformers engine itself)."""
    import shutil

    from loradex.ingest.ingest import ingest
    from loradex.project import open_project

    root = Path(tmp) / "insurance"
    shutil.copytree(REPO / "examples/insurance/docs", root / "docs")
    shutil.copytree(REPO / "examples/insurance/routing", root / "routing")
    shutil.copy(REPO / "examples/insurance/loradex.yaml", root / "loradex.yaml")
    if engine:
        (root / "loradex.yaml").write_text((root / "loradex.yaml").read_text() + f"\nengine: {engine}\n")
    proj = open_project(root)
    ingest(proj)
    return proj
