"""Incremental, versioned ingestion of a project's files.

A document's version is the SHA-256 of its bytes. An unchanged file (same hash, same metadata)
costs a read and a hash; a changed one is parsed, chunked, embedded and swapped in with one store
commit per batch, after which the manifest is rewritten atomically. A crash between the two only
makes the next run redo that batch. A file that cannot be read is reported and skipped; whatever
was indexed for it before stays. `prune` removes documents whose files are gone. When the way documents are
chunked changes (`CHUNKER_VERSION`, or `chunking.max_tokens`), the next run re-chunks every document. Each
document keeps the history of its versions (`loradex decide` reads how often a domain's documents change).
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IndexMismatch, ParseError, QueryError
from ..types import Chunk, DocMeta, ParsedDocument, Source
from .chunk import chunk_document
from .parse import detect_format, parse_bytes
from .pending import PendingEmbeddings

CHUNKER_VERSION = 5  # 2: plain-text headings keep the document's title above their section; 3: normalised text,
# layout-aware PDF paragraphs, every DOCX part, HTML parsed as browsers do, Markdown by CommonMark with front matter;
# 4: text with no whitespace cut between characters (at most max_tokens * CHARS_PER_TOKEN characters a chunk);
# 5: a chunk's span, text between its blocks and words included, within that bound too; Markdown lines over 4,000
# characters cut into paragraphs

if TYPE_CHECKING:
    from ..embed import Embedder
    from ..project import Project
    from ..store import Store

__all__ = ["IngestReport", "PendingDoc", "document_meta", "index_documents", "ingest", "make_chunks",
           "remove_documents", "walk"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PendingDoc:
    """A parsed document ready to be chunked and indexed."""

    doc_id: str
    path: str
    version: str
    mtime: float
    meta: DocMeta
    parsed: ParsedDocument


@dataclass
class IngestReport:
    """What one ingest run did, by document id; `skipped` pairs a path with the reason; `unread` pairs the path
    of a document that was indexed with one part of it that was not (an image-only page, a page header,
    page furniture; `ParsedDocument.unread`); `reused_vectors` counts chunk embeddings an interrupted earlier
    run had computed (`loradex.ingest.pending`); `ignored` lists the files of kinds loradex does not read
    found in the source folders (not an error: a docs folder may hold images); `seconds` is wall time."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unread: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    chunks: int = 0
    reused_vectors: int = 0
    kept_vectors: int = 0  # chunks whose text was already stored for their document: not embedded again
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "removed": self.removed, "chunks": self.chunks, "reused_vectors": self.reused_vectors,
                "kept_vectors": self.kept_vectors,
                "seconds": round(self.seconds, 3),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "unread": [{"path": p, "part": what} for p, what in self.unread], "ignored": self.ignored}


def document_meta(config: DocMeta, metadata: dict) -> DocMeta:
    """The config's metadata of a document with what the file says of itself (`ParsedDocument.metadata`): its
    `tags` join the config's (so `Filters.tags` finds either) and its `title` is the document's title."""
    tags = metadata.get("tags") or []
    title = metadata.get("title")
    return replace(config, tags=tuple(dict.fromkeys([*config.tags, *(str(t) for t in tags)])),
                   title=str(title) if title else config.title)


def make_chunks(doc: PendingDoc, embedder: Embedder, max_tokens: int) -> list[Chunk]:
    """The document's chunks (at most `max_tokens` embedder tokens each), ids derived from id and version; each
    carries the document's metadata (`document_meta`)."""
    key = hashlib.sha256(f"{doc.doc_id}\0{doc.version}".encode()).hexdigest()[:16]
    meta = document_meta(doc.meta, doc.parsed.metadata)
    return [
        Chunk(f"{key}-{i}", doc.doc_id, i, doc.parsed.text[s.start : s.end],
              Source(doc.path, s.page, s.heading_path, s.start, s.end), doc.version, doc.mtime, meta)
        for i, s in enumerate(chunk_document(doc.parsed, embedder.count_tokens, max_tokens))
    ]


