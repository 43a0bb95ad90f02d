"""Citation quality of `loradex ask` on PubMedQA with the packaged base model (SmolLM2-135M-Instruct).

Corpus: the abstracts of the 500 PubMedQA test ids, one Markdown file each (section labels as headings),
ingested by the real `loradex ingest` path into a temporary project. Questions: a random sample of the
test ids (fixed seed; the file is ordered by label, so never the first N). For each question the full
pipeline runs (hybrid retrieval, prompt, greedy generation, citation verification) and we count:
  - answers with at least one citation written by the model, and with at least one verified citation
    once loradex attributes uncited sentences (`answer.attribute`);
  - citation precision: the cited passage belongs to the question's own abstract;
  - the share of citations that pass verification; retrieval hit rate of the own abstract.
These are the base-model numbers that domain adapters must beat later.

  python benchmarks/pubmedqa_citations.py [--limit 40] [--seed 0] [--max-new-tokens 96] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    STDERR,
    data_root,
    machine_info,
    markdown_table,
    now_iso,
    progress_bar,
    sample_ids,
    write_json,
)
from loradex.ingest.ingest import ingest  # noqa: E402
from loradex.pipeline import answer  # noqa: E402
from loradex.project import open_project  # noqa: E402


def load_pubmedqa() -> tuple[dict, dict]:
    folder = data_root() / "pubmedqa"
    if not (folder / "ori_pqal.json").is_file():
        sys.exit(f"PubMedQA not found under {folder}; set LORADEX_DATA to the folder that holds pubmedqa/")
    data = json.loads((folder / "ori_pqal.json").read_text())
    test = json.loads((folder / "test_ground_truth.json").read_text())
    return data, test


def write_corpus(root: Path, data: dict, ids: list[str]) -> None:
    (root / "docs").mkdir(parents=True)
    for pmid in ids:
        rec = data[pmid]
        parts = [f"# PubMed {pmid}"] + [f"## {label.title()}\n\n{text}"
                                         for label, text in zip(rec["LABELS"], rec["CONTEXTS"])]
        (root / "docs" / f"{pmid}.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    (root / "loradex.yaml").write_text("name: PubMed abstracts\nsources: [docs]\n")


def score(result, pmid: str) -> dict:
    own = f"docs/{pmid}.md"
    model = [c for c in result.citations if not c.added]
    added = [c for c in result.citations if c.added]
    file_of = {s.n: s.file for s in result.sources}
    return {
        "pmid": pmid, "abstained": result.abstained,
        "own_retrieved": any(s.file == own for s in result.sources),
        "model_citations": len(model),
        "model_precise": sum(file_of[c.n] == own for c in model),
        "model_verified": sum(c.verified for c in model),
        "added_citations": len(added),
        "added_precise": sum(file_of[c["n"]] == own for c in added),
        "any_verified": any(c.verified for c in result.citations),
        "completion_tokens": result.usage.get("completion_tokens", 0),
        "answer": result.answer,
    }


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    mc = sum(r["model_citations"] for r in rows)
    ac = sum(r["added_citations"] for r in rows)
    ratio = lambda a, b: round(a / b, 3) if b else None  # noqa: E731
    return {
        "questions": n,
        "own_abstract_retrieved": ratio(sum(r["own_retrieved"] for r in rows), n),
        "abstained": ratio(sum(r["abstained"] for r in rows), n),
        "answers_with_model_citation": ratio(sum(r["model_citations"] > 0 for r in rows), n),
        "model_citation_precision": ratio(sum(r["model_precise"] for r in rows), mc),
        "model_citations_verified": ratio(sum(r["model_verified"] for r in rows), mc),
        "answers_with_verified_citation_after_attribution": ratio(sum(r["any_verified"] for r in rows), n),
        "added_citation_precision": ratio(sum(r["added_precise"] for r in rows), ac),
        "model_citations": mc, "added_citations": ac,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=40, help="questions sampled from the 500 test ids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data, test = load_pubmedqa()
    questions = sample_ids(test, args.limit, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_corpus(root, data, sorted(test))
        proj = open_project(root)
        t0 = time.perf_counter()
        report = ingest(proj)
        STDERR.print(f"ingested {len(report.added)} abstracts, {report.chunks} chunks "
                     f"in {time.perf_counter() - t0:.0f} s")
        proj.config.answer.max_new_tokens = args.max_new_tokens
        rows, t0 = [], time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task("asking", total=len(questions))
            for pmid in questions:
                rows.append(score(answer(proj, data[pmid]["QUESTION"]), pmid))
                bar.advance(task)
        seconds = time.perf_counter() - t0
    summary = summarize(rows)
    payload = {"benchmark": "pubmedqa_citations", "date": now_iso(), "model": proj.config.model,
               "settings": {"limit": args.limit, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                            "k": proj.config.answer.k, "corpus": "500 PubMedQA test abstracts"},
               "summary": summary, "seconds": round(seconds, 1), "machine": machine_info(), "rows": rows}
    write_json(RESULTS / "pubmedqa_citations.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["metric", "value"], [(k, v) for k, v in summary.items()]))
    print(f"\n{len(rows)} questions (seed {args.seed}) in {seconds:.0f} s; "
          "rows in benchmarks/results/pubmedqa_citations.json")


if __name__ == "__main__":
    main()
