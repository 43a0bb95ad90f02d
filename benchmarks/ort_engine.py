"""The onnxruntime-genai engine (`engine: ort`, fp32 and int8) against the transformers engine (`engine: local`).

On the example project (examples/insurance, copied to a temporary folder and ingested) and the packaged
SmolLM2-135M with the three example adapters:
  1. export: time and disk size of the base model (fp32; int8 from it) and of each adapter, into a fresh cache;
  2. decoding at batch 1 with each question's domain adapter, one interleaved run (transformers, ort fp32,
     ort int8 in turn on each prompt, `--repeats` times): time to the first token (prompt processing) and
     decode tokens/s (the tokens after the first over the time after it), greedy, `--new-tokens` tokens, the
     served prompt (sources and question); and whether each engine's text equals the transformers engine's
     (fp32 is expected to match; int8 agreement is reported with the first differing token);
  3. the whole `ask` latency of `make demo`'s three domain questions on each engine;
  4. 8 short requests over the three adapters in one call (the transformers engine's mixed batch);
  5. peak memory (max RSS) of a process that loads each engine and answers one prompt.

  python benchmarks/ort_engine.py [--questions 6] [--new-tokens 64] [--repeats 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, example_project, machine_info, markdown_table, now_iso, write_json  # noqa: E402
from loradex.engine import GenerationRequest  # noqa: E402
from loradex.pipeline import answer, sources_for  # noqa: E402
from loradex.prompt import build_messages  # noqa: E402
from loradex.types import Filters  # noqa: E402

DOMAINS = ("claims", "policy", "billing")
DEMO = ["My bike was stolen from my garden shed last night. What should I do?",
        "Does my home insurance cover damage from a burst pipe?",
        "Can I change the day my monthly premium is collected?"]
ADAPTERS = REPO / "examples/insurance/adapters"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def export_costs(model_dir: Path) -> dict:
    """Export times and sizes into a fresh cache (the user's cache is left alone)."""
    from loradex.engine import ort_export

    out: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LORADEX_CACHE"] = cache
        try:
            for precision in ("fp32", "int8"):
                t0 = time.perf_counter()
                folder = ort_export.export_base(model_dir, precision, log=lambda m: None)
                out[precision] = {"seconds": time.perf_counter() - t0, "bytes": _size(folder)}
            for d in DOMAINS:
                t0 = time.perf_counter()
                f = ort_export.export_adapter(ADAPTERS / d, folder)
                out[f"adapter {d}"] = {"seconds": time.perf_counter() - t0, "bytes": _size(f),
                                       "peft_bytes": _size(ADAPTERS / d / "adapter_model.safetensors")}
        finally:
            del os.environ["LORADEX_CACHE"]
    out["transformers safetensors bytes"] = _size(model_dir / "model.safetensors")
    return out


def _first_difference(tokenizer, a: str, b: str) -> int | None:
    if a == b:
        return None
    x, y = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (a, b))
    return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))


def decoding(engines: dict, prompts: list[tuple[str, tuple]], new_tokens: int, repeats: int) -> dict:
    rows: dict[str, list] = {name: [] for name in engines}
    agree: dict[str, list] = {name: [] for name in engines}
    tokenizer = engines["transformers"].tokenizer
    for domain, messages in prompts:
        texts = {}
        for _ in range(repeats):
            for name, engine in engines.items():  # interleaved: the same moment of the machine for each
                g = engine.generate([GenerationRequest(messages, new_tokens, adapter=domain)])[0]
                decode_s = g.timings_ms["generate"] / 1000
                rows[name].append({"prompt_ms": g.timings_ms["prompt"], "prompt_tokens": g.prompt_tokens,
                                   "tokens": g.completion_tokens,
                                   "decode_tok_s": (g.completion_tokens - 1) / decode_s if decode_s > 0 else None})
                texts[name] = g.text
        for name in engines:
            agree[name].append(_first_difference(tokenizer, texts["transformers"], texts[name]))
    out = {}
    for name, rs in rows.items():
        out[name] = {"prompt_ms": statistics.median(r["prompt_ms"] for r in rs),
                     "prompt_tokens": statistics.median(r["prompt_tokens"] for r in rs),
                     "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs if r["decode_tok_s"]),
                     "calls": len(rs), "tokens": sum(r["tokens"] for r in rs),
                     "same_text_as_transformers": sum(d is None for d in agree[name]), "prompts": len(agree[name]),
                     "first_differing_tokens": [d for d in agree[name] if d is not None]}
    base = out["transformers"]
    for name in out:
        out[name]["decode_speedup"] = out[name]["decode_tok_s"] / base["decode_tok_s"]
        out[name]["prompt_speedup"] = base["prompt_ms"] / out[name]["prompt_ms"]
    return out