def index_documents(store: Store, embedder: Embedder, docs: Iterable[PendingDoc], max_tokens: int,
                    *, batch_chunks: int = 256,
                    on_commit: Callable[[list[PendingDoc], list[Chunk]], None] | None = None,
                    progress: Progress | None = None, total: int = 0,
                    pending: PendingEmbeddings | None = None, kept: list[int] | None = None,
                    indexed: Collection[str] = ()) -> int:
    """Chunk, embed and store documents in batches; each batch is one atomic store commit. A chunk whose text
    (`Chunk.search_text`) its document already has in the store keeps the stored vector instead of being
    embedded again (a changed domain, tag or group, an edited paragraph of a long document): `indexed` names
    the documents the store already holds (the others cost no store read) and `kept[0]` counts them. With
    `pending`, vectors are committed to it a slice at a time as they are computed and dropped from it once
    stored, so an interrupted run resumes its last batch (a large document is one batch) without embedding it
    again."""
    import numpy as np

    batch: list[PendingDoc] = []
    chunks: list[Chunk] = []
    done = stored = 0

    def commit() -> None:
        nonlocal batch, chunks, done, stored
        if not batch:
            return
        texts = [c.search_text() for c in chunks]
        old = _stored_vectors(store, [d.doc_id for d in batch if d.doc_id in indexed], set(texts))
        todo = [t for t in dict.fromkeys(texts) if t not in old]
        if todo:
            old.update(zip(todo, pending.embed(todo) if pending is not None else embedder.embed(todo)))
        vectors = np.stack([old[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, store.dim),
                                                                                              np.float32)
        store.replace([d.doc_id for d in batch], chunks, vectors)
        if kept is not None:
            new = set(todo)
            kept[0] += sum(1 for t in texts if t not in new)
        if pending is not None:
            pending.forget(texts)  # all of them: rows an older run embedded for texts now found stored go too
        if on_commit:
            on_commit(batch, chunks)
        done += len(batch)
        stored += len(chunks)
        if progress:
            progress(done, total)
        batch, chunks = [], []

    for doc in docs:
        batch.append(doc)
        chunks.extend(make_chunks(doc, embedder, max_tokens))
        if len(chunks) >= batch_chunks:
            commit()
    commit()
    return stored


def _stored_vectors(store: Store, doc_ids: Sequence[str], wanted: set[str]) -> dict:
    """The stored vectors of `doc_ids`' chunks whose `search_text` is in `wanted`, by that text."""
    out: dict = {}
    for doc_id in doc_ids:
        chunks, vectors = store.export(doc_id)
        out.update((t, v) for t, v in zip((c.search_text() for c in chunks), vectors) if t in wanted)
    return out


def walk(roots: Sequence[Path], skipped: list[tuple[str, str]], name: Callable[[Path], str] = str,
         ignored: list[str] | None = None) -> list[Path]:
    """Supported files under the roots (hidden folders skipped); a named file of another kind is reported, and
    so is every symbolic link met inside a folder, never followed: a link would bring in a file from elsewhere
    (outside the project, or from another group's folder) under this folder's domain and access groups.
    Files of other kinds found in a folder (an image beside the documents) are listed in `ignored`.
    `name(path)` is how a reported path is written."""
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            if detect_format(root) is None:
                skipped.append((str(root), f"unsupported format {root.suffix or '(none)'}: "
                                           "use .md .txt .html .pdf .docx"))
            else:
                files.append(root)
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root).parts
                if any(part.startswith(".") for part in rel):
                    continue
                if not _utf8(p):
                    skipped.append((_printable(name(p)), "the file name is not valid UTF-8: rename it (for example "
                                                          "with `convmv -f latin1 -t utf8`)"))
                    continue
                if p.is_symlink():
                    skipped.append((name(p), f"symbolic link to {p.readlink()}: not followed (a link could bring "
                                              "in a file from outside the project or another group's folder); "
                                              "copy the file here to index it"))
                    continue
                if not p.is_file():
                    continue
                if detect_format(p) is not None:
                    files.append(p)
                elif ignored is not None:
                    ignored.append(name(p))
        else:
            skipped.append((str(root), "no such file or folder"))
    return list(dict.fromkeys(files))


