"""LoRA training with PEFT on the project's base model.

Loss is on the answer tokens only; prompts use the serving chat template and system message. A held-out
split is evaluated after each epoch (and at the end of a capped run), the best adapter is kept (not the
last), and training stops early after `patience` epochs without improvement. A checkpoint (adapter,
optimizer, scheduler, step, history) is written atomically every `save_every` steps under
.loradex/train/<run>/, so killing the process and running the same command again continues where it
stopped. The best adapter is registered with its manifest and a loss-curve PNG.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..prompt import system_message
from ..project import write_atomic
from .data import Example, data_sha256

Progress = Callable[[int, int, float], None]  # step, total steps, latest loss


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    batch_size: int = 4
    max_seq_len: int = 1024
    eval_fraction: float = 0.1
    patience: int = 2
    warmup_steps: int = 5
    save_every: int = 10
    seed: int = 0
    replay: float = 0.25  # general prompts with the base model's own answers, as a share of the examples (0: off)


@dataclass
class TrainResult:
    metrics: dict
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)


def encode(tokenizer, messages: tuple[dict, ...], system: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) for one example, with the serving chat template."""
    msgs = list(messages) if messages[0]["role"] == "system" else [{"role": "system", "content": system}, *messages]
    prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full conversation")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt):].rstrip("\n"), add_special_tokens=False)["input_ids"]
    if len(p_ids) + len(a_ids) > max_len:  # keep the whole answer; drop the prompt's oldest tokens
        p_ids = p_ids[-max(1, max_len - len(a_ids)):]
        a_ids = a_ids[: max_len - len(p_ids)]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def _batches(rows: list[tuple[list[int], list[int]]], size: int, pad: int, torch):
    for s in range(0, len(rows), size):
        chunk = rows[s : s + size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (x, y) in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        yield ids, labels, mask


def _eval_loss(model, rows, settings: TrainSettings, pad: int, torch) -> float:
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ids, labels, mask in _batches(rows, settings.batch_size, pad, torch):
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)


