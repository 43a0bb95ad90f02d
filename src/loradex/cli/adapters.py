"""`loradex train` and `loradex adapters`: train, list, show, activate, roll back, remove, export, import, push.

`train` takes its defaults and help texts from `TrainSettings` (one place for each default)."""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..adapters.train import TrainSettings
from ..errors import QueryError
from ._common import JsonOpt, ProjectOpt, emit, err, new_app, open_checked, out, progress

adapters_app = new_app("List, activate, roll back, remove, export and import LoRA adapters.")
_FLAGS = ("epochs", "max_steps", "lr", "rank", "alpha", "dropout", "target_modules", "batch_size", "max_seq_len",
          "eval_fraction", "save_every", "seed", "replay", "context", "context_k", "context_sources", "gold_share",
          "distractor_pool", "label_weight")


def train(domain: str = typer.Argument(..., help="Domain (adapter name) to train."),
          data: Path = typer.Option(..., "--data", help="JSONL: chat messages, alpaca, or prompt/completion."),
          activate: bool = typer.Option(False, "--activate", help="Activate the new version when done."),
          check: bool = typer.Option(False, "--check", help=(
              "Build the training examples and report what no source supports, without training.")),
          prepare: Optional[Path] = typer.Option(None, "--prepare", help=(
              "Write the training job to this folder instead of training (train it on another machine with "
              "`python -m loradex.adapters.remote DIR MODEL_DIR`, then `loradex adapters import DIR/adapter`).")),
          project: Path = ProjectOpt, as_json: bool = JsonOpt, **settings: Any) -> None:
    """Train a LoRA adapter for a domain and register it (resumes if interrupted)."""
    from ..adapters.data import load_examples
    from ..adapters.train import train as run_train

    train_settings = _train_settings(settings)
    proj = _open_for(project, domain)
    examples, dupes = load_examples(data)
    if dupes and not as_json:
        err.print(f"[yellow]dropped {dupes} duplicate example(s)[/]")
    if check:
        _check(proj, domain, examples, train_settings, as_json)
        return
    if prepare is not None:
        from ..adapters.remote import prepare_job

        job = prepare_job(proj, domain, examples, train_settings, prepare)
        if as_json:
            emit(job)
        else:
            out.print(f"wrote {job['examples']} examples and job.json to {prepare}; train them on the other machine "
                      f"with `python -m loradex.adapters.remote {prepare} MODEL_DIR`, then `loradex adapters import "
                      f"{prepare}/adapter --domain {domain}`", highlight=False)
        return
    from ..adapters.distributed import current

    with progress("training", "steps", disable=as_json or not current().main, loss="-") as update:
        ref, metrics = run_train(proj, domain, examples, train_settings, activate=activate,
                                 progress=lambda step, total, loss: update(step, total, loss=f"{loss:.3f}"))
    if ref is None:  # another process of a torchrun: rank 0 reports
        return
    if as_json:
        emit({"adapter": ref.label, "version": ref.version, "path": str(ref.path), "active": activate,
              "duplicates_dropped": dupes, "metrics": metrics})
        return
    if metrics.get("context"):
        _print_context(json.loads(Path(metrics["context"]["report"]).read_text()), metrics["context"]["report"])
    out.print(f"registered [bold]{ref.label}[/]{' (active)' if activate else ''}: held-out loss "
              f"{metrics['initial_eval_loss']:.3f} -> {metrics['best_eval_loss']:.3f} "
              f"(best at step {metrics['best_step']}), "
              f"{metrics['steps']} steps in {metrics['seconds']:.0f} s; loss curve: {ref.path / 'loss_curve.png'}",
              highlight=False)
    if metrics["best_step"] == 0:  # the kept adapter is the untrained one: LoRA B is zero, the base model's answers
        err.print("[yellow]no training step lowered the held-out loss, so this version answers as the base model "
                  "does:[/] train for more steps (--epochs, --max-steps) or change --lr, then activate the new one",
                  highlight=False)


