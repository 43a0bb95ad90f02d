"""Choose `answer.no_repeat_ngram` by measurement: the example project's eval set answered with n-gram
blocking off and at several n, in the modes a user sees (rag: base model with sources; hybrid: routed adapter
with sources), with the project's active adapters.

For each n: degenerate repetition (a sentence three times or more, in the model's own output before loradex
removes repeats: the `repeated` sentences are put back for this count), content-word correctness, verified
citations and format adherence, each with its 95% bootstrap interval (`loradex eval`'s metrics and statistics).
Blocking that only trades repetition for wrong answers is visible here.

Usage: .venv/bin/python benchmarks/no_repeat_ngram.py [--n 0,8,12] [--modes rag,hybrid] [--limit N] [--json]
Needs the example project ingested with its adapters active (`make demo` does both).
"""
from __future__ import annotations

import argparse
import json

from _common import REPO, RESULTS, machine_info, now_iso, write_json
from loradex.cite import repeat_key, same_sentence
from loradex.evaluate.questions import load_questions
from loradex.evaluate.run import evaluate
from loradex.evaluate.stats import bootstrap
from loradex.project import open_project

PROJECT = REPO / "examples" / "insurance"
METRICS = ("contains_answer", "verified_citation", "format_ok", "citation_recall")


def _model_looped(row: dict) -> float:
    """1.0 when the model wrote some sentence three times or more (loradex kept one and removed the rest)."""
    keys = [repeat_key(s) for s in row["result"].get("repeated", [])]
    return float(any(same_sentence(k, e) for i, k in enumerate(keys) for e in keys[:i]))


def _interval(values: list) -> dict | None:
    found = bootstrap(values)
    return found.to_dict() if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="0,8,12", help="n values to compare (0: off)")
    parser.add_argument("--modes", default="rag,hybrid")
    parser.add_argument("--limit", type=int, default=None, help="first N answerable questions (default all)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    project = open_project(PROJECT)
    questions = [q for q in load_questions(PROJECT / "eval" / "questions.jsonl") if q.answerable][: args.limit]
    modes = args.modes.split(",")
    result: dict = {"benchmark": "no_repeat_ngram", "date": now_iso(), "questions": len(questions),
                    "modes": modes, "by_n": {}, "machine": machine_info()}
    for n in (int(x) for x in args.n.split(",")):
        project.config = project.config.model_copy(
            update={"answer": project.config.answer.model_copy(update={"no_repeat_ngram": n})})
        rows = evaluate(project, questions, modes)
        per_mode = {}
        for mode in modes:
            mine = [r for r in rows if r["mode"] == mode]
            stats = {m: _interval([r["metrics"][m] for r in mine]) for m in METRICS}
            stats["model_looped"] = _interval([_model_looped(r) for r in mine])
            stats["repeats_removed"] = _interval([float(bool(r["result"].get("repeated"))) for r in mine])
            per_mode[mode] = stats
        result["by_n"][str(n)] = per_mode
        if not args.json:
            for mode, stats in per_mode.items():
                print(f"n={n:>2} {mode:>7}: " + "; ".join(f"{k} {v['value']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"
                                                         for k, v in stats.items() if v), flush=True)
    write_json(RESULTS / "no_repeat_ngram.json", result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
