"""What a LoRA adapter changes: format adherence, judgement, forgetting, and memorisation.

1. Format and judgement on the example domains (examples/insurance/train/claims.jsonl, billing.jsonl):
   a fixed share is held out (seed 0), an adapter is trained on the rest with loradex's trainer, and
   base and adapter answer the held-out questions (adapter-only mode: no sources, the serving system
   message). Scored: the share of answers in the domain's layout (claims: Summary / Steps / Deadline /
   Escalation: YES|NO - reason; billing: one-line answer, numbered steps, Fee: ...), and for claims the
   escalation decision against the reference.
2. MTS-Dialog (../shared/data/mts_dialog): doctor-patient dialogue -> "Section: <HEADER>\\nNote: ...",
   HEADER one of the data set's 20 section codes. Trained on a random sample of the training set,
   scored on a random sample of the validation set: layout adherence and header accuracy.
3. Forgetting: 30 general prompts with a checkable answer, base vs each adapter (adapters are trained
   with replay: a share of other general prompts answered by the base model itself, loradex's default).
4. Memorisation: a retrieval-trained (RAFT-style, `--with-context`) claims adapter answers the example
   project's document-fact questions closed-book (no sources); the share that states the fact is
   compared with the base model's. It must not be higher: facts belong to retrieval.

  python benchmarks/adapter_effect.py [--epochs 3] [--lr 2e-3] [--replay 0.25] [--holdout 8] \\
      [--mts-train 64] [--mts-eval 16] [--json]
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, STDERR, data_root, example_project, machine_info, markdown_table, now_iso, write_json  # noqa: E402
from loradex.adapters.context import with_context  # noqa: E402
from loradex.adapters.data import Example, load_examples  # noqa: E402
from loradex.adapters.replay import base_answers, mix_replay  # noqa: E402
from loradex.adapters.train import TrainSettings, train_lora  # noqa: E402
from loradex.engine import GenerationRequest  # noqa: E402
from loradex.prompt import system_message  # noqa: E402

LAYOUTS = {
    "claims": re.compile(r"^Summary: .+\nSteps:\n(?:\d+\. .+\n){1,8}Deadline: .+\nEscalation: (YES|NO) - .+$"),
    "billing": re.compile(r"^[^\n]+\n(?:\d+\. .+\n){1,8}Fee: .+$"),
}
GENERAL = [("What is the capital of France?", "paris"), ("What is 7 plus 5?", "12"),
           ("Name the largest planet in our solar system.", "jupiter"),
           ("What color is the sky on a clear day?", "blue"),
           ("How many days are in a week?", "7|seven"), ("Translate 'thank you' into Spanish.", "gracias"),
           ("What is the opposite of hot?", "cold"), ("Which animal says 'meow'?", "cat"),
           ("What is the freezing point of water in Celsius?", "0|zero"),
           ("Who wrote Romeo and Juliet?", "shakespeare"),
           ("What is the capital of Spain?", "madrid"), ("How many months are in a year?", "12|twelve"),
           ("What is 10 times 10?", "100|hundred"), ("Which star is at the centre of our solar system?", "sun"),
           ("What do cows drink?", "water"), ("What is the color of grass?", "green"),
           ("How many legs does a dog have?", "4|four"), ("What is the capital of England?", "london"),
           ("Which planet do we live on?", "earth"), ("What is the opposite of up?", "down"),
           ("How many hours are in two days?", "48|forty-eight"), ("Which bird is a symbol of peace?", "dove"),
           ("What is the largest country in the world by area?", "russia"), ("What do you call a baby dog?", "pupp"),
           ("What is 20 minus 5?", "15|fifteen"), ("Which metal is liquid at room temperature?", "mercury"),
           ("Who discovered penicillin?", "fleming"), ("What is the capital of Egypt?", "cairo"),
           ("How many sides does a hexagon have?", "6|six"), ("What language is spoken in Mexico?", "spanish")]


def holdout(examples: list[Example], n: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[n:]], [examples[i] for i in order[:n]]


def generate(engine, questions: list[str], system: str, adapter: str | None, max_new_tokens: int) -> list[str]:
    reqs = [GenerationRequest(({"role": "system", "content": system}, {"role": "user", "content": q}),
                              max_new_tokens, adapter=adapter) for q in questions]
    out = []
    for s in range(0, len(reqs), 4):
        out += [g.text for g in engine.generate(reqs[s : s + 4])]
    return out


REPLAY: list = []  # (prompt, base answer) pairs, generated once per run by the bare base model


def fit(model_dir: Path, examples: list[Example], work: Path, settings: TrainSettings, name: str) -> tuple[Path, dict]:
    t0 = time.perf_counter()
    examples = mix_replay(examples, REPLAY, settings.replay, settings.seed)
    result = train_lora(model_dir, examples, work, settings, name)
    STDERR.print(f"trained {work.name}: {result.metrics['steps']} steps, held-out loss "
                 f"{result.metrics['initial_eval_loss']:.3f} -> {result.metrics['best_eval_loss']:.3f} "
                 f"in {time.perf_counter() - t0:.0f} s")
    return result.adapter_dir, result.metrics


def escalation(text: str) -> str | None:
    m = re.search(r"Escalation: (YES|NO)", text)
    return m.group(1) if m else None


def domain_effect(proj, engine, domain: str, args, work: Path) -> dict:
    examples, _ = load_examples(REPO / f"examples/insurance/train/{domain}.jsonl")
    train_ex, held = holdout(examples, args.holdout)
    settings = TrainSettings(epochs=args.epochs, batch_size=4, max_seq_len=384, lr=args.lr, max_steps=args.max_steps,
                             replay=args.replay)
    adapter_dir, metrics = fit(proj.base_model_dir, train_ex, work / domain, settings, proj.config.name)
    engine.load_adapter(domain, adapter_dir)
    system = system_message(proj.config.name)
    qs = [e.question for e in held]
    base = generate(engine, qs, system, None, 160)
    tuned = generate(engine, qs, system, domain, 160)
    layout = LAYOUTS[domain]
    row = {"domain": domain, "train": len(train_ex), "held_out": len(held), "training": metrics,
           "adapter_mb": round(sum(p.stat().st_size for p in adapter_dir.glob("adapter_model.safetensors")) / 1e6, 2),
           "format_base": sum(bool(layout.match(t.strip())) for t in base) / len(held),
           "format_adapter": sum(bool(layout.match(t.strip())) for t in tuned) / len(held),
           "samples": [{"q": q, "base": b, "adapter": a} for q, b, a in list(zip(qs, base, tuned))[:3]]}
    if domain == "claims":
        ref = [escalation(e.answer) for e in held]
        row["escalation_base"] = sum(escalation(t) == r for t, r in zip(base, ref)) / len(held)
        row["escalation_adapter"] = sum(escalation(t) == r for t, r in zip(tuned, ref)) / len(held)
    return row


def mts_examples(path: Path, n: int, seed: int) -> list[Example]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    return [Example(({"role": "user", "content": "Write the clinical note section for this dialogue.\n\n"
                     + " ".join(r["dialogue"].split())[:1500]},
                    {"role": "assistant", "content": f"Section: {r['section_header']}\nNote: "
                     + " ".join(r["section_text"].split())}), i) for i, r in enumerate(rows)]


def mts_effect(proj, engine, args, work: Path) -> dict | None:
    folder = data_root() / "mts_dialog"
    if not (folder / "MTS-Dialog-TrainingSet.csv").is_file():
        STDERR.print(f"MTS-Dialog not found under {folder}: skipped")
        return None
    train_ex = mts_examples(folder / "MTS-Dialog-TrainingSet.csv", args.mts_train, 0)
    held = mts_examples(folder / "MTS-Dialog-ValidationSet.csv", args.mts_eval, 1)
    headers = sorted({e.answer.split("\n")[0][9:]
                      for e in mts_examples(folder / "MTS-Dialog-TrainingSet.csv", 10**6, 0)})
    layout = re.compile(r"^Section: (" + "|".join(map(re.escape, headers)) + r")\nNote: \S")
    settings = TrainSettings(epochs=args.epochs, batch_size=4, max_seq_len=512, lr=args.lr, max_steps=args.max_steps,
                             replay=args.replay)
    adapter_dir, metrics = fit(proj.base_model_dir, train_ex, work / "mts", settings, proj.config.name)
    engine.load_adapter("mts", adapter_dir)
    system = system_message(proj.config.name)
    qs = [e.question for e in held]
    base, tuned = generate(engine, qs, system, None, 96), generate(engine, qs, system, "mts", 96)
    ref = [e.answer.split("\n")[0] for e in held]
    return {"domain": "mts_dialog", "train": len(train_ex), "held_out": len(held), "training": metrics,
            "format_base": sum(bool(layout.match(t.strip())) for t in base) / len(held),
            "format_adapter": sum(bool(layout.match(t.strip())) for t in tuned) / len(held),
            "header_base": sum(t.strip().startswith(r) for t, r in zip(base, ref)) / len(held),
            "header_adapter": sum(t.strip().startswith(r) for t, r in zip(tuned, ref)) / len(held),
            "samples": [{"base": b[:200], "adapter": a[:200], "reference": r}
                        for b, a, r in list(zip(base, tuned, ref))[:3]]}


def forgetting(engine, adapters: list[str], system: str) -> dict:
    qs = [q for q, _ in GENERAL]
    out = {}
    for name in [None, *adapters]:
        answers = generate(engine, qs, system, name, 32)
        out[name or "base"] = sum(bool(re.search(a, t.lower())) for t, (_, a) in zip(answers, GENERAL)) / len(GENERAL)
    return out


def closed_book(proj, engine, args, work: Path) -> dict:
    examples, _ = load_examples(REPO / "examples/insurance/train/claims.jsonl")
    raft = with_context(proj, examples, domain="claims")
    settings = TrainSettings(epochs=1, batch_size=4, max_seq_len=2048, lr=args.lr, max_steps=args.raft_steps,
                             replay=args.replay)
    adapter_dir, metrics = fit(proj.base_model_dir, raft, work / "raft", settings, proj.config.name)
    engine.load_adapter("raft", adapter_dir)
    facts = [json.loads(line) for line in (REPO / "examples/insurance/questions.jsonl").read_text().splitlines()]
    system = system_message(proj.config.name)
    qs = [f["question"] for f in facts]
    res = {}
    for name in (None, "raft"):
        answers = generate(engine, qs[: args.closed_book], system, name, 64)
        res[name or "base"] = sum(f["answer_fact"].lower() in a.lower() for f, a in zip(facts, answers)) / len(answers)
    return {"questions": min(len(facts), args.closed_book), "fact_stated_closed_book": res, "training": metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--replay", type=float, default=0.25,
                    help="share of base-answered general prompts mixed in (0: off)")
    ap.add_argument("--holdout", type=int, default=8)
    ap.add_argument("--mts-train", type=int, default=64)
    ap.add_argument("--mts-eval", type=int, default=16)
    ap.add_argument("--raft-steps", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=None, help="cap every training run (smoke tests)")
    ap.add_argument("--closed-book", type=int, default=30, help="document-fact questions asked closed-book")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: claims billing mts forgetting closed_book")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proj = example_project(Path(tmp))
        engine = proj.engine
        work = Path(tmp) / "runs"
        if args.replay > 0:
            REPLAY[:] = base_answers(engine, system_message(proj.config.name))
        rows = [domain_effect(proj, engine, d, args, work) for d in ("claims", "billing") if d not in args.skip]
        if "mts" not in args.skip:
            mts = mts_effect(proj, engine, args, work)
            rows += [mts] if mts else []
        adapters = [r["domain"] if r["domain"] != "mts_dialog" else "mts" for r in rows]
        forget = (forgetting(engine, adapters, system_message(proj.config.name))
                  if "forgetting" not in args.skip else None)
        book = closed_book(proj, engine, args, work) if "closed_book" not in args.skip else None
    payload = {"benchmark": "adapter_effect", "date": now_iso(), "model": "smollm2-135m", "settings": vars(args),
               "domains": rows, "forgetting_general_prompts": forget, "closed_book": book,
               "seconds": round(time.perf_counter() - t0), "machine": machine_info()}
    write_json(RESULTS / "adapter_effect.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["domain", "train / held-out", "format: base", "format: adapter", "decision or header: base",
                          "decision or header: adapter", "held-out loss"],
                         [(r["domain"], f"{r['train']} / {r['held_out']}", r["format_base"], r["format_adapter"],
                           r.get("escalation_base", r.get("header_base")),
                           r.get("escalation_adapter", r.get("header_adapter")),
                           f"{r['training']['initial_eval_loss']:.2f} -> "
                           f"{r['training']['best_eval_loss']:.2f}") for r in rows]))
    if forget:
        print("\ngeneral prompts answered correctly:", forget)
    if book:
        print("document facts stated closed-book:", book["fact_stated_closed_book"])


if __name__ == "__main__":
    main()
