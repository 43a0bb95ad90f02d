"""`loradex migrate`: copy a project's index into another store (PostgreSQL + pgvector) without embedding again.

Documents are copied in batches of about `batch_chunks` chunks; each batch is one `Store.replace` (one
transaction on PostgreSQL), so a copy stopped at any point holds whole documents only. After each batch the
documents done (with their versions) are written to `.loradex/migrate/<destination>.json`, atomically; a second
run skips them, so an interrupted copy resumes where it stopped (a kill between a batch's commit and the state
write copies that batch again, which `replace` makes harmless). At the end the destination is checked: the same
chunk ids for every document, and the same total count.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import write_text
from .errors import StoreError

if TYPE_CHECKING:
    from .project import Project
    from .store import Store

__all__ = ["MigrateReport", "migrate"]


@dataclass
class MigrateReport:
    """What a migration did: documents and chunks copied now, documents an earlier run had copied, seconds."""

    destination: str
    documents: int = 0
    copied_documents: int = 0
    copied_chunks: int = 0
    resumed_documents: int = 0
    chunks: int = 0
    seconds: float = 0.0
    verified: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def state_path(project: Project, uri: str) -> Path:
    """Where the progress of a copy to `uri` is kept (the URL hashed: it names no host or user on disk)."""
    return project.state_dir / "migrate" / (hashlib.sha256(uri.encode()).hexdigest()[:16] + ".json")


def _load_state(path: Path, reset: bool) -> dict[str, str]:
    if reset or not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["done"])
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable progress: copy everything again (replace is idempotent)


def _batches(todo: list[tuple[str, int]], batch_chunks: int) -> list[list[str]]:
    out: list[list[str]] = []
    size = 0
    for doc_id, n in todo:
        if not out or size + n > batch_chunks:
            out.append([])
            size = 0
        out[-1].append(doc_id)
        size += n
    return out


def migrate(project: Project, uri: str, *, backend: str = "pgvector", password_env: str | None = None,
            batch_chunks: int = 512, reset: bool = False,
            progress: Callable[..., None] | None = None) -> MigrateReport:
    """Copy every document of `project`'s store into the `backend` store at `uri` (see the module docstring).
    `reset` empties the destination first and forgets earlier progress; `progress(done, total)` gets chunk
    counts. Raises StoreError when the destination cannot be opened or holds another index's vectors, and
    ValueError for `batch_chunks` < 1."""
    from .store import open_store

    if batch_chunks < 1:
        raise ValueError("batch_chunks must be at least 1")
    t0 = time.perf_counter()
    source = project.store
    dest = open_store(backend, uri, source.dim, reset=reset, password_env=password_env)
    documents = project.load_manifest()["documents"]
    report = MigrateReport(getattr(dest, "where", backend), documents=len(documents))
    path = state_path(project, uri)
    done = _load_state(path, reset)
    versions = {d: str(m.get("version", "")) for d, m in documents.items()}
    todo = [(d, int(m.get("chunks", 1) or 1)) for d, m in sorted(documents.items()) if done.get(d) != versions[d]]
    report.resumed_documents = len(documents) - len(todo)
    total = sum(int(m.get("chunks", 0) or 0) for m in documents.values())
    copied = total - sum(n for _, n in todo)
    for batch in _batches(todo, batch_chunks):
        chunks, vectors = [], []
        for doc_id in batch:
            cs, vs = source.export(doc_id)
            chunks += cs
            vectors.append(vs)
        dest.replace(batch, chunks, np.concatenate(vectors) if vectors else np.zeros((0, source.dim), np.float32))
        done.update({d: versions[d] for d in batch})
        write_text(path, json.dumps({"destination": report.destination, "done": done}))
        report.copied_documents += len(batch)
        report.copied_chunks += len(chunks)
        copied += len(chunks)
        if progress:
            progress(copied, total)
    dest.build_indexes()
    _verify(source, dest, sorted(documents), report)
    report.seconds = time.perf_counter() - t0
    return report


def _verify(source: Store, dest: Store, doc_ids: list[str], report: MigrateReport) -> None:
    """Set `report.chunks` and `report.verified`; raises StoreError naming the first differences."""
    problems = []
    for doc_id in doc_ids:
        want = [c.chunk_id for c in source.chunks(doc_id)]
        got = [c.chunk_id for c in dest.chunks(doc_id)]
        if want != got:
            problems.append(f"{doc_id}: {len(got)} chunks in the destination, {len(want)} in the source")
    report.chunks, expected = dest.count(), source.count()
    if report.chunks != expected:
        problems.append(f"the destination holds {report.chunks} chunks, the source {expected}: it holds documents "
                        "the project no longer has; run again with --reset")
    if problems:
        raise StoreError("the copy does not match the source: " + "; ".join(problems[:5]))
    report.verified = True
