"""Build the PolicyQA adapters' training data from the 14 training policies (never the 6 held out).

Run after `prepare.py` and `loradex ingest -p examples/policyqa`. Writes, ignored by git:

- `train/raft.jsonl`: retrieval-aware examples in the form the adapter serves (`loradex.prompt.build_messages`):
  in 80% of them the paragraph chunk that holds the reference span is among 4 sources (the other 3 are the
  question's best-ranked hits from other paragraphs, any policy; each widened by `answer.window` neighbouring
  chunks as served), and the target quotes the span and cites it,
  `"<span>" [n]`; in the rest the 4 sources are distractors and the target is "the documents do not cover
  this". The gold is the data set's own answer paragraph, not a lexical guess: PolicyQA spans are often too
  short for `loradex.cite.support` to pick a passage. `loradex train` keeps examples that already hold sources.
- `train/closed.jsonl`: the same questions with the quoted span as the target and no sources: the fine-tune-only
  baseline (`loradex train --no-context`).

Usage: python examples/policyqa/build_training.py [--n 480] [--seed 17] [--json]
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
K, GOLD_SHARE, POOL = 4, 0.8, 12


def _norm(text: str) -> str:
    return " ".join(text.split())


def _span(answers: list[str]) -> str:
    return re.sub(r"[\s;,.:]+$", "", max(answers, key=len).strip())


def build(n: int = 480, seed: int = 17) -> dict[str, int]:
    """Write the two files (see the module docstring); returns counts. Raises FileNotFoundError when
    prepare.py has not been run."""
    from loradex.project import open_project
    from loradex.prompt import NO_SOURCES, build_messages
    from loradex.retrieve import search, widen
    from loradex.types import Filters

    rows = [json.loads(line) for line in (HERE / "train" / "questions.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    chosen = rng.sample(rows, min(n, len(rows)))
    project = open_project(HERE)
    cfg = project.config
    raft, closed, skipped = [], [], 0
    for row in chosen:
        span, gold_doc = _span(row["answers"]), row["gold_docs"][0]
        own = search(project.store, project.embedder, row["question"], cfg.retrieval, k=10,
                     filters=Filters(doc_ids=(gold_doc,)))
        gold = next((h for h in own if _norm(span) in _norm(h.chunk.text)), None)
        if gold is None or not span:
            skipped += 1  # the span crosses a chunk boundary
            continue
        hits = search(project.store, project.embedder, row["question"], cfg.retrieval, k=POOL)
        others = [h for h in hits if h.chunk.source.path != gold_doc]
        if rng.random() < GOLD_SHARE:
            sources = rng.sample(others, min(K - 1, len(others))) + [gold]
            rng.shuffle(sources)
            sources = widen(project.store, sources, cfg.answer.window, cfg.answer.passage_chars)  # as served
            n = next(i for i, h in enumerate(sources, start=1) if h.chunk.chunk_id == gold.chunk.chunk_id)
            target = f'"{span}" [{n}]'
        else:
            sources = widen(project.store, rng.sample(others, min(K, len(others))), cfg.answer.window,
                            cfg.answer.passage_chars)
            target = NO_SOURCES
        messages = build_messages(row["question"], sources, cfg.name, cfg.answer.passage_chars)
        raft.append({"messages": [*messages, {"role": "assistant", "content": target}]})
        closed.append({"messages": [{"role": "user", "content": row["question"]},
                                    {"role": "assistant", "content": f'"{span}"'}]})
    (HERE / "train" / "raft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raft), encoding="utf-8")
    (HERE / "train" / "closed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in closed), encoding="utf-8")
    return {"raft": len(raft), "with_gold": sum(not r["messages"][-1]["content"].startswith("The documents")
                                                for r in raft),
            "closed": len(closed), "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=480, help="training questions drawn from the 14 policies")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args()
    counts = build(args.n, args.seed)
    print(json.dumps(counts) if args.json else ", ".join(f"{k}: {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
