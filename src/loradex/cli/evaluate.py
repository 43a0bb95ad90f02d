"""`loradex eval`: answer evaluation questions in several modes and compare them with intervals; `loradex decide`:
retrieval, an adapter or both for each capability, from those answers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..evaluate.report import HEADLINE
from ..evaluate.run import MODES
from ._common import JsonOpt, ProjectOpt, emit, open_checked, out, progress


def evaluate(questions: Path = typer.Argument(..., help="JSONL of questions (see loradex.evaluate.questions)."),
             modes: str = typer.Option(",".join(MODES), help="Comma-separated modes: " + ", ".join(MODES) + "."),
             limit: Optional[int] = typer.Option(None, help="Evaluate this many questions, drawn with --seed."),
             seed: int = typer.Option(0, help="Seed of the --limit draw and of the bootstrap."),
             domain: Optional[str] = typer.Option(None, help="Only the questions of these domains "
                                                              "(comma-separated), e.g. after retraining one adapter."),
             out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for results.jsonl, summary.json and "
                                                    "report.html "
                                                    "(default .loradex/eval/latest in the project)."),
             project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Answer every question in every mode (cached), score the answers, and compare each mode with rag."""
    from ..evaluate.questions import draw, load_questions
    from ..evaluate.report import write_report
    from ..evaluate.run import evaluate as run_eval
    from ..evaluate.run import summarise

    proj = open_checked(project)
    qs = load_questions(questions, domains=set(proj.config.domains), formats=set(proj.config.formats))
    if domain:
        wanted = {d.strip() for d in domain.split(",") if d.strip()}
        if unknown := wanted - set(proj.config.domains):
            raise typer.BadParameter(f"no domain {', '.join(sorted(unknown))} in the project; its domains are "
                                     f"{', '.join(proj.config.domains)}", param_hint="--domain")
        qs = [q for q in qs if q.domain in wanted]
    qs = draw(qs, limit, seed)
    with progress("answering", "answers", disable=as_json) as update:
        rows = run_eval(proj, qs, [m.strip() for m in modes.split(",") if m.strip()], progress=update)
    summary = summarise(rows, seed=seed)
    folder = out_dir or proj.state_dir / "eval" / "latest"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    cards = _cards_for_file(proj, questions, rows)
    write_report(rows, summary, {q.id: q.domain for q in qs}, folder / "report.html", f"loradex eval: {questions.name}",
                 cards=cards)
    if as_json:
        emit(summary)
        return
    _print_summary(summary)
    out.print(f"[dim]{len(rows)} answers; every row in {folder / 'results.jsonl'}, intervals in "
              f"{folder / 'summary.json'}, the report in {folder / 'report.html'}[/]", highlight=False)


def _cell(interval: dict | None) -> str:
    if interval is None:
        return "-"
    if interval.get("n", 2) < 2:  # one question: its bootstrap interval is a point, not a measurement of spread
        return f"{interval['value']:.2f} (n=1, no interval)"
    return f"{interval['value']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"


def _print_summary(summary: dict) -> None:
    table = Table("metric", *summary["modes"], title="mean [95% bootstrap interval]")
    for metric in HEADLINE:
        cells = [_cell(summary["metrics"][m][metric]) for m in summary["modes"]]
        if any(c != "-" for c in cells):
            table.add_row(metric, *cells)
    out.print(table)
    for mode, diffs in summary["versus"].items():
        shown = {k: v for k, v in diffs.items() if v is not None and k in HEADLINE}
        if shown:
            out.print(f"{mode} - rag: " + "; ".join(f"{k} {_cell(v)}" for k, v in shown.items()), highlight=False)


def _cards_for_file(proj, questions: Path, rows: list[dict]) -> list[dict]:
    """Decision cards of the capabilities whose questions come from the evaluated file (for the report)."""
    from ..evaluate.decide import capability_questions, cards_from_rows

    chosen = {n: c for n, c in proj.config.capabilities.items()
              if c.questions and (proj.root / c.questions).resolve() == questions.resolve()}
    if not chosen:
        return []
    answered = {r["id"] for r in rows}
    qs = {n: [q for q in capability_questions(proj, c) if q.id in answered] for n, c in chosen.items()}
    return cards_from_rows(proj, chosen, qs, rows)


def decide(capabilities: Optional[list[str]] = typer.Argument(None, help="Capabilities to decide (default: all)."),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for cards.json, results.jsonl and "
                                                  "report.html (default .loradex/eval/decide in the project)."),
           limit: Optional[int] = typer.Option(None, help="Measure on this many questions per capability, drawn "
                                               "with --seed (a quick look; the intervals widen)."),
           seed: int = typer.Option(0, help="Seed of the --limit draw and of the bootstrap."),
           project: Path = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Retrieval, an adapter or both, per capability in loradex.yaml: six questions, stated, inferred or
    measured (eval answers in base, rag, adapter and hybrid mode, cached), and where they disagree."""
    from ..evaluate.decide import decide as run_decide
    from ..evaluate.report import write_report
    from ..evaluate.run import summarise

    proj = open_checked(project)
    with progress("answering", "answers", disable=as_json) as update:
        cards, rows, questions = run_decide(proj, capabilities or (), seed=seed, limit=limit, progress=update)
    folder = out_dir or proj.state_dir / "eval" / "decide"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cards.json").write_text(json.dumps(cards, indent=1))
    (folder / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if rows:
        write_report(rows, summarise(rows, seed=seed), {q.id: q.domain for q in questions}, folder / "report.html",
                     "loradex decide", cards=cards)
    if as_json:
        emit({"cards": cards})
        return
    for c in cards:
        _print_card(c)
    out.print(f"[dim]cards in {folder / 'cards.json'}; every answer in {folder / 'results.jsonl'}[/]", highlight=False)


def _print_card(c: dict) -> None:
    out.print(f"\n[bold]{c['capability']}[/] ({', '.join(c['domains']) or 'all domains'}): "
              f"[bold cyan]{c['recommendation']}[/]  {c['description']}", highlight=False)
    for part, why in c["parts"].items():
        out.print(f"  {part}: {why}", highlight=False)
    table = Table("question", "answer", "from", "evidence", show_lines=False)
    for q, a in c["answers"].items():
        value = "-" if a["answer"] is None else ("yes" if a["answer"] else "no")
        table.add_row(q.replace("_", " "), value, a["source"], a["evidence"])
    out.print(table)
    for d in c["disagreements"]:
        out.print(f"  [yellow]disagreement: {d}[/]", highlight=False)
    for n in c["notes"]:
        out.print(f"  note: {n}", highlight=False)
