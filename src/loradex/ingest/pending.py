"""Embeddings of chunks not yet in the index, kept on disk as they are computed, so an interrupted ingest resumes.

Embedding is the slow part of ingest (about 2 hours for a 300 MB text file on 2 CPU cores), and a document's
chunks reach the store in one commit, so that a search sees its old version or its new one, never a mix. Without
this, killing an ingest midway through a large document lost all of its embeddings. `PendingEmbeddings` embeds in
slices of `slice_size` texts and commits each slice's vectors to a SQLite file (`.loradex/pending.sqlite`, one
transaction a slice) before the next; the next run reads back what is there and embeds only the rest. Rows are
keyed by the embedder's name and the SHA-256 of the text, so a changed document or another embedder never reuses
a vector, and `forget` drops the rows of texts once their chunks are stored.
"""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..embed import Embedder

__all__ = ["PendingEmbeddings"]


def _key(name: str, text: str) -> str:
    return hashlib.sha256(f"{name}\0{text}".encode()).hexdigest()


class PendingEmbeddings:
    """Vectors of texts embedded but not yet stored, in the SQLite file `path`, for `embedder`."""

    def __init__(self, path: Path, embedder: Embedder, slice_size: int = 256):
        self.path, self.embedder, self.slice_size = Path(path), embedder, slice_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._db.commit()
        self.reused = 0  # vectors read back rather than computed, in this object's life

    def embed(self, texts: Sequence[str], on_slice: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit-norm float32 vectors, shape (len(texts), embedder.dim): read back where a previous run left
        them, else computed a slice at a time and committed before the next slice. `on_slice(n)` is called with
        the number of texts each slice settled (for progress)."""
        name, dim = self.embedder.name, self.embedder.dim
        keys = [_key(name, t) for t in texts]
        out = np.zeros((len(texts), dim), dtype=np.float32)
        known = self._read(keys)
        todo = []
        for i, k in enumerate(keys):
            if k in known and known[k].shape == (dim,):
                out[i] = known[k]
            else:
                todo.append(i)
        self.reused += len(texts) - len(todo)
        for s in range(0, len(todo), self.slice_size):
            idx = todo[s : s + self.slice_size]
            vectors = np.asarray(self.embedder.embed([texts[i] for i in idx]), dtype=np.float32)
            with self._db:  # one transaction: the slice is on disk whole, or not at all
                self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                     [(keys[i], v.tobytes()) for i, v in zip(idx, vectors)])
            out[idx] = vectors
            if on_slice:
                on_slice(len(idx))
        return out

    def _read(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for s in range(0, len(unique), 500):  # under SQLite's limit on bound parameters
            part = unique[s : s + 500]
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})",
                                    part).fetchall()
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return found

    def forget(self, texts: Sequence[str]) -> None:
        """Drop the rows of `texts` (their chunks are in the store now)."""
        keys = [(_key(self.embedder.name, t),) for t in texts]
        with self._db:
            self._db.executemany("DELETE FROM vectors WHERE key = ?", keys)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        self._db.close()
