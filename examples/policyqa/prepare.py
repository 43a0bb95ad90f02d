"""Build the PolicyQA example project's documents and question files from the shared data set.

PolicyQA (Ahmad et al., "PolicyQA: A Reading Comprehension Dataset for Privacy Policies", Findings of EMNLP
2020) is read from `../shared/data/policyqa/dev.json` (SQuAD format) and never copied into the repository: this
script writes, under this folder and ignored by git,

- `docs/<site>/pNNN.txt`: one document per policy paragraph (all 20 policies), its first line naming the policy;
- `eval/questions.jsonl`: 200 questions drawn at random (seed 16) from 6 policies held out at random (seed 16),
  each with every reference span as `answers` and its paragraph as `gold_docs`;
- `train/questions.jsonl`: the questions of the other 14 policies, for training adapters (never the held-out 6);
- `routing/privacy.txt`: 40 of those training questions, the router's examples for the project's one domain.

The split is by policy, never by question: PolicyQA's questions repeat across policies, so only a policy split
measures reading unseen documents. Each question names its policy ("In the privacy policy of ted.com: ..."),
as a user of a store holding several policies would; the data set's questions say "this website".

Usage: python examples/policyqa/prepare.py [--data ../shared/data/policyqa/dev.json] [--json]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data" / "policyqa" / "dev.json"
SEED = 16
HELD_OUT_POLICIES = 6
EVAL_QUESTIONS = 200


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", title.lower()).strip("-")


def _question(site: str, text: str) -> str:
    return f"In the privacy policy of {site}: {text.strip()}"


def build(data: Path, out: Path = HERE) -> dict[str, object]:
    """Write docs/, eval/questions.jsonl and train/questions.jsonl under `out`; return what was written.
    Raises FileNotFoundError (with what to do) when the data set is missing."""
    if not data.is_file():
        raise FileNotFoundError(f"{data}: PolicyQA not found; pass --data PATH/TO/policyqa/dev.json")
    policies = json.loads(data.read_text(encoding="utf-8"))["data"]
    shutil.rmtree(out / "docs", ignore_errors=True)
    rows: dict[str, list[dict[str, object]]] = {}
    for policy in policies:
        site = policy["title"]
        for n, para in enumerate(policy["paragraphs"]):
            doc = f"docs/{_slug(site)}/p{n:03d}.txt"
            path = out / doc
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"Privacy policy of {site}\n\n{para['context'].strip()}\n", encoding="utf-8")
            for qa in para["qas"]:
                answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"] if a["text"].strip()))
                if answers:
                    rows.setdefault(site, []).append({"id": qa["id"], "question": _question(site, qa["question"]),
                                                      "answers": answers, "gold_docs": [doc]})
    rng = random.Random(SEED)
    held_out = sorted(rng.sample(sorted(rows), HELD_OUT_POLICIES))
    pool = [r for site in held_out for r in rows[site]]
    chosen = rng.sample(pool, EVAL_QUESTIONS)
    train = [r for site in sorted(rows) if site not in held_out for r in rows[site]]
    for name, items in (("eval", chosen), ("train", train)):
        (out / name).mkdir(exist_ok=True)
        (out / name / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    (out / "routing").mkdir(exist_ok=True)  # the router's examples for the one domain: training questions only
    routing = [str(r["question"]) for r in rng.sample(train, 40)]
    (out / "routing" / "privacy.txt").write_text("\n".join(routing) + "\n", encoding="utf-8")
    return {"policies": len(policies), "documents": sum(len(p["paragraphs"]) for p in policies),
            "held_out": held_out, "eval_questions": len(chosen), "train_questions": len(train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="PolicyQA dev.json (SQuAD format)")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    args = parser.parse_args()
    info = build(args.data)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['documents']} paragraphs of {info['policies']} policies -> docs/; "
              f"{info['eval_questions']} eval questions from {', '.join(info['held_out'])}; "  # type: ignore[arg-type]
              f"{info['train_questions']} train questions from the other policies")


if __name__ == "__main__":
    main()
