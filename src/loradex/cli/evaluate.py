"""`loradex eval`: answer evaluation questions in several modes and compare them with intervals."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..evaluate.run import MODES
from ._common import JsonOpt, ProjectOpt, emit, open_checked, out, progress

SHOWN = ("contains_answer", "token_f1", "citation_recall", "citation_precision", "format_ok", "repetition",
         "abstained_right", "abstained_wrongly", "routed_right")


def evaluate(questions: Path = typer.Argument(..., help="JSONL of questions (see loradex.evaluate.questions)."),
             modes: str = typer.Option(",".join(MODES), help="Comma-separated modes: " + ", ".join(MODES) + "."),
             limit: Optional[int] = typer.Option(None, help="Evaluate this many questions, drawn with --seed."),
             seed: int = typer.Option(0, help="Seed of the --limit draw and of the bootstrap."),
             out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for results.jsonl, summary.json and "
                                                    "report.html "
                                                    "(default .loradex/eval/latest in the project)."),
             project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Answer every question in every mode (cached), score the answers, and compare each mode with rag."""
    from ..evaluate.questions import load_questions
    from ..evaluate.report import write_report
    from ..evaluate.run import evaluate as run_eval
    from ..evaluate.run import summarise

    proj = open_checked(project)
    qs = load_questions(questions, domains=set(proj.config.domains), formats=set(proj.config.formats))
    if limit is not None and limit < len(qs):
        keep = set(random.Random(seed).sample(range(len(qs)), limit))
        qs = [q for i, q in enumerate(qs) if i in keep]
    with progress("answering", "answers", disable=as_json) as update:
        rows = run_eval(proj, qs, [m.strip() for m in modes.split(",") if m.strip()], progress=update)
    summary = summarise(rows, seed=seed)
    folder = out_dir or proj.state_dir / "eval" / "latest"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    write_report(rows, summary, {q.id: q.domain for q in qs}, folder / "report.html", f"loradex eval: {questions.name}")
    if as_json:
        emit(summary)
        return
    _print_summary(summary)
    out.print(f"[dim]{len(rows)} answers; every row in {folder / 'results.jsonl'}, intervals in "
              f"{folder / 'summary.json'}, the report in {folder / 'report.html'}[/]", highlight=False)


def _cell(interval: dict | None) -> str:
    return "-" if interval is None else f"{interval['value']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"


def _print_summary(summary: dict) -> None:
    table = Table("metric", *summary["modes"], title="mean [95% bootstrap interval]")
    for metric in SHOWN:
        cells = [_cell(summary["metrics"][m][metric]) for m in summary["modes"]]
        if any(c != "-" for c in cells):
            table.add_row(metric, *cells)
    out.print(table)
    for mode, diffs in summary["versus"].items():
        shown = {k: v for k, v in diffs.items() if v is not None and k in SHOWN}
        if shown:
            out.print(f"{mode} - rag: " + "; ".join(f"{k} {_cell(v)}" for k, v in shown.items()), highlight=False)
