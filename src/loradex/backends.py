"""Names of the pluggable backends and where each lives, as `module:attribute` import paths.

One table per seam (stores, engines, embedders); a backend's module, and so its heavy libraries, is imported
only when that backend is chosen. A new backend is one line here plus a module that passes its seam's
contract suite in `tests/contract/`.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, LoradexError

__all__ = ["EMBEDDERS", "ENGINES", "STORES", "load"]

STORES = {
    "lancedb": "loradex.store.lancedb:LanceStore",
    "memory": "loradex.testing:MemoryStore",
    "pgvector": "loradex.store.pgvector:PgVectorStore",
}
ENGINES = {  # each names a function (project) -> Engine, so an engine reads its own settings
    "local": "loradex.engine.local:from_project",
    "ort": "loradex.engine.ort:from_project",
    "echo": "loradex.engine.echo:from_project",
    "vllm": "loradex.engine.vllm:from_project",
}
EMBEDDERS = {
    "all-minilm-l6-v2": "loradex.embed:packaged_minilm",
    "sentence-transformers/all-MiniLM-L6-v2": "loradex.embed:packaged_minilm",
    "hashing": "loradex.embed:HashingEmbedder",
}


def load(table: dict[str, str], name: str, what: str, error: type[LoradexError] = ConfigError) -> Any:
    """The object `table[name]` names, imported now. Raises `error`, naming the known choices, when `name` is
    not in `table`."""
    if name not in table:
        raise error(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}")
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)
