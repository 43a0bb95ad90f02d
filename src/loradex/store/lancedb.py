"""Embedded default store: one LanceDB table with vectors, a BM25 full-text index and metadata columns.

Each write is one Lance commit (a new table version), so a document's chunks are replaced
atomically with `merge_insert(...).when_not_matched_by_source_delete(...)`: a concurrent reader
sees the previous version or the new one. Rows not yet in the full-text index are still searched
(flat), so results are complete before `build_indexes()` rebuilds the index. Dense scores are cosine
similarities (1 - LanceDB's cosine distance); keyword scores are LanceDB's BM25.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import IndexMismatch, StoreError
from ..types import Chunk, DocMeta, Filters, Source

TABLE = "chunks"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def where_clause(f: Filters) -> str | None:
    """SQL filter for LanceDB (DataFusion) from search filters; values are quoted, never interpolated raw."""
    parts = []
    if f.domain is not None:
        parts.append(f"domain = {_quote(f.domain)}")
    if f.tags:
        parts.append(f"array_has_any(tags, {_list(f.tags)})")
    if f.groups is not None:
        public = "array_length(groups) = 0"
        parts.append(f"({public} OR array_has_any(groups, {_list(f.groups)}))" if f.groups else public)
    if f.doc_ids:
        parts.append(f"doc_id IN ({', '.join(_quote(d) for d in f.doc_ids)})")
    if f.title is not None:
        parts.append(f"strpos(lower(title), lower({_quote(f.title)})) > 0")
    return " AND ".join(parts) or None


class LanceStore:
    """The embedded store (see the module docstring); `uri` is a folder, created when missing."""

    def __init__(self, uri: str | Path, dim: int, *, reset: bool = False):
        import lancedb

        self.dim = dim
        self.db = lancedb.connect(str(uri))
        if reset:
            self.db.drop_table(TABLE, ignore_missing=True)  # type: ignore[call-arg]
        self.schema = pa.schema([
            ("chunk_id", pa.string()), ("doc_id", pa.string()), ("ordinal", pa.int32()),
            ("text", pa.string()), ("search_text", pa.string()),
            ("path", pa.string()), ("page", pa.int32()), ("heading_path", pa.string()),
            ("start", pa.int64()), ("end", pa.int64()),
            ("doc_version", pa.string()), ("doc_mtime", pa.float64()),
            ("domain", pa.string()), ("tags", pa.list_(pa.string())), ("groups", pa.list_(pa.string())),
            ("title", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
        ])
        if TABLE in self.db.list_tables().tables:
            self.table = self.db.open_table(TABLE)
            have = self.table.schema.field("vector").type.list_size
            if have != dim:
                raise IndexMismatch(f"the index holds {have}-d vectors but the embedder makes {dim}-d ones: "
                                 "run `loradex ingest --rebuild` after changing the embedder")
            if "title" not in self.table.schema.names:  # an index written before documents had titles
                self.table.add_columns({"title": "CAST(NULL AS STRING)"})
        else:
            self.table = self.db.create_table(TABLE, schema=self.schema)

    def _rows(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in self.schema.names if name != "vector"}
        for c in chunks:
            s = c.source
            for key, value in (("chunk_id", c.chunk_id), ("doc_id", c.doc_id), ("ordinal", c.ordinal),
                               ("text", c.text), ("search_text", c.search_text()), ("path", s.path),
                               ("page", s.page), ("heading_path", json.dumps(list(s.heading_path))),
                               ("start", s.start), ("end", s.end), ("doc_version", c.doc_version),
                               ("doc_mtime", c.doc_mtime), ("domain", c.meta.domain),
                               ("tags", list(c.meta.tags)), ("groups", list(c.meta.groups)),
                               ("title", c.meta.title)):
                cols[key].append(value)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):  # else a (1, 2*dim) array would pass as two vectors
            raise StoreError(f"expected vectors of shape ({len(chunks)}, {self.dim}), got {vectors.shape}")
        arrays = [pa.array(cols[n], type=self.schema.field(n).type) for n in cols]
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.dim))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def replace(self, doc_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        if not doc_ids:
            return
        ids = ", ".join(_quote(d) for d in doc_ids)
        (self.table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(f"doc_id IN ({ids})").execute(self._rows(chunks, vectors)))

    def delete(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            self.table.delete(f"doc_id IN ({', '.join(_quote(d) for d in doc_ids)})")

    def build_indexes(self) -> None:
        from lancedb.index import FTS

        if self.table.count_rows() == 0:
            return
        if not any(i.index_type == "FTS" for i in self.table.list_indices()):
            self.table.create_index("search_text", replace=True,
                                    config=FTS(stem=True, remove_stop_words=True, ascii_folding=True))
        else:
            self.table.optimize()

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise StoreError(f"the query vector has {vector.shape[0]} dimensions, the index {self.dim}")
        query = self.table.search(vector, vector_column_name="vector").metric("cosine")  # type: ignore[attr-defined]
        return [(_chunk(r), 1.0 - float(r["_distance"])) for r in self._run(query, k, filters)]

    def search_text(self, text: str, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        if not text.strip() or self.table.count_rows() == 0:
            return []
        from lancedb.query import MatchQuery

        # a MatchQuery, not the raw string: LanceDB reads a string in double quotes as a phrase query (which
        # fails on our index without positions); a MatchQuery only splits the text into words
        query = self.table.search(MatchQuery(text, "search_text"), query_type="fts")  # type: ignore[call-arg]
        return [(_chunk(r), float(r["_score"])) for r in self._run(query, k, filters)]

    def _run(self, query, k: int, filters: Filters) -> list[dict]:
        where = where_clause(filters)
        if where:
            query = query.where(where, prefilter=True)
        return query.limit(k).to_list()

    def _doc_rows(self, doc_id: str) -> list[dict]:
        """One document's rows, in ordinal order."""
        rows = self.table.search().where(f"doc_id = {_quote(doc_id)}").limit(1_000_000).to_list()
        return sorted(rows, key=lambda r: r["ordinal"])

    def chunks(self, doc_id: str) -> list[Chunk]:
        return [_chunk(r) for r in self._doc_rows(doc_id)]

    def export(self, doc_id: str) -> tuple[list[Chunk], np.ndarray]:
        rows = self._doc_rows(doc_id)
        vectors = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), self.dim)
        return [_chunk(r) for r in rows], vectors

    def count(self) -> int:
        return self.table.count_rows()


def _chunk(r: dict) -> Chunk:
    src = Source(r["path"], r["page"], tuple(json.loads(r["heading_path"])), r["start"], r["end"])
    meta = DocMeta(r["domain"], tuple(r["tags"] or ()), tuple(r["groups"] or ()), r.get("title"))
    return Chunk(r["chunk_id"], r["doc_id"], r["ordinal"], r["text"], src, r["doc_version"], r["doc_mtime"], meta)
