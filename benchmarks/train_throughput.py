"""Training throughput and peak memory: loradex's trainer against a plain transformers `Trainer` + PEFT.

Same base model (SmolLM2-135M-Instruct, fp32, CPU), same examples (examples/insurance/train/claims.jsonl,
tokenized by the same function, loss on answer tokens only), same LoRA settings (r 8, alpha 16, q/k/v/o),
batch size, learning rate and number of optimizer steps. Each side runs in its own process so that its
peak resident memory (ru_maxrss) is its own. Throughput is examples/s over the optimizer steps only
(model loading excluded; loradex's held-out evaluations subtracted), as ratio loradex / Trainer.
Also reports the adapter's size on disk.

  python benchmarks/train_throughput.py [--steps 8] [--batch-size 4] [--max-seq-len 384] [--json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, machine_info, markdown_table, now_iso, write_json  # noqa: E402

DATA = REPO / "examples/insurance/train/claims.jsonl"


def run_loradex(args, model_dir: Path, out: Path) -> dict:
    from loradex.adapters.data import load_examples
    from loradex.adapters.train import TrainSettings, train_lora

    examples, _ = load_examples(DATA)
    settings = TrainSettings(max_steps=args.steps, epochs=100, batch_size=args.batch_size,
                             max_seq_len=args.max_seq_len, lr=args.lr, save_every=10**6)
    result = train_lora(model_dir, examples, out, settings, "harbor-mutual")
    m = result.metrics
    loop = m["seconds"] - m["eval_seconds"]
    size = (result.adapter_dir / "adapter_model.safetensors").stat().st_size
    return {"steps": m["steps"], "loop_seconds": loop, "examples_per_s": m["steps"] * args.batch_size / loop,
            "tokens_per_s": m["train_tokens"] / loop, "adapter_bytes": size}


def run_trainer(args, model_dir: Path, out: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from loradex.adapters.data import encode_examples, load_examples
    from loradex.adapters.train import split_holdout
    from loradex.prompt import system_message

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    examples, _ = load_examples(DATA)
    train_ex, _ = split_holdout(examples, 0.1, 0)
    rows = [dict(zip(("input_ids", "labels"), row)) for row in
            encode_examples(tokenizer, train_ex, system_message("harbor-mutual"), args.max_seq_len)]
    for r in rows:
        r["attention_mask"] = [1] * len(r["input_ids"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                              learning_rate=args.lr, warmup_steps=5, lr_scheduler_type="linear", max_grad_norm=1.0,
                              logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                              dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=rows,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    t0 = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - t0
    mean_tokens = sum(len(r["input_ids"]) for r in rows) / len(rows)
    return {"steps": args.steps, "loop_seconds": loop, "examples_per_s": args.steps * args.batch_size / loop,
            "tokens_per_s": args.steps * args.batch_size * mean_tokens / loop}


def child(args) -> None:
    from loradex.models import resolve_model

    model_dir = resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        fn = run_loradex if args.side == "loradex" else run_trainer
        res = fn(args, model_dir, Path(tmp))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=384)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--side", choices=["loradex", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.side:
        return child(args)
    flags = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
             "--lr", str(args.lr)]
    sides = {}
    for side in ("trainer", "loradex"):
        out = subprocess.run([sys.executable, __file__, "--side", side, *flags],
                             capture_output=True, text=True, check=True)
        sides[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = {"examples_per_s": sides["loradex"]["examples_per_s"] / sides["trainer"]["examples_per_s"],
             "peak_rss": sides["loradex"]["peak_rss_mb"] / sides["trainer"]["peak_rss_mb"]}
    payload = {"benchmark": "train_throughput", "date": now_iso(), "settings": vars(args), "sides": sides,
               "loradex_over_trainer": ratio, "machine": machine_info()}
    write_json(RESULTS / "train_throughput.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    rows = [(name, f"{s['examples_per_s']:.3f}", f"{s['tokens_per_s']:.0f}", f"{s['peak_rss_mb']:.0f}")
            for name, s in (("transformers Trainer + PEFT", sides["trainer"]), ("loradex train", sides["loradex"]))]
    print(markdown_table(["", "examples/s", "tokens/s", "peak RSS MB"], rows))
    print(f"\nloradex / Trainer: throughput x{ratio['examples_per_s']:.2f}, peak memory x{ratio['peak_rss']:.2f}; "
          f"adapter {sides['loradex']['adapter_bytes'] / 1e6:.1f} MB on disk")


if __name__ == "__main__":
    main()