def _open_for(project: Path, domain: str) -> Any:
    """The project, for training, importing or activating an adapter of `domain`. Raises QueryError when the
    project declares domains and `domain` is not one of them: the router would never send a question to it (a
    project without `domains:` names its adapters freely: the Python API and eval questions name the domain)."""
    proj = open_checked(project)
    names = list(proj.config.domains)
    if names and domain not in names:
        raise QueryError(f"unknown domain {domain!r}; the project has: {', '.join(names)}. An adapter under another "
                         "name would never be served: use one of those, or add the domain to loradex.yaml first")
    return proj


def _check(proj: Any, domain: str, examples: list, settings: TrainSettings, as_json: bool) -> None:
    """`train --check`: the retrieval-aware examples' report and their token lengths, no training."""
    from ..adapters.train import check_lengths, prepare_examples
    from ..errors import DataError
    from ..prompt import system_message

    rebuilt, built = prepare_examples(proj, domain, examples, settings)
    if built is None:
        raise typer.BadParameter("--check reports on retrieval-aware examples; drop --no-context")
    report: dict = built.to_dict()
    try:
        report["tokens"] = check_lengths(proj.base_model_dir, rebuilt, settings, system_message(proj.config.name))
    except DataError as e:
        report["tokens"] = {"error": str(e), "max_seq_len": settings.max_seq_len}
    if as_json:
        emit({"examples": len(examples), **report})
        return
    _print_context(report)
    t = report["tokens"]
    out.print(f"[yellow]{t['error']}[/]" if "error" in t else
              f"tokens per example: median {t['median']}, longest {t['longest']} (max_seq_len {t['max_seq_len']})",
              highlight=False)


def _print_context(report: dict, where: str | None = None) -> None:
    """What retrieval-aware training built, and the reference sentences no source supports (first five)."""
    out.print(f"sources in every prompt: {report['with_gold']} examples with the passages that support their "
              f"answer, {report['without_gold']} with distractors only (target: not covered)", highlight=False)
    if report["no_gold_found"]:
        out.print(f"[yellow]{len(report['no_gold_found'])} example(s) no retrieved passage supports (lines "
                  f"{', '.join(map(str, report['no_gold_found'][:10]))}): add the documents or fix the answers[/]")
    bad = report["unsupported_sentences"]
    if bad:
        out.print(f"[yellow]{len(bad)} reference sentence(s) no source supports: fine for form or judgement lines, "
                  f"but a fact there is learned from memory[/]{f' (all in {where})' if where else ''}:",
                  highlight=False)
        for u in bad[: 5 if where else None]:
            out.print(f"  line {u['line']}: {u['sentence']}", highlight=False)


def _train_settings(flags: dict[str, Any]) -> TrainSettings:
    """The flags as TrainSettings: `--target-modules` is a comma-separated list of module names."""
    names = tuple(n.strip() for n in flags["target_modules"].split(",") if n.strip())
    if not names:
        raise typer.BadParameter("give at least one module name, e.g. q_proj,v_proj", param_hint="--target-modules")
    settings = TrainSettings(**dict(flags, target_modules=names))
    if settings.context:
        from ..adapters.context import check_settings

        try:
            check_settings(settings.context_k, settings.distractor_pool, settings.gold_share, settings.context_sources)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    return settings


def _settings_parameters() -> list[inspect.Parameter]:
    """`--epochs`, `--lr`, ...: one option per TrainSettings field in `_FLAGS`, with its default and help."""
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    params = []
    for name in _FLAGS:
        f = fields[name]
        kind = {"int | None": Optional[int], "int": int, "float": float, "bool": bool,
                "tuple[str, ...]": str, "str": str}.get(str(f.type))
        flag = "--" + name.replace("_", "-")
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        option = typer.Option(default, f"{flag}/--no-{flag[2:]}" if kind is bool else flag, help=f.metadata["help"])
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
    return params


def _with_settings(fn: Any) -> Any:
    sig = inspect.signature(fn)
    fixed = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    fn.__signature__ = sig.replace(parameters=fixed + _settings_parameters())
    return fn


train = _with_settings(train)


