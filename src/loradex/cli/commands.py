"""The top-level commands: init, ingest, search, serve, route, ask. Each is a few lines around one library call."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import QueryError
from ..types import Answer, Filters
from ._common import EXIT_SKIPPED, JsonOpt, ProjectOpt, emit, err, open_checked, out, progress


def init(directory: Path = typer.Argument(Path("."), help="Folder to create the project in."),
         name: Optional[str] = typer.Option(None, help="Project name (default: the folder name).")) -> None:
    """Write a commented starter loradex.yaml and a docs/ folder."""
    from ..project import init_project

    path = init_project(directory, name)
    out.print(f"created {path}\nnext: put documents in {path.parent / 'docs'} and run `loradex ingest -p {directory}`")


def ingest(paths: list[Path] = typer.Argument(None, help="Files or folders (default: the config's sources)."),
           prune: bool = typer.Option(False, help="Remove indexed documents whose files are gone."),
           rebuild: bool = typer.Option(False, help="Drop the index and ingest everything again."),
           project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Index new and changed documents; unchanged ones cost a hash. Corrupt files are reported and skipped."""
    from ..ingest.ingest import ingest as run_ingest

    proj = open_checked(project)
    with progress("embedding", "documents", disable=as_json) as update:
        report = run_ingest(proj, [str(p) for p in paths] if paths else None, prune=prune, rebuild=rebuild,
                            progress=update)
    if as_json:
        emit(report.to_dict())
    else:
        out.print(f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
                  f"removed {len(report.removed)}, skipped {len(report.skipped)}; "
                  f"{report.chunks} chunks written in {report.seconds:.1f} s"
                  + (f" ({report.reused_vectors} embeddings kept from an interrupted run)" if report.reused_vectors
                     else "")
                  + (f"; {report.kept_vectors} of them unchanged, not embedded again" if report.kept_vectors else "")
                  + (f"; {len(report.unread)} part(s) not read" if report.unread else ""))
        for path, reason in report.skipped:
            err.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
        for path, part in report.unread:
            err.print(f"[yellow]not read[/] {path}: {part}", highlight=False)
        if report.ignored:
            from ..ingest.parse import FORMATS

            shown = ", ".join(report.ignored[:5]) + (f" and {len(report.ignored) - 5} more" if len(report.ignored) > 5
                                                     else "")
            err.print(f"[dim]ignored {len(report.ignored)} file(s) of kinds loradex does not read ({shown}); it "
                      f"reads {' '.join(FORMATS)}: convert a document to one of those to index it[/]",
                      highlight=False)
    if report.skipped:
        raise typer.Exit(EXIT_SKIPPED)


