"""The store on PostgreSQL: pgvector for the dense half, PostgreSQL full-text search for the keyword half.

One table, `loradex_chunks`, holds each chunk's text, metadata and vector (`vector(dim)`), with a stored
`tsvector` of its search text (the 'english' configuration: stemmed, stop words dropped). `build_indexes`
creates an HNSW index on the vectors (cosine, `vector_cosine_ops`; Malkov and Yashunin, "Efficient and robust
approximate nearest neighbor search using Hierarchical Navigable Small World graphs", TPAMI 2020), a GIN index
on the tsvector and a b-tree on the document id; searches are complete without them (exact scans), as the
Store protocol asks. Filtered dense searches use pgvector's iterative index scans (`hnsw.iterative_scan =
strict_order`, pgvector >= 0.8), so a filter that rejects most neighbours still returns k rows in order.

Keyword ranking is PostgreSQL's `ts_rank` with normalisation 1 (the rank divided by 1 + the log of the
document's length), not BM25: scores are >= 0 but on another scale than the embedded store's BM25, and there
is no IDF, so a rare word does not weigh more than a common one. Hybrid search fuses ranks (RRF), not scores,
so the scale does not reach the answer; the ranking does, and `benchmarks/` measures what it costs. The query
is the text's words (`\\w+`, at most `MAX_QUERY_WORDS`), each passed as a bound parameter to
`plainto_tsquery` and OR-ed, so quotes and operators are plain characters and any word can match.

A changed document's chunks are swapped in one transaction (DELETE, then COPY), so under PostgreSQL's default
READ COMMITTED a concurrent search sees the old version or the new. Every value reaches SQL as a bound
parameter. The password comes from the environment variable the config names (`store.password_env`), never
from the URL in the file, and never appears in an error: errors name the host, port and database only.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import IndexMismatch, StoreError
from ..types import Chunk, DocMeta, Filters, Source

TABLE = "loradex_chunks"
MAX_QUERY_WORDS = 64
COLUMNS = ("chunk_id", "doc_id", "ordinal", "text", "path", "page", "heading_path", "start_char", "end_char",
           "doc_version", "doc_mtime", "domain", "tags", "groups", "title")
WRITTEN = (*COLUMNS, "search_text", "embedding")  # what `replace` writes, in `_rows` order
_WORD = re.compile(r"\w+")


def where_clause(f: Filters) -> tuple[str, list[Any]]:
    """SQL filter (`TRUE` when none) and its bound parameters, from search filters."""
    parts: list[str] = ["TRUE"]
    params: list[Any] = []
    if f.domain is not None:
        parts.append("domain = %s")
        params.append(f.domain)
    if f.tags:
        parts.append("tags && %s::text[]")
        params.append(list(f.tags))
    if f.groups is not None:
        parts.append("(cardinality(groups) = 0 OR groups && %s::text[])")
        params.append(list(f.groups))
    if f.doc_ids:
        parts.append("doc_id = ANY(%s::text[])")
        params.append(list(f.doc_ids))
    if f.title is not None:
        parts.append("strpos(lower(title), lower(%s)) > 0")
        params.append(f.title)
    return " AND ".join(parts), params


def describe(conninfo: str) -> str:
    """'host H, port P, database D' of a connection string, without its user's password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(conninfo)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by the caller
        return "a malformed connection URL"
    return f"host {d.get('host') or 'localhost'}, port {d.get('port') or 5432}, database {d.get('dbname') or '?'}"