def run_id(data_hash: str, settings: TrainSettings, base_sha: str) -> str:
    key = json.dumps({"data": data_hash, "settings": asdict(settings), "base": base_sha}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _save_checkpoint(model, optimizer, scheduler, state: dict, folder: Path, torch) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def train_lora(model_dir: Path, examples: list[Example], work_dir: Path, settings: TrainSettings,
               project_name: str, progress: Progress | None = None) -> TrainResult:
    """Train and return the best adapter's folder (under work_dir/best) and metrics."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    system = system_message(project_name)
    train_ex, eval_ex = split(examples, settings.eval_fraction, settings.seed)
    train_rows = [encode(tokenizer, e.messages, system, settings.max_seq_len) for e in train_ex]
    eval_rows = [encode(tokenizer, e.messages, system, settings.max_seq_len) for e in eval_ex]
    steps_per_epoch = math.ceil(len(train_rows) / settings.batch_size)
    total = min(settings.max_steps or 10**9, steps_per_epoch * settings.epochs)

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(settings.warmup_steps, total), total)

    ckpt, best_dir = work_dir / "checkpoint", work_dir / "best"
    state = {"step": 0, "best_eval": None, "bad_epochs": 0, "history": [], "train_tokens": 0, "seconds": 0.0}
    if (ckpt / "state.json").is_file():  # resume after an interruption
        state = json.loads((ckpt / "state.json").read_text())
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    resumed_from = state["step"]

    def evaluate_and_keep(step: int) -> bool:
        """Held-out loss; saves the adapter if it is the best so far. True: stop early."""
        t_eval = time.perf_counter()
        loss = _eval_loss(model, eval_rows, settings, pad, torch)
        state["eval_seconds"] = state.get("eval_seconds", 0.0) + time.perf_counter() - t_eval
        state["history"].append({"step": step, "eval_loss": loss})
        if state["best_eval"] is None or loss < state["best_eval"]:
            state.update(best_eval=loss, best_step=step, bad_epochs=0)
            shutil.rmtree(best_dir, ignore_errors=True)
            model.save_pretrained(best_dir)
        else:
            state["bad_epochs"] += 1
        return state["bad_epochs"] >= settings.patience

    if state["best_eval"] is None and state["step"] == 0:
        evaluate_and_keep(0)  # the untrained adapter (identity) is the baseline to beat
    t_start = time.perf_counter() - state["seconds"]
    stopped_early = False
    while state["step"] < total and not stopped_early:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        order = list(range(len(train_rows)))
        random.Random(settings.seed + epoch).shuffle(order)
        rows = [train_rows[i] for i in order]
        for ids, labels, mask in list(_batches(rows, settings.batch_size, pad, torch))[offset:]:
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            loss = out.loss.item()
            del out  # the logits (batch x length x vocabulary) would otherwise live through the next forward
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state["step"] += 1
            state["train_tokens"] += int(mask.sum())
            state["history"].append({"step": state["step"], "loss": loss})
            if progress:
                progress(state["step"], total, loss)
            end_of_epoch = state["step"] % steps_per_epoch == 0
            if end_of_epoch or state["step"] == total:
                stopped_early = evaluate_and_keep(state["step"])
            if state["step"] % settings.save_every == 0 or end_of_epoch or state["step"] == total or stopped_early:
                state["seconds"] = time.perf_counter() - t_start
                _save_checkpoint(model, optimizer, scheduler, state, ckpt, torch)
            if state["step"] >= total or stopped_early:
                break
    seconds = time.perf_counter() - t_start
    plot_losses(state["history"], best_dir / "loss_curve.png")
    metrics = {"steps": state["step"], "best_step": state.get("best_step", 0), "best_eval_loss": state["best_eval"],
               "initial_eval_loss": next(h["eval_loss"] for h in state["history"] if "eval_loss" in h),
               "final_train_loss": next((h["loss"] for h in reversed(state["history"]) if "loss" in h), None),
               "stopped_early": stopped_early, "resumed_from_step": resumed_from, "train_examples": len(train_rows), "eval_examples": len(eval_rows),
               "train_tokens": state["train_tokens"], "seconds": round(seconds, 1),
               "eval_seconds": round(state.get("eval_seconds", 0.0), 1),
               "tokens_per_s": round(state["train_tokens"] / seconds, 1) if seconds > 0 else None}
    write_atomic(work_dir / "result.json", json.dumps({"metrics": metrics, "history": state["history"]}))
    return TrainResult(metrics, best_dir, state["history"])


def train(project, domain: str, examples: list[Example], settings: TrainSettings, *,
          progress: Progress | None = None, activate: bool = False):
    """Train an adapter for `domain` from `examples` and register it; returns (AdapterRef, metrics)."""
    from .registry import check_name

    check_name(domain)
    registry = project.registry
    base_dir = project.base_model_dir
    data_hash = data_sha256(examples)
    work = project.state_dir / "train" / f"{domain}-{run_id(data_hash, settings, registry.base['sha256'])}"
    tokenizer_template = (base_dir / "chat_template.jinja")
    template = tokenizer_template.read_text() if tokenizer_template.is_file() else ""
    n_domain = len(examples)
    if settings.replay > 0:
        from ..engine.local import LocalEngine
        from .replay import base_answers, mix

        cache = project.state_dir / "replay"
        pairs = base_answers(None, system_message(project.config.name), cache, registry.base["sha256"],
                             engine_factory=lambda: LocalEngine(base_dir))
        examples = mix(examples, pairs, settings.replay, settings.seed)
    result = train_lora(base_dir, examples, work, settings, project.config.name, progress)
    result.metrics["replay_examples"] = len(examples) - n_domain
    manifest = {"hyperparameters": asdict(settings), "metrics": result.metrics, "training_data_sha256": data_hash,
                "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
                "system_message_sha256": hashlib.sha256(system_message(project.config.name).encode()).hexdigest(),
                "created_at": time.time()}
    ref = registry.register(result.adapter_dir, domain, manifest)
    if activate:
        registry.activate(domain, ref.version)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)  # the run is complete; keep result.json and best/
    return ref, result.metrics