@adapters_app.command("list")
def adapters_list(project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Every registered adapter version; the active one per domain is marked."""
    rows = open_checked(project).registry.versions()
    if as_json:
        emit(rows)
        return
    table = Table("adapter", "active", "size", "held-out loss", "steps")
    for r in rows:
        m = r["metrics"]
        table.add_row(r["label"], "*" if r["active"] else "", f"{(r['size_bytes'] or 0) / 1e6:.1f} MB",
                      f"{m['best_eval_loss']:.3f}" if m.get("best_eval_loss") is not None else "-",
                      str(m.get("steps", "-")) if not r["invalid"] else "[red]invalid[/]")
    out.print(table)
    for r in rows:
        if r["invalid"]:
            err.print(f"[red]{r['invalid']}[/]", highlight=False)


@adapters_app.command("show")
def adapters_show(domain: str, version: Optional[str] = typer.Argument(None, help="Hash prefix (default: active)."),
                  project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """An adapter's manifest: hashes, base model, hyperparameters, metrics."""
    reg = open_checked(project).registry
    ref = reg.resolve(domain, version)
    shown = {"label": ref.label, "path": str(ref.path), **reg.manifest(ref)}
    emit(shown) if as_json else out.print_json(json.dumps(shown))


@adapters_app.command("activate")
def adapters_activate(domain: str, version: str = typer.Argument(..., help="Hash prefix of the version."),
                      project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Validate a version and make it the domain's active adapter (atomic)."""
    ref = _open_for(project, domain).registry.activate(domain, version)
    emit({"active": ref.label}) if as_json else out.print(f"active: {ref.label}")


@adapters_app.command("rollback")
def adapters_rollback(domain: str, project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Make the previously active version active again (or none: the bare base model)."""
    ref = open_checked(project).registry.rollback(domain)
    label = ref.label if ref else None
    emit({"active": label}) if as_json else out.print(f"active: {label or 'none (base model)'}")


@adapters_app.command("rm")
def adapters_rm(domain: str, version: str, project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Delete a version that is not active."""
    ref = open_checked(project).registry.remove(domain, version)
    emit({"removed": ref.label}) if as_json else out.print(f"removed {ref.label}")


@adapters_app.command("export")
def adapters_export(domain: str, dest: Path = typer.Argument(..., help="Folder to write (must not exist)."),
                    version: Optional[str] = typer.Option(None, help="Hash prefix (default: the active version)."),
                    project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Copy a version out as a plain PEFT folder with its manifest (for another project, PEFT or vLLM)."""
    reg = open_checked(project).registry
    ref = reg.resolve(domain, version)
    reg.export(ref, dest)
    emit({"exported": ref.label, "path": str(dest)}) if as_json else out.print(f"exported {ref.label} to {dest}")


@adapters_app.command("import")
def adapters_import(path: Path = typer.Argument(..., help="A PEFT adapter folder."),
                    domain: str = typer.Option(..., "--domain", help="Register it under this domain."),
                    activate: bool = typer.Option(False, "--activate", help="Activate it once registered."),
                    other_base: bool = typer.Option(False, "--allow-other-base", help=(
                        "Accept an adapter whose adapter_config.json names another base model (it must still "
                        "fit this base's shapes): for this model under another name.")),
                    project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Validate and register an adapter trained elsewhere (safetensors only, same base model)."""
    ref = _open_for(project, domain).registry.import_folder(path, domain, activate=activate, other_base=other_base)
    emit({"imported": ref.label, "active": activate}) if as_json else out.print(f"imported {ref.label}")


@adapters_app.command("push")
def adapters_push(domains: Optional[list[str]] = typer.Argument(None, help="Domains (default: all)."),
                  project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Load the active versions into the running vLLM server (engine: vllm) under their content-derived names."""
    from ..engine.vllm import push

    rows = push(open_checked(project), domains or ())
    if as_json:
        emit(rows)
    for r in rows if not as_json else ():
        if "error" in r:
            err.print(f"[red]refused {r['adapter']}[/]: {r['error']}", highlight=False)
        else:
            out.print(f"{r['adapter']}: {'loaded' if r['loaded'] else 'already loaded'} ({r['ms']:.0f} ms)")
    if any("error" in r for r in rows):
        raise typer.Exit(1)
