"""The Store protocol: chunks with their vectors and metadata, searched dense or by keyword under filters.

Backends are named in `loradex.backends.STORES` and imported only when opened, so an optional backend's
library is needed only by those who use it. Every backend passes `tests/contract/test_store.py`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import StoreError
from ..types import Chunk, Filters

__all__ = ["Store", "StoreError", "open_store"]


class Store(Protocol):
    dim: int

    def replace(self, doc_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Atomically make `chunks` (with `vectors`, shape (len(chunks), dim), float32) the only chunks of
        `doc_ids`: a concurrent reader sees all the old chunks of those documents or all the new ones."""

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Remove every chunk of these documents in one commit (unknown ids are ignored)."""

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        """The `k` chunks nearest to `vector` (shape (dim,)) under `filters`, best first, each with its cosine
        similarity in [-1, 1]. Raises StoreError when `vector` has another dimension than the index."""

    def search_text(self, text: str, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        """The `k` best keyword matches for `text` under `filters`, best first, each with its keyword score
        (>= 0, unbounded: BM25 in `lancedb` and `memory`, PostgreSQL's ts_rank in `pgvector`); [] for a blank
        text or an empty store. `text` is matched as words, never as a query language, so quotes and operators
        in it are plain characters."""

    def chunks(self, doc_id: str) -> list[Chunk]:
        """Every chunk of one document, in order (ordinal ascending); [] for an unknown id."""

    def export(self, doc_id: str) -> tuple[list[Chunk], np.ndarray]:
        """Every chunk of one document in order, with its vectors, shape (n, dim) float32, as stored (a backend
        may keep the unit vector of what `replace` was given); `([], (0, dim))` for an unknown id. For copying
        an index into another store without embedding again (`loradex migrate`)."""

    def count(self) -> int:
        """Number of chunks stored."""

    def build_indexes(self) -> None:
        """Bring search indexes up to date after writes (may be slow; call once per ingest run). Searches are
        complete without it, only slower."""


def open_store(backend: str, uri: str | Path, dim: int, *, reset: bool = False,
               password_env: str | None = None) -> Store:
    """Open (or create) the store of `backend` at `uri` for `dim`-dimensional vectors; `reset=True` drops
    everything it held first; `password_env` names the environment variable holding a server's password
    (`pgvector`). Raises StoreError for an unknown backend or a server that cannot be reached, IndexMismatch
    when the index at `uri` holds vectors of another dimension."""
    from ..backends import STORES, load

    cls = load(STORES, backend, "store backend", StoreError)
    return cls(uri, dim, reset=reset, **({"password_env": password_env} if password_env else {}))
