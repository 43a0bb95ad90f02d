"""Frozen records that cross module borders: what a parser yields, what the store keeps, what a search returns.

Behaviour lives elsewhere; these are plain values with a `to_dict` for JSON output.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Block:
    """One structural unit of a parsed document; `text == document_text[start:end]`."""

    kind: str  # heading | paragraph | list_item | table | code
    start: int
    end: int
    heading_path: tuple[str, ...] = ()
    page: int | None = None
    level: int = 0  # heading level for headings, else 0


@dataclass(frozen=True)
class ParsedDocument:
    """The extracted text of one file and its blocks, in reading order."""

    text: str
    blocks: tuple[Block, ...]
    format: str
    pages: int | None = None


@dataclass(frozen=True)
class DocMeta:
    """What the project config says about a document: its domain, tags and access groups."""

    domain: str | None = None
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    """Where a chunk came from: file, page, heading path and character span in the extracted text."""

    path: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int

    def label(self) -> str:
        parts = [self.path]
        if self.page is not None:
            parts.append(f"p. {self.page}")
        if self.heading_path:
            parts.append(" > ".join(self.heading_path))
        return ", ".join(parts)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    source: Source
    doc_version: str
    doc_mtime: float
    meta: DocMeta = field(default_factory=DocMeta)

    def search_text(self) -> str:
        """The text that is embedded and keyword-indexed: heading path as context, then the passage."""
        if not self.source.heading_path:
            return self.text
        return " > ".join(self.source.heading_path) + "\n" + self.text


@dataclass(frozen=True)
class Hit:
    """A search result: the chunk, its fused score and what each retriever said about it."""

    chunk: Chunk
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None

    def to_dict(self) -> dict:
        c = self.chunk
        return {
            "chunk_id": c.chunk_id,
            "score": self.score,
            "dense_score": self.dense_score,
            "bm25_score": self.bm25_score,
            "dense_rank": self.dense_rank,
            "bm25_rank": self.bm25_rank,
            "text": c.text,
            "source": {**asdict(c.source), "heading_path": list(c.source.heading_path)},
            "document": {"doc_id": c.doc_id, "version": c.doc_version, "mtime": c.doc_mtime},
            "domain": c.meta.domain,
            "tags": list(c.meta.tags),
            "groups": list(c.meta.groups),
        }


@dataclass(frozen=True)
class Filters:
    """Search filters. `groups=None` means no access check (the local owner); a tuple means a caller's groups:
    it sees documents with no groups and those sharing one of its groups."""

    domain: str | None = None
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None
    doc_ids: tuple[str, ...] = ()