def _utf8(path: Path) -> bool:
    """Whether the path's name is valid UTF-8 (Python keeps undecodable bytes as lone surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """`name` with undecodable bytes written as \\xNN, safe to print and to store as JSON."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _link_name(project: Project, path: Path) -> str:
    """The project-relative path of a link itself (Project.doc_id would name its target)."""
    own = path.parent.resolve() / path.name
    try:
        return own.relative_to(project.root.resolve()).as_posix()
    except ValueError:
        return own.as_posix()


def ingest(project: Project, paths: Sequence[str | Path] | None = None, *, prune: bool = False, rebuild: bool = False,
           progress: Progress | None = None) -> IngestReport:
    """Bring the index up to date with the files under `paths` (default: the config's `sources`); relative
    paths are read from the project. `rebuild` drops the index first; `prune` removes documents whose files
    are gone; `progress(done, total)` is called per committed batch. Unreadable files are reported in the
    report's `skipped`, never raised. Raises IndexMismatch when the index was built by another embedder."""
    t0 = time.perf_counter()
    report = IngestReport()
    roots = [Path(p) if Path(p).is_absolute() else project.root / p for p in (paths or project.config.sources)]
    with project.lock():
        if rebuild:
            project.reset_index()
        manifest = project.load_manifest()
        name = project.config.embedder
        if manifest.get("embedder") not in (None, name):
            raise IndexMismatch(f"the index was built with embedder {manifest['embedder']!r}, the config names "
                             f"{name!r}: run `loradex ingest --rebuild`")
        manifest["embedder"] = name
        known = manifest.setdefault("documents", {})
        files = walk(roots, report.skipped, name=lambda p: _link_name(project, p), ignored=report.ignored)
        chunker = f"{CHUNKER_VERSION}:{project.config.chunking.max_tokens}"
        rechunk = manifest.get("chunker") != chunker  # a new chunker or bound re-chunks every document
        pending = list(_changed(project, files, known, report, rechunk=rechunk))

        def on_commit(batch: list[PendingDoc], chunks: list[Chunk]) -> None:
            counts = Counter(c.doc_id for c in chunks)
            now = time.time()
            for d in batch:
                (report.updated if d.doc_id in known else report.added).append(d.doc_id)
                known[d.doc_id] = {"path": d.path, "version": d.version, "mtime": d.mtime,
                                   "format": d.parsed.format, "pages": d.parsed.pages,
                                   "chunks": counts[d.doc_id],
                                   "domain": d.meta.domain, "tags": list(d.meta.tags),
                                   "groups": list(d.meta.groups), "ingested_at": now,
                                   "metadata": d.parsed.metadata, "unread": list(d.parsed.unread),
                                   "history": _history(known.get(d.doc_id), d.version, now)}
            project.save_manifest(manifest)

        if pending:  # the embedder (a model load) is needed only when something changed
            vectors = PendingEmbeddings(project.state_dir / "pending.sqlite", project.embedder)
            kept = [0]
            try:
                report.chunks = index_documents(project.store, project.embedder, pending,
                                                project.config.chunking.max_tokens, on_commit=on_commit,
                                                progress=progress, total=len(pending), pending=vectors, kept=kept,
                                                indexed=set(known))
            finally:
                report.reused_vectors, report.kept_vectors = vectors.reused, kept[0]
                vectors.close()
        if prune:
            _prune(project, roots, files, manifest, report, outside=paths is None)
        if manifest.get("chunker") != chunker and not any(r[0] in known for r in report.skipped):
            manifest["chunker"] = chunker  # every document is chunked the current way
            project.save_manifest(manifest)
        if report.added or report.updated or report.removed:
            project.store.build_indexes()
            project.forget_router()  # its scope reads the domains' passages
    report.seconds = time.perf_counter() - t0
    return report


