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

from .adapters.data import DataError
from .adapters.registry import AdapterError
from .config import ConfigError
from .embed import EmbedderNotFound
from .ingest.ingest import ingest as run_ingest
from .project import init_project, open_project
from .retrieve import search as run_search
from .route import RouterError
from .store import StoreError
from .types import Filters

app = typer.Typer(help="loradex: cited answers from your documents, domain adapters, one router.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
docs_app = typer.Typer(help="Inspect and remove indexed documents.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
adapters_app = typer.Typer(help="List, activate, roll back, remove and import LoRA adapters.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")

# A pipe or a log gets wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ProjectOpt = typer.Option(Path("."), "--project", "-p", help="Project folder (holds loradex.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
EXIT_SKIPPED = 3
_KNOWN_ERRORS = (ConfigError, EmbedderNotFound, StoreError, DataError, AdapterError, RouterError, ValueError,
                 FileNotFoundError)


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
def serve(host: Optional[str] = typer.Option(None, help="Address (default: server.host, 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, help="Port (default: server.port, 8000)."),
          project: Path = ProjectOpt):
    """Serve the OpenAI-compatible API, the admin endpoints and the chat page (loradex[server])."""
    try:
        from .server.app import serve as run_serve
    except ImportError as e:
        _fail(ImportError(f"{e}; install the server extra: pip install 'loradex[server]'"))
    proj = _open(project)
    cfg = proj.config.server
    err.print(f"loradex serving {proj.root} on http://{host or cfg.host}:{port or cfg.port}/ "
              f"(OpenAI API under /v1, chat page at /)", highlight=False)
    try:
        run_serve(proj, host or cfg.host, port or cfg.port)
    except _KNOWN_ERRORS as e:
        _fail(e)


@app.command()
def route(query: Optional[str] = typer.Argument(None, help="The query to route."),
          file: Optional[Path] = typer.Option(None, "--file", help="Route one query a line (models load once)."),
          fit: bool = typer.Option(False, "--fit", help="Refit the router from the domains' examples and save it."),
          project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Which domain a query goes to, every domain's calibrated score, and whether the router abstains."""
    from .route import fit_project_router, route_queries

    proj = _open(project)
    try:
        if fit:
            router = fit_project_router(proj)
            info = {"domains": router.domains, "method": router.method, "examples": router.meta["examples"],
                    "calibration_examples": router.meta["calibration_examples"],
                    "calibration_accuracy": router.meta["calibration_accuracy"],
                    "temperature": router.temperature, "sim_thresholds": router.sim_thresholds}
            if as_json:
                _emit(info)
            else:
                out.print(f"router fitted ({router.method}) on {info['examples']} examples of {len(router.domains)} "
                          f"domains; held-out accuracy {info['calibration_accuracy']:.2f} "
                          f"on {info['calibration_examples']}", highlight=False)
            if query is None and file is None:
                return
        if (query is None) == (file is None):
            raise ValueError("give a query, or --file QUERIES.txt (one a line), or --fit")
        queries = [query] if file is None else [q.strip() for q in file.read_text(encoding="utf-8").splitlines() if q.strip()]
        routes = route_queries(proj, queries)
    except _KNOWN_ERRORS as e:
        _fail(e)
    for q, r in zip(queries, routes):
        row = {"query": q, **r.to_dict()}
        if as_json:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        verdict = f"[yellow]abstained ({r.reason}), best {r.best}[/]" if r.abstained else f"[bold]{r.domain}[/]"
        scores = "  ".join(f"{d} {s:.2f}" for d, s in sorted(r.scores.items(), key=lambda x: -x[1]))
        out.print(f"{verdict}  [dim]{scores}[/]  {q if file else ''}", highlight=False)


@app.command()
def ask(question: str = typer.Argument(..., help="The question."),
        domain: Optional[str] = typer.Option(None, help="The question's domain (skips the router)."),
        k: Optional[int] = typer.Option(None, "--k", "-k", help="Passages given as sources (default: answer.k)."),
        stream: bool = typer.Option(False, "--stream", help="Print the answer as it is generated."),
        no_route: bool = typer.Option(False, "--no-route", help="Skip the router: base model, all sources."),
        no_adapter: bool = typer.Option(False, "--no-adapter", help="Use the bare base model (RAG only)."),
        no_retrieval: bool = typer.Option(False, "--no-retrieval", help="No sources (adapter only)."),
        project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Route, retrieve from the domain's sources, answer with its adapter, and check every citation."""
    from .pipeline import answer as run_answer

    proj = _open(project)
    _check_domain(proj, domain)
    on_token = (lambda piece: out.print(piece, end="", highlight=False, markup=False)) if stream and not as_json else None
    try:
        result = run_answer(proj, question, k=k, domain=domain, on_token=on_token, route=not no_route,
                            use_adapter=not no_adapter, retrieval=not no_retrieval)
    except _KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        _emit(result.to_dict())
        return
    out.print() if on_token else out.print(result.answer, highlight=False, markup=False)
    r = result.route
    how = (f"route: [bold]{r['domain']}[/] ({r['reason'] or 'router'}, score {r['score']:.2f})" if r["domain"] else
           f"route: [yellow]none ({r['reason']}{', best ' + r['best'] if r.get('best') else ''})[/], base model, all sources")
    out.print(f"[dim]{how}; adapter: {result.adapter or 'none (base model)'}[/]", highlight=False)
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


@app.command()
def train(domain: str = typer.Argument(..., help="Domain (adapter name) to train."),
          data: Path = typer.Option(..., "--data", help="JSONL: chat messages, alpaca, or prompt/completion."),
          epochs: int = typer.Option(3, help="Passes over the training split."),
          max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Cap on optimizer steps (quick checks)."),
          lr: float = typer.Option(2e-3, help="Learning rate (at 3e-4 SmolLM2-135M learned no layout in 2 epochs; 2e-3 did: benchmarks/adapter_effect.py)."),
          rank: int = typer.Option(8, help="LoRA rank."),
          alpha: int = typer.Option(16, help="LoRA alpha."),
          batch_size: int = typer.Option(4, "--batch-size", help="Examples per step."),
          max_seq_len: int = typer.Option(1024, "--max-seq-len", help="Tokens per example (prompt is cut first)."),
          save_every: int = typer.Option(10, "--save-every", help="Checkpoint every N steps (for resuming)."),
          with_context: bool = typer.Option(False, "--with-context", help="RAFT-style: train with retrieved sources."),
          replay: float = typer.Option(0.25, help="Share of general prompts answered by the base model mixed in "
                                       "against forgetting (0: off; benchmarks/adapter_effect.py)."),
          activate: bool = typer.Option(False, "--activate", help="Activate the new version when done."),
          project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Train a LoRA adapter for a domain and register it (resumes if interrupted)."""
    from .adapters.context import with_context as add_context
    from .adapters.data import load_examples
    from .adapters.train import TrainSettings
    from .adapters.train import train as run_train

    proj = _open(project)
    try:
        examples, dupes = load_examples(data)
        if with_context:
            examples = add_context(proj, examples, domain=domain if domain in proj.config.domains else None)
        settings = TrainSettings(epochs=epochs, max_steps=max_steps, lr=lr, rank=rank, alpha=alpha,
                                 batch_size=batch_size, max_seq_len=max_seq_len, save_every=save_every,
                                 replay=replay)
        if dupes and not as_json:
            err.print(f"[yellow]dropped {dupes} duplicate example(s)[/]")
        with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps, loss {task.fields[loss]}"),
                      TimeRemainingColumn(), console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task("train", total=None, loss="-")
            ref, metrics = run_train(proj, domain, examples, settings, activate=activate,
                                     progress=lambda step, total, loss: bar.update(
                                         task, completed=step, total=total, loss=f"{loss:.3f}"))
    except _KNOWN_ERRORS as e:
        _fail(e)
    if as_json:
        _emit({"adapter": ref.label, "version": ref.version, "path": str(ref.path), "active": activate,
               "duplicates_dropped": dupes, "metrics": metrics})
        return
    out.print(f"registered [bold]{ref.label}[/]{' (active)' if activate else ''}: held-out loss "
              f"{metrics['initial_eval_loss']:.3f} -> {metrics['best_eval_loss']:.3f} (best at step {metrics['best_step']}), "
              f"{metrics['steps']} steps in {metrics['seconds']:.0f} s; loss curve: {ref.path / 'loss_curve.png'}",
              highlight=False)


def _registry(project: Path):
    proj = _open(project)
    try:
        return proj.registry
    except _KNOWN_ERRORS as e:
        _fail(e)


def _adapter_call(fn, *args):
    try:
        return fn(*args)
    except _KNOWN_ERRORS as e:
        _fail(e)


@adapters_app.command("list")
def adapters_list(project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Every registered adapter version; the active one per domain is marked."""
    rows = _registry(project).list()
    if as_json:
        _emit(rows)
        return
    table = Table("adapter", "active", "size", "held-out loss", "steps")
    for r in rows:
        m = r["metrics"]
        table.add_row(r["label"], "*" if r["active"] else "", f"{(r['size_bytes'] or 0) / 1e6:.1f} MB",
                      f"{m['best_eval_loss']:.3f}" if m.get("best_eval_loss") is not None else "-", str(m.get("steps", "-")))
    out.print(table)


@adapters_app.command("show")
def adapters_show(domain: str, version: Optional[str] = typer.Argument(None, help="Hash prefix (default: active)."),
                  project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """An adapter's manifest: hashes, base model, hyperparameters, metrics."""
    reg = _registry(project)
    ref = _adapter_call(reg.resolve, domain, version)
    manifest = reg.manifest(ref)
    if as_json:
        _emit({"label": ref.label, "path": str(ref.path), **manifest})
    else:
        out.print_json(json.dumps({"label": ref.label, "path": str(ref.path), **manifest}))


@adapters_app.command("activate")
def adapters_activate(domain: str, version: str = typer.Argument(..., help="Hash prefix of the version."),
                      project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Validate a version and make it the domain's active adapter (atomic)."""
    ref = _adapter_call(_registry(project).activate, domain, version)
    _emit({"active": ref.label}) if as_json else out.print(f"active: {ref.label}")


@adapters_app.command("rollback")
def adapters_rollback(domain: str, project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Make the previously active version active again (or none: the bare base model)."""
    ref = _adapter_call(_registry(project).rollback, domain)
    label = ref.label if ref else None
    _emit({"active": label}) if as_json else out.print(f"active: {label or 'none (base model)'}")


@adapters_app.command("rm")
def adapters_rm(domain: str, version: str, project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Delete a version that is not active."""
    ref = _adapter_call(_registry(project).remove, domain, version)
    _emit({"removed": ref.label}) if as_json else out.print(f"removed {ref.label}")


@adapters_app.command("export")
def adapters_export(domain: str, dest: Path = typer.Argument(..., help="Folder to write (must not exist)."),
                    version: Optional[str] = typer.Option(None, help="Hash prefix (default: the active version)."),
                    project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Copy a version out as a plain PEFT folder with its manifest (for another project, PEFT or vLLM)."""
    import shutil

    ref = _adapter_call(_registry(project).resolve, domain, version)
    if dest.exists():
        _fail(ValueError(f"{dest} exists; give a new folder"))
    shutil.copytree(ref.path, dest)
    _emit({"exported": ref.label, "path": str(dest)}) if as_json else out.print(f"exported {ref.label} to {dest}")


@adapters_app.command("import")
def adapters_import(path: Path = typer.Argument(..., help="A PEFT adapter folder."),
                    domain: str = typer.Option(..., "--domain", help="Register it under this domain."),
                    activate: bool = typer.Option(False, "--activate"),
                    project: Path = ProjectOpt, as_json: bool = JsonOpt):
    """Validate and register an adapter trained elsewhere (safetensors only, same base model)."""
    reg = _registry(project)
    manifest = {}
    if (path / "manifest.json").is_file():  # a loradex export: keep its training record (hashes are recomputed)
        try:
            manifest = {k: v for k, v in json.loads((path / "manifest.json").read_text()).items()
                        if k in ("hyperparameters", "metrics", "training_data_sha256", "chat_template_sha256",
                                 "system_message_sha256", "created_at")}
        except (OSError, ValueError) as e:
            _fail(AdapterError(f"{path / 'manifest.json'}: unreadable ({e})"))
    ref = _adapter_call(reg.register, path, domain, {**manifest, "imported_from": str(path.resolve())})
    if activate:
        _adapter_call(reg.activate, domain, ref.version)
    _emit({"imported": ref.label, "active": activate}) if as_json else out.print(f"imported {ref.label}")


if __name__ == "__main__":
    app()
