"""Does the policy adapter's model hold the coverage verdict at all? A linear probe on its hidden states.

Issue 17's demo answer says `Covered: NO` for a burst pipe that the documents cover. Eleven decoding and training
tries did not fix it (README). This asks the question under all of them: at the position where the shipped policy
adapter writes its verdict (the served prompt, sources included, followed by `Covered:`), is the verdict
linearly readable from the hidden state? A multinomial logistic regression (L2) is fitted per layer on the
policy training questions (`examples/insurance/train/policy.jsonl`, their YES / NO / PARTLY labels) and scored by
10-fold cross-validation against always answering the commonest label. Probing as in Alain and Bengio,
"Understanding intermediate layers using linear classifier probes" (ICLR 2017 workshop).

  python benchmarks/verdict_probe.py [--layers 6,12,18,24,27,30] [--json]

About 10 minutes on 2 CPU cores (one forward pass of about 1,300 tokens per question).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, example_project, machine_info, markdown_table, now_iso, write_json  # noqa: E402
from loradex.pipeline import prepare  # noqa: E402

LABELS = ("YES", "NO", "PARTLY")


def training_questions() -> list[tuple[str, str]]:
    """(question, verdict) of each policy training example."""
    out = []
    for line in (REPO / "examples/insurance/train/policy.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        question = [m["content"] for m in msgs if m["role"] == "user"][-1]
        verdict = re.search(r"Covered: (YES|NO|PARTLY)", msgs[-1]["content"])
        if verdict:
            out.append((question, verdict.group(1)))
    return out


def features(proj, rows: list[tuple[str, str]], layers: list[int]):
    """Hidden states (layer, question, width) at the verdict position, the labels, and the adapter's own choice."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(proj.base_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(proj.base_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(REPO / "examples/insurance/adapters/policy")).eval()
    first = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in LABELS]
    hs, ys, own = [], [], []
    for i, (question, verdict) in enumerate(rows):
        p = prepare(proj, question, domain="policy", use_adapter=False)
        if p.request is None:  # no source close enough: `ask` would not generate
            continue
        text = tok.apply_chat_template(list(p.request.messages), tokenize=False, add_generation_prompt=True)
        enc = tok(text + "Covered:", return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        hs.append(np.stack([out.hidden_states[layer][0, -1].numpy() for layer in layers]))
        ys.append(LABELS.index(verdict))
        own.append(int(torch.argmax(out.logits[0, -1, first])))
        print(f"{i + 1}/{len(rows)}", end="\r", file=sys.stderr, flush=True)
    return np.stack(hs).transpose(1, 0, 2), np.array(ys), np.array(own)


def _fit(x, y, l2: float):
    """Weights and bias of an L2 multinomial logistic regression of labels `y` on `x` (float tensors)."""
    import torch

    w = torch.zeros(x.shape[1], len(LABELS), requires_grad=True)
    b = torch.zeros(len(LABELS), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach(), b.detach()


def cross_validated(x, y, l2: float, folds: int = 10, seed: int = 0) -> float:
    """10-fold accuracy of an L2 multinomial logistic regression on standardised `x` (questions, width)."""
    import numpy as np
    import torch

    order = np.random.default_rng(seed).permutation(len(y))
    right = 0
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        w, b = _fit(torch.tensor((x[train] - mu) / sd, dtype=torch.float32), torch.tensor(y[train]), l2)
        pred = (torch.tensor((x[held] - mu) / sd, dtype=torch.float32) @ w + b).argmax(-1).numpy()
        right += int((pred == y[held]).sum())
    return right / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="6,12,18,24,27,30", help="Hidden-state layers to probe (0: embeddings).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    layers = [int(v) for v in args.layers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        proj = example_project(Path(tmp))
        x, y, own = features(proj, training_questions(), layers)
    majority = Counter(y.tolist()).most_common(1)[0][1] / len(y)
    probes = [{"layer": layer, "l2": l2, "accuracy": round(cross_validated(x[i], y, l2), 3)}
              for i, layer in enumerate(layers) for l2 in (1e-3, 1e-2, 1e-1)]
    result = {"benchmark": "verdict_probe", "date": now_iso(), "machine": machine_info(), "questions": len(y),
              "labels": {w: int((y == i).sum()) for i, w in enumerate(LABELS)},
              "majority_accuracy": round(majority, 3), "adapter_accuracy": round(float((own == y).mean()), 3),
              "probes": probes, "command": "python benchmarks/verdict_probe.py"}
    write_json(RESULTS / "verdict_probe.json", result)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(y)} questions; always the commonest label {majority:.2f}; the adapter's verdict "
          f"{result['adapter_accuracy']:.2f}")
    print(markdown_table(["layer", "L2", "10-fold accuracy"], [[p["layer"], p["l2"], p["accuracy"]] for p in probes]))


if __name__ == "__main__":
    main()