def batch_throughput(engines: dict, questions: list[str], new_tokens: int) -> dict:
    """8 short requests (a question alone) over the three adapters in one `generate` call: the transformers
    engine runs them as one mixed batch, the ort engine one after another."""
    reqs = [GenerationRequest(({"role": "user", "content": q},), new_tokens, adapter=DOMAINS[i % 3])
            for i, q in enumerate((questions * 8)[:8])]
    out = {}
    for name, engine in engines.items():
        t0 = time.perf_counter()
        gens = engine.generate(reqs)
        seconds = time.perf_counter() - t0
        out[name] = {"seconds": seconds, "tokens": sum(g.completion_tokens for g in gens),
                     "tokens_per_s": sum(g.completion_tokens for g in gens) / seconds}
    return out


def ask_latency(root: Path, engines: dict) -> dict:
    from loradex.project import open_project

    out = {}
    for name, engine in engines.items():
        proj = open_project(root, engine=engine)
        proj.load()  # the embedder, store and router: loading them is not the answer's time
        seconds, answers = [], []
        for q in DEMO:
            t0 = time.perf_counter()
            a = answer(proj, q)
            seconds.append(time.perf_counter() - t0)
            answers.append(a.answer)
        out[name] = {"seconds": seconds, "max_s": max(seconds), "answers": answers}
    return out


def _engine(name: str, model_dir: Path):
    from loradex.engine.local import LocalEngine
    from loradex.engine.ort import OrtEngine

    return LocalEngine(model_dir) if name == "transformers" else OrtEngine(model_dir, precision=name.split()[1])


def memory_probe(name: str, model_dir: Path, messages: tuple) -> int:
    """Peak resident memory in bytes (VmHWM: getrusage's maxrss would carry the parent's peak across fork and
    exec) of this process after loading engine `name`, the claims adapter and one answer."""
    engine = _engine(name, model_dir)
    engine.load_adapter("claims", ADAPTERS / "claims")
    engine.generate([GenerationRequest(messages, 32, adapter="claims")])
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory-probe", nargs=2, help=argparse.SUPPRESS)  # internal: ENGINE FILE, a fresh process
    args = ap.parse_args()
    if args.memory_probe:
        probe = json.loads(Path(args.memory_probe[1]).read_text())
        print(memory_probe(args.memory_probe[0], Path(probe["model_dir"]), tuple(probe["messages"])))
        return
    rows = [json.loads(line) for line in (REPO / "examples/insurance/eval/questions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["domain"] in DOMAINS]
    rows = rows[:: max(1, len(rows) // args.questions)][: args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        proj = example_project(Path(tmp))
        cfg = proj.config
        prompts = [(r["domain"], tuple(build_messages(
            r["question"], sources_for(proj, r["question"], cfg.answer.k, Filters(domain=r["domain"])), cfg.name,
            cfg.answer.passage_chars))) for r in rows]
        model_dir = proj.base_model_dir
        exports = export_costs(model_dir)
        engines = {name: _engine(name, model_dir) for name in ("transformers", "ort fp32", "ort int8")}
        for d in DOMAINS:
            ref = proj.registry.register(ADAPTERS / d, d, {"imported_from": "examples"})
            proj.registry.activate(d, ref.version)
            for engine in engines.values():
                engine.load_adapter(d, ADAPTERS / d)
        decode = decoding(engines, prompts, args.new_tokens, args.repeats)
        asks = ask_latency(proj.root, engines)
        batch = batch_throughput(engines, [r["question"] for r in rows], 48)
        probe = Path(tmp) / "probe.json"
        probe.write_text(json.dumps({"model_dir": str(model_dir), "messages": prompts[0][1]}))
        memory = {name: int(subprocess.run([sys.executable, __file__, "--memory-probe", name, str(probe)],
                                           capture_output=True, text=True, check=True).stdout.split()[-1])
                  for name in engines}
    payload = {"benchmark": "ort_engine", "date": now_iso(), "model": "smollm2-135m", "new_tokens": args.new_tokens,
               "questions": [r["question"] for r in rows], "export": exports, "decoding": decode, "ask": asks,
               "batch_of_8_over_3_adapters": batch,
               "peak_rss_bytes": memory, "machine": machine_info()}
    write_json(RESULTS / "ort_engine.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(
        ["engine", "decode tok/s", "x transformers", "prompt ms (tokens)", "x transformers", "same text",
         "ask max s", "8 requests tok/s", "peak RSS MB"],
        [(n, round(d["decode_tok_s"], 1), round(d["decode_speedup"], 2),
          f"{d['prompt_ms']:.0f} ({d['prompt_tokens']:.0f})",
          round(d["prompt_speedup"], 2), f"{d['same_text_as_transformers']}/{d['prompts']}",
          round(asks[n]["max_s"], 1), round(batch[n]["tokens_per_s"], 1), round(memory[n] / 2**20))
         for n, d in decode.items()]))
    print()
    print(markdown_table(["export", "seconds", "MB"], [(k, round(v.get("seconds", 0), 1), round(v["bytes"] / 2**20, 1))
                                                      for k, v in exports.items() if isinstance(v, dict)]))


if __name__ == "__main__":
    main()
