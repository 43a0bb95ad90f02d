"""Latency of `loradex ask` split into retrieval, prompt processing and generation, and the local
(transformers) engine's overhead against plain `model.generate` on the same prompts (`engine: local`;
benchmarks/ort_engine.py measures the default onnxruntime-genai engine against it).

On the example project (examples/insurance, copied to a temporary folder and ingested), for a sample of
its customer questions:
  1. the full pipeline: retrieve / prompt (time to the first new token) / generate (the rest) / verify;
  2. the engine against the baseline a user would write: the same chat-templated prompt, tokenized the
     same way, through `model.generate(max_new_tokens=N, do_sample=False)` on the same model object.
     Both run greedy with the same token budget and no stop sequences, so they produce the same tokens
     (the token totals are reported to show it); calls alternate. Target: overhead under 5%.

  python benchmarks/answer_latency.py [--questions 6] [--new-tokens 48] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, example_project, machine_info, markdown_table, now_iso, write_json  # noqa: E402
from loradex.engine import GenerationRequest  # noqa: E402
from loradex.pipeline import answer  # noqa: E402
from loradex.prompt import build_messages  # noqa: E402
from loradex.retrieve import search  # noqa: E402


def pipeline_timings(proj, questions: list[str]) -> list[dict]:
    rows = []
    for q in questions:
        a = answer(proj, q)
        t = a.timings_ms
        tokens = a.usage.get("completion_tokens", 0)
        decode_ms = t["generate"] - t.get("prompt", 0.0)
        rows.append({"retrieve_ms": t["retrieve"], "prompt_ms": t.get("prompt", 0.0), "decode_ms": decode_ms,
                     "verify_ms": t["verify"], "prompt_tokens": a.usage.get("prompt_tokens", 0),
                     "completion_tokens": tokens,
                     "tokens_per_s": tokens / (decode_ms / 1000) if decode_ms > 0 else None})
    return rows


def overhead(proj, questions: list[str], new_tokens: int, repeats: int) -> dict:
    engine = proj.engine
    torch = engine.torch
    eng_s, raw_s, tokens, raw_tokens = [], [], [], []
    for q in questions:
        hits = search(proj.store, proj.embedder, q, proj.config.retrieval, k=proj.config.answer.k)
        messages = tuple(build_messages(q, hits, proj.config.name))
        enc = engine._encode([GenerationRequest(messages)])
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                ids = engine.model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                            pad_token_id=engine.tokenizer.pad_token_id)
            raw_tokens.append(ids.shape[1] - enc["input_ids"].shape[1])
            raw_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            gen = engine.generate([GenerationRequest(messages, new_tokens)])[0]
            eng_s.append(time.perf_counter() - t0)
            tokens.append(gen.completion_tokens)
    raw, eng = statistics.median(raw_s), statistics.median(eng_s)
    return {"plain_generate_s": raw, "engine_s": eng, "overhead": eng / raw - 1, "new_tokens": new_tokens,
            "calls": len(raw_s), "engine_tokens": sum(tokens), "plain_tokens": sum(raw_tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lines = (REPO / "examples/insurance/questions.jsonl").read_text().splitlines()
    questions = ([json.loads(line)["question"] for line in lines]
                 [:: max(1, len(lines) // args.questions)][: args.questions])
    with tempfile.TemporaryDirectory() as tmp:
        proj = example_project(Path(tmp), engine="local")
        proj.load()  # load the models before timing
        rows = pipeline_timings(proj, questions)
        over = overhead(proj, questions, args.new_tokens, args.repeats)
    med = {k: statistics.median(r[k] for r in rows if r[k] is not None)
           for k in ("retrieve_ms", "prompt_ms", "decode_ms", "verify_ms", "prompt_tokens", "completion_tokens",
                     "tokens_per_s")}
    payload = {"benchmark": "answer_latency", "date": now_iso(), "model": proj.config.model, "median": med,
               "engine_vs_plain_generate": over, "rows": rows, "machine": machine_info()}
    write_json(RESULTS / "answer_latency.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["stage (median over questions)", "value"], [(k, round(v, 1)) for k, v in med.items()]))
    print()
    print(markdown_table(["", "plain model.generate", "loradex engine", "overhead"],
                         [(f"{over['new_tokens']} new tokens, median of {over['calls']} calls",
                           f"{over['plain_generate_s']:.2f} s", f"{over['engine_s']:.2f} s",
                           f"{over['overhead']:+.1%}")]))


if __name__ == "__main__":
    main()