def search(query: str = typer.Argument(..., help="What to look for."),
           k: Optional[int] = typer.Option(None, "--k", "-k", help="Hits to return (default: retrieval.k)."),
           domain: Optional[str] = typer.Option(None, help="Only documents of this domain."),
           tag: list[str] = typer.Option([], help="Only documents with one of these tags (repeatable)."),
           title: Optional[str] = typer.Option(None, help="Only documents whose title contains this text."),
           group: list[str] = typer.Option([], help="Search as a member of these access groups (repeatable)."),
           mode: Optional[str] = typer.Option(None, help="hybrid, dense or bm25 (default: retrieval.mode)."),
           project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Hybrid (dense + BM25) search over the indexed documents."""
    from ..retrieve import search as run_search

    proj = open_checked(project, domain)
    filters = Filters(domain=domain, tags=tuple(tag), groups=tuple(group) if group else None, title=title)
    hits = run_search(proj.store, proj.embedder, query, proj.config.retrieval, k=k, mode=mode, filters=filters)
    if as_json:
        emit({"query": query, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        out.print("no hits (is anything ingested? try `loradex docs list`)")
    for i, h in enumerate(hits, start=1):
        text = " ".join(h.chunk.text.split())
        out.print(f"[bold]{i}.[/] [cyan]{h.chunk.source.label()}[/]  score {h.score:.4f}  "
                  f"[dim]v{h.chunk.doc_version[:8]} {h.chunk.chunk_id}[/]", highlight=False)
        out.print(f"   {text[:300]}{'...' if len(text) > 300 else ''}", highlight=False)


def serve(host: Optional[str] = typer.Option(None, help="Address (default: server.host, 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, help="Port (default: server.port, 8000)."),
          project: Path = ProjectOpt) -> None:
    """Serve the OpenAI-compatible API, the admin endpoints and the chat page (loradex[server])."""
    try:
        from ..server.app import serve as run_serve
    except ImportError as e:
        raise QueryError(f"{e}; install the server extra: pip install 'loradex[server]'") from None
    proj = open_checked(project)
    cfg = proj.config.server
    err.print(f"loradex serving {proj.root} on http://{host or cfg.host}:{port or cfg.port}/ "
              f"(OpenAI API under /v1, chat page at /)", highlight=False)
    run_serve(proj, host or cfg.host, port or cfg.port)


def route(query: Optional[str] = typer.Argument(None, help="The query to route."),
          file: Optional[Path] = typer.Option(None, "--file", help="Route one query a line (models load once)."),
          fit: bool = typer.Option(False, "--fit", help="Refit the router from the domains' examples and save it."),
          explain: bool = typer.Option(False, "--explain", help="Show the examples, off-topic queries and "
                                       "passages that decided, and the scope score against its threshold."),
          project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Which domain a query goes to, every domain's calibrated score, and whether the router abstains."""
    proj = open_checked(project)
    router = proj.refit_router() if fit else proj.router
    if fit and router is not None:
        _print_fit(router.summary(), as_json)
        if query is None and file is None:
            return
    if (query is None) == (file is None):
        raise QueryError("give a query, or --file QUERIES.txt (one a line), or --fit")
    if router is not None and not router.calibrated and not as_json and not fit:  # --fit has said it already
        err.print(f"[yellow]router uncalibrated:[/] {router.uncalibrated_reason}", highlight=False)
    queries = [query] if query is not None else _lines(file)  # type: ignore[arg-type]  # one is given
    for q, r in zip(queries, proj.route(queries)):
        row = {"query": q, **r.to_dict(), **({"explain": proj.explain_route(q)} if explain else {})}
        if as_json:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        verdict = f"[yellow]abstained ({r.reason}), best {r.best}[/]" if r.abstained else f"[bold]{r.domain}[/]"
        scores = "  ".join(f"{d} {s:.2f}" for d, s in sorted(r.scores.items(), key=lambda x: -x[1]))
        out.print(f"{verdict}  [dim]{scores}  scope {r.scope}[/]  {q if file else ''}", highlight=False)
        if explain:
            _print_explain(row["explain"])


def _print_fit(info: dict, as_json: bool) -> None:
    if as_json:
        emit(info)
        return
    accuracy = info["calibration_accuracy"]
    out.print(f"router fitted ({info['method']}) on {info['examples']} examples of {len(info['domains'])} "
              f"domains and {info['negatives']} off-topic queries; cross-validated accuracy "
              f"{'-' if accuracy is None else round(accuracy, 2)} ({info['folds'] or 'no'} folds)", highlight=False)
    low, high = info["temperature_range"]
    out.print(f"temperature {info['temperature']} (posterior range {low} to {high}), {info['held_out']} held-out "
              "scores", highlight=False)
    if not info["calibrated"]:
        err.print(f"[yellow]uncalibrated:[/] {info['uncalibrated_reason']}", highlight=False)


def _print_explain(why: dict) -> None:
    out.print(f"  scope {why['scope']} (out of scope below {why['scope_threshold']})", highlight=False)
    for domain, rows in why["examples"].items():
        out.print(f"  nearest {domain} examples:", highlight=False)
        for x in rows:
            out.print(f"    {x['cosine']:.2f}  {x['text']}", highlight=False)
    if why["off_topic"]:
        out.print("  nearest off-topic queries:", highlight=False)
        for x in why["off_topic"]:
            out.print(f"    {x['cosine']:.2f}  {x['text']}", highlight=False)
    for p in why["passages"]:
        out.print(f"  passage {p['cosine']:.2f}  {p['source']}: {p['text']}", highlight=False)


def _lines(file: Path) -> list[str]:
    if not file.is_file():
        raise QueryError(f"{file}: no such file")
    return [q.strip() for q in file.read_text(encoding="utf-8").splitlines() if q.strip()]


def ask(question: str = typer.Argument(..., help="The question."),
        domain: Optional[str] = typer.Option(None, help="The question's domain (skips the router)."),
        k: Optional[int] = typer.Option(None, "--k", "-k", help="Passages given as sources (default: answer.k)."),
        tag: list[str] = typer.Option([], help="Only documents with one of these tags (repeatable)."),
        title: Optional[str] = typer.Option(None, help="Only documents whose title contains this text."),
        stream: bool = typer.Option(False, "--stream", help="Print the answer as it is generated."),
        no_route: bool = typer.Option(False, "--no-route", help="Skip the router: base model, all sources."),
        no_adapter: bool = typer.Option(False, "--no-adapter", help="Use the bare base model (RAG only)."),
        no_retrieval: bool = typer.Option(False, "--no-retrieval", help="No sources (adapter only)."),
        project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Route, retrieve from the domain's sources, answer with its adapter, and check every citation."""
    from ..cite import RepeatFilter
    from ..pipeline import answer as run_answer

    proj = open_checked(project, domain)
    shown = RepeatFilter()  # a streamed line that repeats an earlier one is never printed, as in the answer

    streamed: list[str] = []

    def show(text: str) -> None:
        streamed.append(text)
        out.print(text, end="", highlight=False, markup=False)

    on_token = (lambda piece: show(shown.feed(piece))) if stream and not as_json else None
    result = run_answer(proj, question, k=k, domain=domain, on_token=on_token, route=not no_route,
                        use_adapter=not no_adapter, retrieval=not no_retrieval,
                        filters=Filters(tags=tuple(tag), title=title))
    if as_json:
        emit(result.to_dict())
        return
    if on_token:
        show(shown.finish())
        out.print()
        if " ".join("".join(streamed).split()) != " ".join(result.answer.split()):  # checking changed it
            out.print("[yellow]checked answer[/] [dim](the text above as generated; loradex's checks changed it, "
                      "this is the answer they verified)[/]", highlight=False)
            out.print(result.answer, highlight=False, markup=False)
    else:
        out.print(result.answer, highlight=False, markup=False)
    r = result.route
    how = (f"route: [bold]{r.domain}[/] ({r.reason or 'router'}, score {r.score:.2f})" if r.domain else
           f"route: [yellow]none ({r.reason}{', best ' + r.best if r.best else ''})[/], base model, all sources")
    out.print(f"[dim]{how}; adapter: {result.adapter or 'none (base model)'}[/]", highlight=False)
    _print_sources(result)


def _print_sources(result: Answer) -> None:
    marks = {c.n: ("[red]not supported[/]" if not c.verified else
                   "[green]verified[/] [dim](citation added by loradex)[/]" if c.added else "[green]verified[/]")
             for c in result.citations}
    if result.abstained:
        why = ("the model found no answer in the sources" if result.usage.get("completion_tokens") else
               "no passage was close enough to the question")
        out.print(f"[yellow](abstained: {why})[/]")
    if result.repeated:
        out.print(f"[yellow]removed {len(result.repeated)} repeated sentence(s): the model looped[/]", highlight=False)
    for r in result.removed:
        out.print(f"[yellow]removed, no source supports it:[/] {r}", highlight=False)
    if result.usage.get("unfinished"):
        out.print(f"[yellow]cut at answer.max_new_tokens ({result.usage.get('completion_tokens')} tokens); the "
                  f"unfinished last sentence was left out:[/] {result.usage['unfinished']}", highlight=False)
    for f in result.flagged:
        better = f" (source {', '.join(map(str, f['supported_by']))} would support it)" if f["supported_by"] else ""
        what = "unsupported:" if f["cited"] else "uncited:" if better else "uncited, no source supports it:"
        out.print(f"[red]{what}[/] {f['sentence']}{better}", highlight=False)
    out.print("\n[bold]Sources[/]")
    for s in result.sources:
        found = "" if s.in_prompt else " [dim](found after the answer: not in the prompt)[/]"
        out.print(f"[{s.n}] {s.label()} {marks.get(s.n, '[dim]not cited[/]')}{found}", highlight=False)
        out.print(f"    [dim]{s.quote}[/]", highlight=False)
    t = result.timings_ms
    out.print(f"[dim]retrieve {t['retrieve']:.0f} ms, generate {t['generate']:.0f} ms, verify {t['verify']:.0f} ms[/]")


def migrate(to: str = typer.Option(..., "--to", help="PostgreSQL URL without a password: "
                                   "postgresql://user@host:5432/database."),
            password_env: Optional[str] = typer.Option(None, help="Environment variable holding the password."),
            batch_chunks: int = typer.Option(512, min=1, help="Chunks copied per transaction."),
            reset: bool = typer.Option(False, help="Empty the destination first and start over."),
            project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Copy the project's index into PostgreSQL + pgvector without embedding again; resumable; verified."""
    from pydantic import ValidationError

    from ..config import StoreConfig
    from ..errors import ConfigError
    from ..migrate import migrate as run_migrate

    try:
        StoreConfig(backend="pgvector", uri=to, password_env=password_env)  # refuses a URL holding a password
    except ValidationError as e:  # its own text would repeat the URL, password and all
        raise ConfigError("--to: " + e.errors()[0]["msg"].removeprefix("Value error, ")) from None
    proj = open_checked(project)
    with progress("copying", "chunks", disable=as_json) as update:
        report = run_migrate(proj, to, password_env=password_env, batch_chunks=batch_chunks, reset=reset,
                             progress=update)
    if as_json:
        emit(report.to_dict())
        return
    out.print(f"copied {report.copied_documents} documents ({report.copied_chunks} chunks) to {report.destination} "
              f"in {report.seconds:.1f} s; {report.resumed_documents} were already there; verified: "
              f"{report.chunks} chunks, every document's chunk ids equal", highlight=False)
    env = f"\n  password_env: {password_env}" if password_env else ""
    out.print(f"to use it, set in loradex.yaml:\nstore:\n  backend: pgvector\n  uri: {to}{env}", highlight=False)
