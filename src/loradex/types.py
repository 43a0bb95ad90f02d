"""Frozen records that cross module borders: what a parser yields, what the store keeps, what a search
returns, where a query is routed, and the cited answer.

Behaviour lives elsewhere; these are plain values, and `to_dict` is the one JSON boundary (the CLI's `--json`,
the server's bodies and the chat page read what it writes).
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
    """The extracted, normalised text of one file and its blocks, in reading order.

    `metadata` is what the file says about itself, JSON-safe: `title` (str) and `tags` (list of str) when it
    gives them (Markdown front matter, HTML `<title>` and keywords, PDF and DOCX document properties), other
    front-matter keys as written, a DOCX's page `header` and `footer`. `unread` says, one line each, what the
    parser did not index (an image-only page, a page header, page furniture)."""

    text: str
    blocks: tuple[Block, ...]
    format: str
    pages: int | None = None
    metadata: dict = field(default_factory=dict)
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class DocMeta:
    """What is known about a document: its domain, tags and access groups from the project config, plus the
    tags and title the file gives itself (`ParsedDocument.metadata`) once it is indexed."""

    domain: str | None = None
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    title: str | None = None


@dataclass(frozen=True)
class Source:
    """Where a chunk came from: file, page, heading path and character span in the extracted text."""

    path: str
    page: int | None
    heading_path: tuple[str, ...]
    start: int
    end: int

    def label(self) -> str:
        """`file, p. N, heading > subheading`, leaving out what the format does not give."""
        parts = [self.path]
        if self.page is not None:
            parts.append(f"p. {self.page}")
        if self.heading_path:
            parts.append(" > ".join(self.heading_path))
        return ", ".join(parts)


@dataclass(frozen=True)
class Chunk:
    """A passage of a document as indexed: its text, where it came from, and the document's version."""

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
    """A search result: the chunk, its ranking score and what each retriever said about it.

    `score` is what the ranking was sorted by, and its unit depends on the retrieval mode: the RRF sum
    (hybrid), the cosine similarity (dense) or the BM25 score (bm25). `dense_score` is always a cosine in
    [-1, 1] and `bm25_score` always a BM25 score (unbounded, >= 0), or None when that retriever did not
    return the chunk; the ranks are 1-based. `focus` is where the matched chunk starts in `chunk.text` (characters)
    once `loradex.retrieve.widen` has joined neighbouring chunks before it."""

    chunk: Chunk
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None
    focus: int = 0

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
            "title": c.meta.title,
        }


EVERYTHING = None
"""`Filters.groups` value that skips the access check: the project's owner (CLI) and admin keys see every
document. Any tuple, even empty, is a caller's groups."""


@dataclass(frozen=True)
class Filters:
    """Search filters, combined with AND. `domain`: only that domain's documents; `tags`: documents with any
    of them (from the config or the file's own metadata); `doc_ids`: only these documents; `title`: documents
    whose title contains this text, ignoring case.

    `groups` is the access check. `EVERYTHING` (None, the default: the local owner) sees every document; a
    tuple is a caller's access groups, who sees documents without groups and those sharing one of its
    groups, so `()` sees public documents only. Use `Filters.for_caller(groups)` to say which is meant."""

    domain: str | None = None
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = EVERYTHING
    doc_ids: tuple[str, ...] = ()
    title: str | None = None

    @classmethod
    def for_caller(cls, groups: tuple[str, ...] | None, **kw) -> Filters:
        """Filters for a caller with these access groups (`EVERYTHING` for the owner or an admin)."""
        return cls(groups=None if groups is None else tuple(groups), **kw)


