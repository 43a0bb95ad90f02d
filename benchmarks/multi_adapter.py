"""Many adapters on one base model: switch latency and mixed-batch throughput (SmolLM2-135M, CPU).

Four LoRA adapters of the shape loradex trains (rank 8 on q/k/v/o) are put on the packaged base model.
1. Switch latency: loading an adapter from disk onto the running engine (cold), and the per-request cost
   of changing adapter among loaded ones (a 1-token generation alternating adapters, minus the same with
   one adapter throughout).
2. Mixed batch: 8 requests over the 4 adapters (2 each), generated
   a) together in one batch (PEFT applies each row's adapter),
   b) one adapter at a time (4 batches of 2), the way an engine without mixed batches serves them,
   c) one request at a time (8 calls).
   The same greedy outputs come out of all three (checked); throughput is generated tokens per second.

  python benchmarks/multi_adapter.py [--new-tokens 48] [--repeats 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, STDERR, LoadMonitor, machine_info, markdown_table, now_iso, timed, write_json  # noqa: E402,E501
from loradex.engine import GenerationRequest  # noqa: E402
from loradex.engine.local import LocalEngine  # noqa: E402
from loradex.models import resolve_model  # noqa: E402
from loradex.testing import build_random_adapter  # noqa: E402

QUESTIONS = ["How do I report a stolen bike?", "When is my premium taken from my account?",
             "Does my home policy cover a burst pipe?", "Can I pay by bank transfer?",
             "What happens after I report a car accident?", "Is flood damage excluded?",
             "How do I change my payment date?", "Who do I call after a break-in?"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def requests(adapters: list[str], new_tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest(({"role": "system", "content": "You are a helpful insurance assistant."},
                               {"role": "user", "content": q}), new_tokens, adapter=adapters[i % len(adapters)])
            for i, q in enumerate(QUESTIONS)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="each arm runs this often; the fastest run counts")
    ap.add_argument("--switches", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    monitor = LoadMonitor()
    model_dir = resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [build_random_adapter(model_dir, Path(tmp) / f"a{i}", seed=i, rank=8, scale=1.0, target_modules=TARGETS)
                 for i in range(6)]
        engine = LocalEngine(model_dir, max_adapters=8)
        names = [f"d{i}" for i in range(4)]
        engine.generate([GenerationRequest(({"role": "user", "content": "warm up"},), 4)])
        cold = []
        for i, p in enumerate(paths):
            t0 = time.perf_counter()
            engine.load_adapter(f"d{i}", p)
            cold.append(time.perf_counter() - t0)
        one = GenerationRequest(({"role": "user", "content": "Hello"},), 1)

        def one_token(adapter):
            return engine.generate([GenerationRequest(one.messages, 1, adapter=adapter)])

        same, alternating = [], []
        for i in range(args.switches):
            t0 = time.perf_counter()
            one_token("d0")
            t1 = time.perf_counter()
            one_token(names[i % 4])
            t2 = time.perf_counter()
            same.append(t1 - t0)
            alternating.append(t2 - t1)
        switch = {"cold_load_ms_p50": round(float(np.median(cold[1:]) * 1000), 1),
                  "first_load_ms": round(cold[0] * 1000, 1),
                  "one_token_same_adapter_ms_p50": round(float(np.median(same) * 1000), 2),
                  "one_token_alternating_adapters_ms_p50": round(float(np.median(alternating) * 1000), 2)}
        switch["switch_cost_ms"] = round(switch["one_token_alternating_adapters_ms_p50"]
                                         - switch["one_token_same_adapter_ms_p50"], 2)
        STDERR.print(f"switch: {switch}")

        reqs = requests(names, args.new_tokens)
        by_adapter = [[r for r in reqs if r.adapter == n] for n in names]
        t_mixed, mixed = timed(lambda: engine.generate(reqs), args.repeats)
        t_grouped, grouped = timed(lambda: [g for grp in by_adapter for g in engine.generate(grp)], args.repeats)
        t_single, single = timed(lambda: [engine.generate([r])[0] for r in reqs], args.repeats)
        grouped_in_order = {id(r): g for r, g in zip([r for grp in by_adapter for r in grp], grouped)}
        same_text = ([g.text for g in mixed] == [grouped_in_order[id(r)].text for r in reqs]
                     == [g.text for g in single])
        tokens = sum(g.completion_tokens for g in mixed)
        distinct = len({g.text for g in mixed[:4]})
    rows = [{"arm": "mixed batch (8 requests, 4 adapters, one batch)", "seconds": round(t_mixed, 3)},
            {"arm": "one adapter at a time (4 batches of 2)", "seconds": round(t_grouped, 3)},
            {"arm": "one request at a time (8 calls)", "seconds": round(t_single, 3)}]
    for r in rows:
        r["tokens_per_s"] = round(tokens / r["seconds"], 1)
        r["speedup_of_mixed"] = round(r["seconds"] / t_mixed, 2)
    payload = {"benchmark": "multi_adapter", "date": now_iso(), "model": "smollm2-135m", "settings": vars(args),
               "switch": switch, "mixed_batch": rows, "generated_tokens": tokens, "outputs_identical": same_text,
               "distinct_outputs_across_adapters": distinct, "load": monitor.report(), "machine": machine_info()}
    write_json(RESULTS / "multi_adapter.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["how 8 requests over 4 adapters run", "seconds", "tokens/s", "mixed batch is faster by"],
                         [(r["arm"], r["seconds"], r["tokens_per_s"], f"{r['speedup_of_mixed']}x") for r in rows]))
    print(f"\noutputs identical across the three: {same_text}; adapter switch: {switch}")


if __name__ == "__main__":
    main()
