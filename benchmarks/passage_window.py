"""Choose `answer.window` by measurement: is the answer in what the model is given to read?

For each window (neighbouring chunks added on each side of a retrieved one, `loradex.retrieve.widen`), every
answerable question of an eval set is prepared as `loradex ask` would (routed to its domain where the project
has domains; no generation), and we count how often the reference answer's content words are in the sources
(`answer_in_sources`, at least half of them, as `loradex eval` scores it), with a 95% bootstrap interval, and
what it costs in prompt tokens. Data: the example project's eval set and PolicyQA's held-out questions (run
examples/policyqa/prepare.py and ingest first; skipped when absent).

Usage: .venv/bin/python benchmarks/passage_window.py [--windows 0,1,2] [--json]
"""
from __future__ import annotations

import argparse
import json

from _common import REPO, RESULTS, machine_info, now_iso, write_json
from loradex.evaluate.metrics import contains_reference
from loradex.evaluate.questions import load_questions
from loradex.evaluate.stats import bootstrap
from loradex.pipeline import prepare
from loradex.project import open_project

SETS = {"insurance": REPO / "examples" / "insurance", "policyqa": REPO / "examples" / "policyqa"}


def measure(root, window: int) -> dict:
    project = open_project(root)
    project.config = project.config.model_copy(
        update={"answer": project.config.answer.model_copy(update={"window": window})})
    questions = [q for q in load_questions(root / "eval" / "questions.jsonl") if q.answerable and q.answers]
    found, chars = [], []
    for q in questions:
        p = prepare(project, q.question, use_adapter=False, route=bool(project.config.domains),
                    min_dense_score=-1.0)
        texts = [h.chunk.text for h in p.hits]
        found.append(float(contains_reference("\n".join(texts), q.answers)))
        chars.append(sum(len(t) for t in texts))
    interval = bootstrap(found)
    assert interval is not None
    return {"answer_in_sources": interval.to_dict(), "mean_source_chars": round(sum(chars) / len(chars)),
            "prompt_tokens_approx": round(sum(chars) / len(chars) / 4), "questions": len(questions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", default="0,1,2")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result: dict = {"benchmark": "passage_window", "date": now_iso(), "by_set": {}, "machine": machine_info()}
    for name, root in SETS.items():
        if not (root / "eval" / "questions.jsonl").is_file() or not (root / ".loradex").is_dir():
            continue
        result["by_set"][name] = {}
        for w in (int(x) for x in args.windows.split(",")):
            row = measure(root, w)
            result["by_set"][name][str(w)] = row
            if not args.json:
                a = row["answer_in_sources"]
                print(f"{name:>9} window {w}: answer in sources {a['value']:.2f} [{a['low']:.2f}, {a['high']:.2f}] "
                      f"(n={a['n']}), {row['mean_source_chars']} characters of sources", flush=True)
    write_json(RESULTS / "passage_window.json", result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