# ---- routing and answers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """Where a query goes. `domain` None means no domain: the router abstained (see `reason`), routing was
    skipped, or the project has no router; the query then goes to the base model over all sources.

    `score` is the calibrated probability (0..1) of `best`, the best-scoring domain, given that the query is
    in scope; `best` is set even when the router abstains; `scores` has every domain's probability.
    `scope` is the router's scope score: the query's mean cosine to its two nearest example queries minus
    a weight times its cosine to the nearest general off-topic query (out of scope below the router's
    threshold, see `loradex.route`). `reason` is one of "" (routed), "ambiguous", "out_of_scope", "no_router",
    "not_routed" or "explicit" (the caller named the domain). `similarity` is the cosine of the query to
    `best`'s nearest example query. `calibrated` is False when the router that scored the query had too few
    examples in some domain to calibrate its scores (see `loradex.route`), None when no router scored it."""

    domain: str | None
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    abstained: bool = False
    reason: str = ""
    best: str | None = None
    similarity: float | None = None
    scope: float | None = None
    calibrated: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SourceRef:
    """Source `n` of an answer: the passage put in the prompt as `<source n>`, with where it came from.

    `span` is the character span of the passage in the document's extracted text; `score` and
    `dense_score` are the search's (see `Hit`); `quote` is the passage's first 200 characters from
    the chunk its heading names (`Hit.focus`); `in_prompt` is
    False for a passage loradex found after generation, searching for a sentence of the answer that no source in
    the prompt supported (`answer.search_support`)."""

    n: int
    chunk_id: str
    file: str
    page: int | None
    heading_path: tuple[str, ...]
    span: tuple[int, int]
    doc_version: str
    score: float
    dense_score: float | None
    quote: str
    text: str
    in_prompt: bool = True  # False: found after generation for a sentence no prompt source supported

    @classmethod
    def from_hit(cls, n: int, hit: Hit, in_prompt: bool = True) -> SourceRef:
        s, text = hit.chunk.source, hit.chunk.text
        flat = " ".join(text[hit.focus:].split())  # from the chunk its heading names, not a neighbour before it
        quote = ("..." if hit.focus else "") + flat[:200] + ("..." if len(flat) > 200 else "")
        return cls(n, hit.chunk.chunk_id, s.path, s.page, s.heading_path, (s.start, s.end), hit.chunk.doc_version,
                   hit.score, hit.dense_score, quote, text, in_prompt)

    def label(self) -> str:
        """`file, p. N, heading > subheading`, as `Source.label`."""
        return Source(self.file, self.page, self.heading_path, *self.span).label()

    def to_dict(self) -> dict:
        return {**asdict(self), "heading_path": list(self.heading_path), "span": list(self.span)}


@dataclass(frozen=True)
class Citation:
    """A citation `[n]` of an answer and its check against source n (`loradex.cite`, lexical checks only).

    `verified`: source n supports the sentence that cites it; `added`: loradex attributed the citation to a
    sentence the model left uncited; `quote`: the supporting words of the passage; `reasons`: one per
    citing sentence, why it was or was not verified."""

    n: int
    chunk_id: str
    source: str
    quote: str
    verified: bool
    added: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Answer:
    """A cited answer with its route and adapter.

    `answer` is the generated text with citations of missing sources removed; `abstained` is true when the
    documents did not cover the question (no generation, or the model said so without citing);
    `flagged` holds the sentences no source checked supports (`sentence`, `cited`, `supported_by`): cited ones
    no cited passage supports, and those of three content words or more left uncited (`cited` empty;
    `loradex.pipeline.complete`);
    `repeated` holds the sentences removed from the answer as repeats of an earlier one
    (`loradex.cite.same_sentence`; degenerate output: non-empty means the model looped and the answer deserves
    a second look); `removed` holds the sentences no source supports that `answer.unsupported: drop` took out;
    `timings_ms` are milliseconds per stage (route, load, retrieve, prompt, generate, verify); `usage` has
    token counts and the best dense score; `adapter` is `domain@sha256:<12 hex>`, None for the base model."""

    question: str
    answer: str
    citations: tuple[Citation, ...] = ()
    sources: tuple[SourceRef, ...] = ()
    abstained: bool = False
    flagged: tuple[dict, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    route: Route = field(default_factory=lambda: Route(None, 0.0))
    adapter: str | None = None
    repeated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> Answer:
        """The Answer that `to_dict` wrote (read back from a cache)."""
        sources = tuple(SourceRef(**{**s, "heading_path": tuple(s["heading_path"]), "span": tuple(s["span"])})
                        for s in d["sources"])
        citations = tuple(Citation(**{**c, "reasons": tuple(c["reasons"])}) for c in d["citations"])
        return cls(d["question"], d["answer"], citations, sources, d["abstained"], tuple(d["flagged"]),
                   d["timings_ms"], d["usage"], Route(**d["route"]), d["adapter"], tuple(d.get("repeated", ())),
                   tuple(d.get("removed", ())))

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer,
                "citations": [c.to_dict() for c in self.citations], "sources": [s.to_dict() for s in self.sources],
                "abstained": self.abstained, "flagged": list(self.flagged), "timings_ms": dict(self.timings_ms),
                "usage": dict(self.usage), "route": self.route.to_dict(), "adapter": self.adapter,
                "repeated": list(self.repeated), "removed": list(self.removed)}