def _history(old: dict | None, version: str, now: float, keep: int = 50) -> list:
    """`[version, first seen (Unix seconds)]` pairs of a document, oldest first, the last `keep`: a new entry
    only when its content changed (re-chunking or new tags keep the version). `loradex decide` reads how
    often each domain's documents change from it."""
    history = list(old.get("history") or [[old["version"], old.get("ingested_at")]]) if old else []
    if not history or history[-1][0] != version:
        history.append([version, now])
    return history[-keep:]


def _changed(project: Project, files: list[Path], known: dict, report: IngestReport, *,
             rechunk: bool = False) -> Iterable[PendingDoc]:
    for f in files:
        doc_id = project.doc_id(f)
        try:
            data = f.read_bytes()
            mtime = f.stat().st_mtime
        except OSError as e:
            report.skipped.append((doc_id, f"cannot read: {e.strerror or e}"))
            continue
        version = hashlib.sha256(data).hexdigest()[:16]
        meta = project.meta_for(doc_id)
        old = known.get(doc_id)
        if old and not rechunk and old["version"] == version and old.get("domain") == meta.domain \
                and old.get("tags") == list(meta.tags) and old.get("groups") == list(meta.groups):
            report.unchanged.append(doc_id)
            continue
        fmt = detect_format(f)
        assert fmt is not None  # walk() keeps only files of a known format
        try:
            parsed = parse_bytes(data, fmt)
        except ParseError as e:
            report.skipped.append((doc_id, str(e)))
            continue
        except (Exception, RecursionError) as e:  # noqa: BLE001 - a parser's own bug: one file never stops the rest
            report.skipped.append((doc_id, f"the {fmt} parser failed on it ({type(e).__name__}: {str(e)[:200]}); "
                                           "please report this file"))
            continue
        report.unread.extend((doc_id, what) for what in parsed.unread)
        yield PendingDoc(doc_id, doc_id, version, mtime, meta, parsed)


def _prune(project: Project, roots: list[Path], files: list[Path], manifest: dict, report: IngestReport, *,
           outside: bool = False) -> None:
    """Remove the documents under `roots` whose files are gone; with `outside` (a prune of the configured
    sources), also every document from outside the project folder (an absolute id: named on the command line,
    or reached through a link before links were refused) not read in this run."""
    present = {project.doc_id(f) for f in files}
    scopes = [project.doc_id(r) for r in roots]
    gone = [d for d in manifest["documents"]
            if d not in present and (any(d == s or d.startswith(s.rstrip("/") + "/") for s in scopes)
                                     and not (project.root / d).exists() or outside and Path(d).is_absolute())]
    if gone:
        _remove(project, manifest, gone)
        report.removed.extend(gone)


def _remove(project: Project, manifest: dict, doc_ids: Sequence[str]) -> None:
    project.store.delete(doc_ids)
    for d in doc_ids:
        del manifest["documents"][d]
    project.save_manifest(manifest)


def remove_documents(project: Project, doc_ids: Sequence[str]) -> list[str]:
    """Remove documents from the index and the manifest (their files stay; the next ingest of their folder
    adds them back). Returns the removed ids. Raises QueryError, removing nothing, when one is not indexed."""
    with project.lock():
        manifest = project.load_manifest()
        missing = [d for d in doc_ids if d not in manifest["documents"]]
        if missing:
            raise QueryError(f"not indexed: {', '.join(missing)}; `loradex docs list` shows what is")
        _remove(project, manifest, list(doc_ids))
    return list(doc_ids)