def _schema(dim: int) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        chunk_id text PRIMARY KEY, doc_id text NOT NULL, ordinal integer NOT NULL, text text NOT NULL,
        search_text text NOT NULL, path text NOT NULL, page integer, heading_path jsonb NOT NULL,
        start_char bigint NOT NULL, end_char bigint NOT NULL, doc_version text NOT NULL,
        doc_mtime double precision NOT NULL, domain text, tags text[] NOT NULL, groups text[] NOT NULL, title text,
        embedding vector({dim}) NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED)"""


class PgVectorStore:
    """The PostgreSQL store (see the module docstring). `uri` is a libpq URL (`postgresql://user@host:5432/db`)
    without a password; `password_env` names the environment variable that holds it. Raises StoreError, naming
    the server and what to check, when it cannot connect or pgvector is missing, and IndexMismatch when the
    table holds vectors of another dimension."""

    persistent = True

    def __init__(self, uri: str | os.PathLike, dim: int, *, reset: bool = False, password_env: str | None = None):
        self.dim, self.uri = dim, str(uri)
        self.where = describe(self.uri)
        kwargs: dict[str, Any] = {"connect_timeout": 10}
        if password_env:
            if password_env not in os.environ:
                raise StoreError(f"store.password_env names {password_env!r}, which is not set: export it with "
                                 f"the password of the PostgreSQL user ({self.where})")
            kwargs["password"] = os.environ[password_env]
        self._kwargs = kwargs
        with self._connect() as conn:
            self._prepare(conn, reset)
        self._local = threading.local()
        self._open: list[Any] = []  # every thread's connection, closed by `close` or when the store is collected
        self._open_lock = threading.Lock()
        weakref.finalize(self, _close_all, self._open)

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """This thread's connection (one per thread: a search never sees another thread's open transaction)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            from pgvector.psycopg import register_vector

            conn = self._connect()
            register_vector(conn)
            self._local.conn = conn
            with self._open_lock:
                self._open[:] = [c for c in self._open if not c.closed] + [conn]
        yield conn

    def _connect(self):
        import psycopg

        try:
            return psycopg.connect(self.uri, autocommit=True, **self._kwargs)
        except psycopg.Error as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StoreError(f"cannot connect to PostgreSQL ({self.where}): {reason}. Check that the server runs "
                             "and accepts connections there, the URL in loradex.yaml (store.uri) and the password "
                             "in the variable store.password_env names") from None

    def _prepare(self, conn, reset: bool) -> None:
        import psycopg

        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error:
            raise StoreError(f"the pgvector extension is not installed in the database ({self.where}): ask its "
                             "administrator to run CREATE EXTENSION vector") from None
        if reset:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        have = conn.execute("SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                            "AND attname = 'embedding'", (TABLE,)).fetchone()
        if have is not None and have[0] != self.dim:
            raise IndexMismatch(f"the index holds {have[0]}-d vectors but the embedder makes {self.dim}-d ones: "
                                "run `loradex ingest --rebuild` after changing the embedder")
        conn.execute(_schema(self.dim))

    def close(self) -> None:
        """Close every connection this store opened (a later call opens new ones)."""
        with self._open_lock:
            _close_all(self._open)

    # ---- writes ---------------------------------------------------------------------------------------
    def _rows(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[tuple]:
        """One tuple a chunk, its values in `WRITTEN` order."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):  # else a (1, 2*dim) array would pass as two vectors
            raise StoreError(f"expected vectors of shape ({len(chunks)}, {self.dim}), got {vectors.shape}")
        return [(c.chunk_id, c.doc_id, c.ordinal, c.text, c.source.path, c.source.page,
                 json.dumps(list(c.source.heading_path)), c.source.start, c.source.end, c.doc_version, c.doc_mtime,
                 c.meta.domain, list(c.meta.tags), list(c.meta.groups), c.meta.title, c.search_text(), v)
                for c, v in zip(chunks, vectors)]

    def replace(self, doc_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        if not doc_ids:
            return
        rows = self._rows(chunks, vectors)
        with self._conn() as conn, conn.transaction():
            conn.execute(f"DELETE FROM {TABLE} WHERE doc_id = ANY(%s::text[])", (list(doc_ids),))
            with conn.cursor().copy(f"COPY {TABLE} ({', '.join(WRITTEN)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def delete(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            with self._conn() as conn:
                conn.execute(f"DELETE FROM {TABLE} WHERE doc_id = ANY(%s::text[])", (list(doc_ids),))

    def build_indexes(self) -> None:
        with self._conn() as conn:
            conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_doc ON {TABLE} (doc_id)")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_tsv ON {TABLE} USING gin (tsv)")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_hnsw ON {TABLE} USING hnsw "
                         "(embedding vector_cosine_ops)")
            conn.execute(f"ANALYZE {TABLE}")

    # ---- reads ----------------------------------------------------------------------------------------
    def search_vector(self, vector: np.ndarray, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise StoreError(f"the query vector has {vector.shape[0]} dimensions, the index {self.dim}")
        where, params = where_clause(filters)
        sql = (f"SELECT {', '.join(COLUMNS)}, embedding <=> %s AS distance FROM {TABLE} WHERE {where} "
               "ORDER BY embedding <=> %s LIMIT %s")
        with self._conn() as conn, conn.transaction():
            conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(40, 2 * k), 1000):d}")
            rows = conn.execute(sql, [vector, *params, vector, k]).fetchall()
        # a zero vector has no direction: pgvector gives NaN, the protocol a cosine of 0
        return [(_chunk(r), 0.0 if math.isnan(r[-1]) else 1.0 - float(r[-1])) for r in rows]

    def search_text(self, text: str, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:MAX_QUERY_WORDS]
        if not words:
            return []
        query = " || ".join(["plainto_tsquery('english', %s)"] * len(words))
        where, params = where_clause(filters)
        sql = (f"SELECT {', '.join(COLUMNS)}, ts_rank(tsv, q, 1) AS score FROM {TABLE}, ({'SELECT ' + query} AS q) "
               f"AS query WHERE numnode(q) > 0 AND tsv @@ q AND {where} ORDER BY score DESC, chunk_id LIMIT %s")
        with self._conn() as conn:
            rows = conn.execute(sql, [*words, *params, k]).fetchall()
        return [(_chunk(r), float(r[-1])) for r in rows]

    def _doc_rows(self, doc_id: str, extra: str = "") -> list:
        """One document's rows (`COLUMNS`, then `extra` columns), in ordinal order."""
        with self._conn() as conn:
            return conn.execute(f"SELECT {', '.join(COLUMNS)}{extra} FROM {TABLE} WHERE doc_id = %s "
                                "ORDER BY ordinal", (doc_id,)).fetchall()

    def chunks(self, doc_id: str) -> list[Chunk]:
        return [_chunk(r) for r in self._doc_rows(doc_id)]

    def export(self, doc_id: str) -> tuple[list[Chunk], np.ndarray]:
        rows = self._doc_rows(doc_id, ", embedding")
        vectors = np.array([r[-1].to_numpy() if hasattr(r[-1], "to_numpy") else r[-1] for r in rows],
                           dtype=np.float32).reshape(len(rows), self.dim)
        return [_chunk(r) for r in rows], vectors

    def count(self) -> int:
        with self._conn() as conn:
            row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return int(row[0]) if row else 0


def _close_all(conns: list) -> None:
    for c in conns:
        c.close()
    conns.clear()


def _chunk(r: Sequence) -> Chunk:
    (chunk_id, doc_id, ordinal, text, path, page, heading, start, end, version, mtime, domain, tags, groups,
     title) = r[: len(COLUMNS)]
    heading = heading if isinstance(heading, list) else json.loads(heading)
    meta = DocMeta(domain, tuple(tags or ()), tuple(groups or ()), title)
    return Chunk(chunk_id, doc_id, ordinal, text, Source(path, page, tuple(heading), start, end), version, mtime, meta)
