"""Forgetting and memorisation of the adapters shipped in examples/insurance/adapters (the ones `make demo` serves).

`adapter_effect.py` trains its own adapters to measure what an adapter changes; this script measures the
retrieval-aware adapters that are actually shipped, with no training:

1. Forgetting: the 30 general prompts of `adapter_effect.GENERAL` (a checkable answer each), answered by the
   base model and by each adapter; the share answered correctly. Replay (a quarter of the training set: general
   prompts answered by the base model) is meant to keep it at the base model's level.
2. Memorisation: the 30 document-fact questions of examples/insurance/questions.jsonl asked closed-book (the
   serving system message, no sources); the share of answers that state the fact (`answer_fact`, a substring,
   case-insensitive). Facts belong to retrieval: an adapter trained with sources in every prompt should not state
   more of them from memory than the base model does. Also counted on each adapter's own domain's questions.

  python benchmarks/shipped_adapters.py [--json]

One run on this machine; greedy decoding, 32 new tokens for general prompts and 64 for facts.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, STDERR, machine_info, markdown_table, now_iso, write_json  # noqa: E402
from adapter_effect import GENERAL, forgetting, generate  # noqa: E402
from loradex.prompt import system_message  # noqa: E402

DOMAINS = ("claims", "policy", "billing")
SHIPPED = REPO / "examples/insurance/adapters"


def _project(tmp: Path):
    """The example project's config and documents, not ingested: nothing here retrieves."""
    from loradex.project import open_project

    root = tmp / "insurance"
    for part in ("docs", "routing"):
        shutil.copytree(REPO / "examples/insurance" / part, root / part)
    shutil.copy(REPO / "examples/insurance/loradex.yaml", root / "loradex.yaml")
    return open_project(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    t0 = time.perf_counter()
    facts = [json.loads(line) for line in (REPO / "examples/insurance/questions.jsonl").read_text().splitlines()]
    versions = {d: json.loads((SHIPPED / d / "manifest.json").read_text())["version"] for d in DOMAINS}
    with tempfile.TemporaryDirectory() as tmp:
        proj = _project(Path(tmp))
        engine, system = proj.engine, system_message(proj.config.name)
        for d in DOMAINS:
            engine.load_adapter(d, SHIPPED / d)
        STDERR.print(f"[dim]{len(GENERAL)} general prompts, base and {len(DOMAINS)} adapters[/]")
        general = forgetting(engine, list(DOMAINS), system)  # share answered right, by model
        rows, samples = [], {}
        for name in (None, *DOMAINS):
            label = name or "base"
            STDERR.print(f"[dim]{label}: {len(facts)} document facts closed-book[/]")
            answers = generate(engine, [f["question"] for f in facts], system, name, 64)
            stated = [f["answer_fact"].lower() in a.lower() for f, a in zip(facts, answers)]
            own = [s for s, f in zip(stated, facts) if f["domain"] == name]
            rows.append({"model": label, "version": versions.get(name),
                         "general_right": round(general[label] * len(GENERAL)), "general": len(GENERAL),
                         "facts_stated": sum(stated), "facts": len(stated),
                         "own_domain_facts_stated": sum(own) if name else None, "own_domain_facts": len(own) or None})
            samples[label] = [{"question": f["question"], "fact": f["answer_fact"], "answer": a[:200]}
                              for f, a, s in zip(facts, answers, stated) if s][:5]
    payload = {"benchmark": "shipped_adapters", "date": now_iso(), "model": proj.config.model, "rows": rows,
               "facts_stated_samples": samples, "seconds": round(time.perf_counter() - t0), "machine": machine_info()}
    write_json(RESULTS / "shipped_adapters.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(
        ["model", "version", "general prompts right (forgetting)", "document facts closed-book (memorisation)",
         "own domain's facts closed-book"],
        [(r["model"], (r["version"] or "")[:12], f"{r['general_right']} / {r['general']}",
          f"{r['facts_stated']} / {r['facts']}",
          f"{r['own_domain_facts_stated']} / {r['own_domain_facts']}" if r["own_domain_facts"] else "")
         for r in rows]))


if __name__ == "__main__":
    main()
