"""`loradex train` under torchrun: two processes (gloo, CPU) train the same adapter as one process does.

Both runs see the same examples in the same order; the two-process run splits each global batch of 2 rows
between its processes and DDP averages their gradients. The examples have answers of equal token length, so
the mean of the two per-process losses is the one-process batch loss and the adapters agree up to float
rounding; LoRA dropout is off, since each process would draw other dropout masks than one process does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loradex.testing import build_tiny_llama

CANDIDATES = [{"messages": [{"role": "user", "content": f"Claim {i}: what next?"},
                            {"role": "assistant", "content": f"Steps: call us, quote {i}."}]} for i in range(10, 100)]
FLAGS = ["--no-context", "--replay", "0", "--dropout", "0", "--max-steps", "6", "--batch-size", "2", "--lr", "5e-3",
         "--eval-fraction", "0.25", "--json"]


def _same_length(model: Path, n: int = 16) -> list[dict]:
    """`n` of the candidates whose answers have the same number of tokens (the premise of the comparison)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    groups: dict[int, list[dict]] = {}
    for e in CANDIDATES:
        groups.setdefault(len(tok(e["messages"][-1]["content"]).input_ids), []).append(e)
    best = max(groups.values(), key=len)
    assert len(best) >= n, {k: len(v) for k, v in groups.items()}
    return best[:n]


def _project(root: Path, model: Path, examples: list[dict]) -> Path:
    root.mkdir(parents=True)
    (root / "loradex.yaml").write_text(f"embedder: hashing\nmodel: {model}\ndomains:\n  claims: {{}}\n")
    (root / "claims.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return root


def _train(root: Path, launcher: list[str]) -> tuple[dict, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([*launcher, "-m", "loradex.cli", "train", "claims", "--data", str(root / "claims.jsonl"),
                        "-p", str(root), *FLAGS], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # only rank 0 printed: one JSON document
    return out, load_file(str(Path(out["path"]) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains(tmp_path):
    model = build_tiny_llama(tmp_path / "tiny")
    examples = _same_length(model)
    one, w1 = _train(_project(tmp_path / "one", model, examples), [sys.executable])
    two, w2 = _train(_project(tmp_path / "two", model, examples),
                     [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    assert (one["metrics"]["processes"], two["metrics"]["processes"]) == (1, 2)
    assert one["metrics"]["steps"] == two["metrics"]["steps"] == 6
    # the processes split each batch: together they read the tokens one process reads, not twice as many
    assert one["metrics"]["train_tokens"] == two["metrics"]["train_tokens"]
    assert w1.keys() == w2.keys()
    moved = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    scale = max(float(w1[k].abs().max()) for k in w1)
    assert moved <= 1e-4 * max(scale, 1.0), (moved, scale)
    assert any(float(w1[k].abs().max()) > 0 for k in w1 if "lora_B" in k)  # training moved B away from zero
    assert one["metrics"]["best_eval_loss"] == pytest.approx(two["metrics"]["best_eval_loss"], rel=1e-4)
