"""`loradex docs`: list, show and remove indexed documents."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import QueryError
from ._common import JsonOpt, ProjectOpt, emit, new_app, open_checked, out

docs_app = new_app("Inspect and remove indexed documents.")


@docs_app.command("list")
def docs_list(project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Indexed documents with version, domain and chunk count."""
    docs = open_checked(project).load_manifest()["documents"]
    if as_json:
        emit([{"doc_id": d, **m} for d, m in sorted(docs.items())])
        return
    table = Table("document", "format", "domain", "chunks", "version")
    for d, m in sorted(docs.items()):
        table.add_row(d, m["format"], m.get("domain") or "-", str(m["chunks"]), m["version"][:12])
    out.print(table)
    out.print(f"{len(docs)} documents")


@docs_app.command("show")
def docs_show(doc_id: str = typer.Argument(..., help="Document id as `docs list` prints it."),
              project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """A document's metadata and its chunks."""
    proj = open_checked(project)
    meta = proj.load_manifest()["documents"].get(doc_id)
    if meta is None:
        raise QueryError(f"{doc_id!r} is not indexed; `loradex docs list` shows what is")
    chunks = proj.store.chunks(doc_id)
    if as_json:
        emit({"doc_id": doc_id, **meta, "chunk_list": [
            {"chunk_id": c.chunk_id, "page": c.source.page, "heading_path": list(c.source.heading_path),
             "start": c.source.start, "end": c.source.end, "text": c.text} for c in chunks]})
        return
    out.print(f"[bold]{doc_id}[/] version {meta['version']} domain {meta.get('domain') or '-'} "
              f"tags {meta.get('tags')} groups {meta.get('groups')}", highlight=False)
    for c in chunks:
        out.print(f"[cyan]#{c.ordinal}[/] {c.source.label()} [{c.source.start}:{c.source.end}]", highlight=False)
        out.print("   " + " ".join(c.text.split())[:200], highlight=False)


@docs_app.command("rm")
def docs_rm(doc_ids: list[str] = typer.Argument(..., help="Document ids to remove from the index."),
            project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Remove documents from the index (the files stay; the next ingest of their folder adds them back)."""
    from ..ingest.ingest import remove_documents

    removed = remove_documents(open_checked(project), doc_ids)
    if as_json:
        emit({"removed": removed})
    else:
        out.print(f"removed {len(removed)} document(s)")
