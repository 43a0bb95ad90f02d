"""The Store protocol and the backend registry.

A store keeps chunks with their vectors and metadata, and answers dense and keyword searches
under filters. Backends are imported by name only when opened, so an optional backend's
library is needed only by those who use it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..types import Chunk, Filters

BACKENDS = {"lancedb": "loradex.store.lancedb:LanceStore"}


class Store(Protocol):
    def replace(self, doc_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Atomically make `chunks` the only chunks of `doc_ids`: a reader sees all old or all new."""

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Remove every chunk of these documents in one commit."""

    def search(self, *, vector: np.ndarray | None = None, text: str | None = None, k: int = 10,
               filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        """Dense search (vector, score = cosine) or keyword search (text, score = BM25), best first."""

    def chunks(self, doc_id: str) -> list[Chunk]:
        """Every chunk of one document, in order."""

    def count(self) -> int:
        """Number of chunks stored."""

    def finish(self) -> None:
        """Bring search indexes up to date after writes (may be slow; call once per ingest run)."""


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says what to do."""


def open_store(backend: str, uri: str | Path, dim: int, *, reset: bool = False) -> Store:
    """Open (or create) the store; `reset=True` drops everything it held first."""
    if backend not in BACKENDS:
        raise StoreError(f"unknown store backend {backend!r}; known: {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), cls)(uri, dim, reset=reset)
