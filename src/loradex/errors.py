"""Every error loradex raises on purpose, as one tree. A leaf module: it imports nothing from loradex.

    LoradexError                  the root: a faulty input or state the message tells the user how to fix
    ├── ConfigError               loradex.yaml is missing or invalid (names the file and the field)
    ├── ParseError                a file cannot be parsed (ingest reports it and goes on)
    ├── DataError                 training data is malformed (names file:line and the field)
    ├── ModelNotFound             a base model name resolves to nothing loadable
    ├── EmbedderNotFound          an embedder name resolves to nothing loadable
    ├── StoreError                the store cannot be opened or used
    │   └── IndexMismatch         the index was built by another embedder (other name or dimension)
    ├── QueryError                a search or answer request that cannot be run (empty query, unknown mode)
    ├── RouterError               the router cannot be fitted or loaded
    ├── AdapterError              an adapter was refused or not found
    ├── EngineError               the engine cannot serve a request (no chat template, adapter not loaded)
    └── QueueFull                 the server's generation queue is at its limit; retry shortly

A face (the CLI, the server) catches `LoradexError` once and shows its message; anything else is a bug and
keeps its traceback. The server maps classes to HTTP statuses in one table (`loradex.server.errors`).
"""
from __future__ import annotations

__all__ = [
    "AdapterError", "ConfigError", "DataError", "EmbedderNotFound", "EngineError", "IndexMismatch",
    "LoradexError", "ModelNotFound", "ParseError", "QueryError", "QueueFull", "RouterError", "StoreError",
]


class LoradexError(Exception):
    """Root of loradex's own errors: the message says what went wrong and what to do next."""


class ConfigError(LoradexError):
    """The project file is missing or invalid; the message names the file and the field."""


class ParseError(LoradexError):
    """A file cannot be parsed; the message gives a reason a person can act on."""


class DataError(LoradexError):
    """Training data cannot be used; the message names the file, the line and the field."""


class ModelNotFound(LoradexError):
    """No loadable model under that name; the message lists what was tried."""


class EmbedderNotFound(LoradexError):
    """No embedder could be loaded under that name; the message says what was tried."""


class StoreError(LoradexError):
    """The store cannot be opened or used; the message says what to do."""


class IndexMismatch(StoreError):
    """The index was built with another embedder (name or vector dimension): rebuild it."""


class QueryError(LoradexError):
    """A query that cannot be run as given (empty, unknown retrieval mode, unknown domain)."""


class InputTooLong(QueryError):
    """The question and the client's system message alone exceed the input limit (`server.max_input_chars`);
    the message gives the size and the limit. The server answers it with 413 `context_length_exceeded`."""


class RouterError(LoradexError):
    """The router cannot be fitted or loaded; the message says what to add or fix."""


class AdapterError(LoradexError):
    """An adapter was refused or not found; the message says why and what to do."""


class EngineError(LoradexError):
    """The engine cannot serve this request (a model without a chat template, an adapter not loaded)."""

    @classmethod
    def of(cls, e: BaseException, where: str = "") -> LoradexError:
        """`e` when it is loradex's own error, else an EngineError "generation failed{where}: Type: message" with
        `e` as its cause, so every failed request gets an error body that says what failed."""
        if isinstance(e, LoradexError):
            return e
        error = cls(f"generation failed{where}: {type(e).__name__}: {e}")
        error.__cause__ = e
        return error


class QueueFull(LoradexError):
    """The generation queue is at its limit; retry after a moment."""
