"""The `loradex` command line: each command wraps one library call and prints text or `--json`.

Exit codes: 0 done; 1 an error (the message says what to do); 3 done, but some files were skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .config import ConfigError
from .embed import EmbedderNotFound
from .ingest.ingest import ingest as run_ingest
from .project import init_project, open_project
from .retrieve import search as run_search
from .store import StoreError
from .types import Filters

app = typer.Typer(help="loradex: cited answers from your documents, domain adapters, one router.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
docs_app = typer.Typer(help="Inspect and remove indexed documents.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")

# A pipe or a log gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ProjectOpt = typer.Option(Path("."), "--project", "-p", help="Project folder (holds loradex.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
EXIT_SKIPPED = 3
_KNOWN_ERRORS = (ConfigError, EmbedderNotFound, StoreError, ValueError, FileNotFoundError)


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
    raise typer.Exit(1)


def _emit(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _open(project: Path):
    try:
        return open_project(project)
    except _KNOWN_ERRORS as e:
        _fail(e)


def _check_domain(proj, domain: str | None) -> None:
    if domain is not None and domain not in proj.config.domains:
        _fail(ValueError(f"unknown domain {domain!r}; the project has: {', '.join(proj.config.domains) or 'none'}"))


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="Folder to create the project in."),
         name: Optional[str] = typer.Option(None, help="Project name (default: the folder name).")):
    """Write a commented starter loradex.yaml and a docs/ folder."""
    try:
        path = init_project(directory, name)
    except ConfigError as e:
        _fail(e)
    out.print(f"created {path}\nnext: put documents in {path.parent / 'docs'} and run `loradex ingest -p {directory}`")


@app.command()
def ingest(paths: list[Path] = typer.Argument(None, help="Files or folders (default: the config's sources)."),
           prune: bool = typer.Option(False, help="Remove indexed documents whose files are gone."),
           rebuild: bool = typer.Option(False, help="Drop the index and ingest everything again."),
           project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Index new and changed documents; unchanged ones cost a hash. Corrupt files are reported and skipped."""
    proj = _open(project)
    try:
        with Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("documents"),
                      TimeRemainingColumn(), console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task("ingest", total=None)
            report = run_ingest(proj, [str(p) for p in paths] if paths else None, prune=prune, rebuild=rebuild,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    except _KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        _emit(report.to_dict())
    else:
        out.print(f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
                  f"removed {len(report.removed)}, skipped {len(report.skipped)}; "
                  f"{report.chunks} chunks written in {report.seconds:.1f} s")
        for path, reason in report.skipped:
            err.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if report.skipped:
        raise typer.Exit(EXIT_SKIPPED)


@app.command()
def search(query: str = typer.Argument(..., help="What to look for."),
           k: Optional[int] = typer.Option(None, "--k", "-k", help="Hits to return (default: retrieval.k)."),
           domain: Optional[str] = typer.Option(None, help="Only documents of this domain."),
           tag: list[str] = typer.Option([], help="Only documents with one of these tags (repeatable)."),
           group: list[str] = typer.Option([], help="Search as a member of these access groups (repeatable)."),
           mode: Optional[str] = typer.Option(None, help="hybrid, dense or bm25 (default: retrieval.mode)."),
           project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Hybrid (dense + BM25) search over the indexed documents."""
    proj = _open(project)
    _check_domain(proj, domain)
    filters = Filters(domain=domain, tags=tuple(tag), groups=tuple(group) if group else None)
    try:
        hits = run_search(proj.store, proj.embedder, query, proj.config.retrieval, k=k, mode=mode, filters=filters)
    except _KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        _emit({"query": query, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        out.print("no hits (is anything ingested? try `loradex docs list`)")
    for i, h in enumerate(hits, start=1):
        text = " ".join(h.chunk.text.split())
        out.print(f"[bold]{i}.[/] [cyan]{h.chunk.source.label()}[/]  score {h.score:.4f}  "
                  f"[dim]v{h.chunk.doc_version[:8]} {h.chunk.chunk_id}[/]", highlight=False)
        out.print(f"   {text[:300]}{'...' if len(text) > 300 else ''}", highlight=False)


@app.command()
def ask(question: str = typer.Argument(..., help="The question."),
        domain: Optional[str] = typer.Option(None, help="Only documents of this domain."),
        k: Optional[int] = typer.Option(None, "--k", "-k", help="Passages given as sources (default: answer.k)."),
        stream: bool = typer.Option(False, "--stream", help="Print the answer as it is generated."),
        project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Answer from the indexed documents with numbered citations, each checked against its passage."""
    from .pipeline import answer as run_answer

    proj = _open(project)
    _check_domain(proj, domain)
    on_token = (lambda piece: out.print(piece, end="", highlight=False, markup=False)) if stream and not as_json else None
    try:
        result = run_answer(proj, question, k=k, domain=domain, on_token=on_token)
    except _KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        _emit(result.to_dict())
        return
    out.print() if on_token else out.print(result.answer, highlight=False, markup=False)
    _print_sources(result)


def _print_sources(result) -> None:
    marks = {c["n"]: ("[red]not supported[/]" if not c["verified"] else
                      "[green]verified[/] [dim](citation added by loradex)[/]" if c["added"] else "[green]verified[/]")
             for c in result.citations}
    if result.abstained:
        out.print("[yellow](abstained: no passage was close enough to the question)[/]")
    for f in result.flagged:
        better = f" (source {', '.join(map(str, f['supported_by']))} would support it)" if f["supported_by"] else ""
        out.print(f"[red]unsupported:[/] {f['sentence']}{better}", highlight=False)
    out.print("\n[bold]Sources[/]")
    for s in result.sources:
        where = ", ".join(x for x in (s["file"], f"p. {s['page']}" if s["page"] else "",
                                      " > ".join(s["heading_path"])) if x)
        out.print(f"[{s['n']}] {where} {marks.get(s['n'], '[dim]not cited[/]')}", highlight=False)
        out.print(f"    [dim]{s['quote']}[/]", highlight=False)
    t = result.timings_ms
    out.print(f"[dim]retrieve {t['retrieve']:.0f} ms, generate {t['generate']:.0f} ms, verify {t['verify']:.0f} ms[/]")


@docs_app.command("list")
def docs_list(project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Indexed documents with version, domain and chunk count."""
    docs = _open(project).load_manifest()["documents"]
    if as_json:
        _emit([{"doc_id": d, **m} for d, m in sorted(docs.items())])
        return
    table = Table("document", "format", "domain", "chunks", "version")
    for d, m in sorted(docs.items()):
        table.add_row(d, m["format"], m.get("domain") or "-", str(m["chunks"]), m["version"][:12])
    out.print(table)
    out.print(f"{len(docs)} documents")


@docs_app.command("show")
def docs_show(doc_id: str = typer.Argument(..., help="Document id as `docs list` prints it."),
              project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """A document's metadata and its chunks."""
    proj = _open(project)
    meta = proj.load_manifest()["documents"].get(doc_id)
    if meta is None:
        _fail(ValueError(f"{doc_id!r} is not indexed; `loradex docs list` shows what is"))
    chunks = proj.store.chunks(doc_id)
    if as_json:
        _emit({"doc_id": doc_id, **meta, "chunk_list": [
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
            project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Remove documents from the index (the files stay; the next ingest of their folder adds them back)."""
    proj = _open(project)
    with proj.lock():
        manifest = proj.load_manifest()
        missing = [d for d in doc_ids if d not in manifest["documents"]]
        if missing:
            _fail(ValueError(f"not indexed: {', '.join(missing)}; `loradex docs list` shows what is"))
        proj.store.delete(doc_ids)
        for d in doc_ids:
            del manifest["documents"][d]
        proj.save_manifest(manifest)
    if as_json:
        _emit({"removed": doc_ids})
    else:
        out.print(f"removed {len(doc_ids)} document(s)")


if __name__ == "__main__":
    app()
