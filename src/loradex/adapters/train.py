"""LoRA training with PEFT on the project's base model, on a CUDA GPU when there is one, else on the CPU.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import replace_dir, write_text
from ..errors import ConfigError
from ..pipeline import label_of
from ..prompt import system_message
from .batches import batches, eval_loss, label_token_weights, weighted_loss
from .data import Example, data_sha256, encode_examples
from .distributed import Dist, current
from .replay import with_replay

if TYPE_CHECKING:
    from ..project import Project
    from .context import ContextReport
    from .registry import AdapterRef

Progress = Callable[[int, int, float], None]  # step, total steps, latest loss


def _setting(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainSettings:
    """LoRA training settings; each field's `help` is also the `loradex train` flag's help (one default,
    one text: the CLI reads them from here)."""

    epochs: int = _setting(3, "Passes over the training split.")
    max_steps: int | None = _setting(None, "Cap on optimizer steps (quick checks).")
    lr: float = _setting(2e-3, "Learning rate (AdamW, linear decay after warm-up).")
    rank: int = _setting(8, "LoRA rank r.")
    alpha: int = _setting(16, "LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = _setting(0.05, "LoRA dropout.")
    target_modules: tuple[str, ...] = _setting(
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        "Linear layers that get LoRA weights (comma-separated on the command line; a Llama's linear layers are "
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).")
    batch_size: int = _setting(4, "Examples per optimizer step; under torchrun the global batch, split between "
                                  "the processes (a multiple of their number).")
    max_seq_len: int = _setting(2048, "Tokens per example, prompt and answer; a longer example is refused, never "
                                      "cut (4 sources of answer.passage_chars 1600 take about 1,300).")
    eval_fraction: float = _setting(0.1, "Share of the examples held out for the evaluation loss.")
    patience: int = _setting(2, "Evaluations without improvement before stopping early.")
    warmup_steps: int = _setting(5, "Steps of linear learning-rate warm-up.")
    save_every: int = _setting(10, "Checkpoint every N steps (for resuming).")
    seed: int = _setting(0, "Seed of the split, the shuffles and the LoRA initialisation.")
    replay: float = _setting(0.25, "Share of general prompts answered by the base model mixed in against "
                                   "forgetting (0: off; benchmarks/adapter_effect.py).")
    context: bool = _setting(True, "Train with sources retrieved from the project in each prompt (RAFT-style), "
                                   "so the adapter answers from them and cites; off: the question alone, for "
                                   "adapters that only carry tone.")
    context_k: int = _setting(4, "Sources in each training prompt (as answer.k serves them).")
    gold_share: float = _setting(1.0, "Share of examples whose sources hold the passages that support the answer; "
                                      "the rest hold distractors only and learn to say the documents do not "
                                      "cover it (RAFT uses 0.8; at 0.8 the example adapters said 'not covered' "
                                      "with the answer in their sources).")
    context_sources: str = _setting("raft", "raft: the supporting passages among distractors in each prompt; served: "
                                            "the sources `ask` gives the question, the answer trimmed to them.")
    distractor_pool: int = _setting(12, "Hits retrieved per question, the supporting passages and the "
                                        "distractors are drawn from.")
    label_weight: float = _setting(1.0, "Loss weight of the answer's label tokens (the domain format's `label`, "
                                        "e.g. the Covered: verdict) against 1 for the other answer tokens "
                                        "(loradex.adapters.batches says why).")
    label_pattern: str | None = _setting(None, "The label's regular expression (first group); filled in from the "
                                               "domain's format when label_weight is not 1.")


@dataclass
class TrainResult:
    metrics: dict
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)


def split_holdout(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


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
    replace_dir(tmp, folder)


@dataclass
class _Run:
    """The state of one training run that its pieces share (model, optimizer, rows, counters)."""

    settings: TrainSettings
    model: Any
    optimizer: Any
    scheduler: Any
    train_rows: list
    eval_rows: list
    pad: int
    total: int
    steps_per_epoch: int
    best_dir: Path
    dist: Dist
    ddp: Any  # the model as the forward pass sees it: DistributedDataParallel across processes, else `model`
    state: dict = field(default_factory=lambda: {"step": 0, "best_eval": None, "bad_epochs": 0, "history": [],
                                                 "train_tokens": 0, "seconds": 0.0})

    def evaluate_and_keep(self, step: int, torch) -> bool:
        """Held-out loss; saves the adapter if it is the best so far. True: stop early."""
        state, t_eval = self.state, time.perf_counter()
        loss = eval_loss(self.model, self.eval_rows, self.settings.batch_size, self.pad, torch)
        state["eval_seconds"] = state.get("eval_seconds", 0.0) + time.perf_counter() - t_eval
        state["history"].append({"step": step, "eval_loss": loss})
        if state["best_eval"] is None or loss < state["best_eval"]:
            state.update(best_eval=loss, best_step=step, bad_epochs=0)
            if self.dist.main:
                shutil.rmtree(self.best_dir, ignore_errors=True)
                self.model.save_pretrained(self.best_dir)
        else:
            state["bad_epochs"] += 1
        return state["bad_epochs"] >= self.settings.patience


def _start(model_dir: Path, examples: list[Example], work_dir: Path, settings: TrainSettings,
           project_name: str, torch) -> _Run:
    """Tokenise the split examples, load the base model with fresh LoRA weights and the optimizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    system = system_message(project_name)
    train_ex, eval_ex = split_holdout(examples, settings.eval_fraction, settings.seed)
    train_rows: list = encode_examples(tokenizer, train_ex, system, settings.max_seq_len)
    eval_rows = encode_examples(tokenizer, eval_ex, system, settings.max_seq_len)
    if settings.label_weight != 1 and settings.label_pattern:  # loradex.adapters.batches says why
        train_rows = [(x, y, label_token_weights(tokenizer, x, y, settings.label_pattern, settings.label_weight))
                      for x, y in train_rows]
    steps_per_epoch = math.ceil(len(train_rows) / settings.batch_size)
    total = min(settings.max_steps or 10**9, steps_per_epoch * settings.epochs)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    _check_targets(base, settings.target_modules, torch)
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    dist = current()
    model = get_peft_model(base, lora).to(dist.device(torch))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(settings.warmup_steps, total), total)
    return _Run(settings, model, optimizer, scheduler, train_rows, eval_rows, pad, total, steps_per_epoch,
                work_dir / "best", dist, dist.wrap(model, torch))


def _check_targets(base, names: tuple[str, ...], torch) -> None:
    """Raise ConfigError naming the base model's linear layers when a target module is not one of them."""
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [n for n in names if n not in linear]
    if missing:
        raise ConfigError(f"target module(s) {', '.join(missing)} are not linear layers of the base model; "
                          f"its linear layers are {', '.join(linear)}")


def _resume(run: _Run, ckpt: Path, torch) -> None:
    """Continue from the checkpoint of an interrupted run, when there is one."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not (ckpt / "state.json").is_file():
        return
    run.state = json.loads((ckpt / "state.json").read_text())
    set_peft_model_state_dict(run.model, load_file(str(ckpt / "adapter_model.safetensors")))
    opt = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=next(run.model.parameters()).device)
    run.optimizer.load_state_dict(opt["optimizer"])
    run.scheduler.load_state_dict(opt["scheduler"])


def _step(run: _Run, ids, labels, mask, weights, torch) -> float:
    """One optimizer step on one batch (its loss weighted by `weights` when given); returns its loss."""
    out = run.ddp(input_ids=ids, attention_mask=mask, labels=None if weights is not None else labels)
    loss_t = weighted_loss(out.logits, labels, weights, torch) if weights is not None else out.loss
    loss_t.backward()  # across processes, DDP averages the gradients here
    loss = run.dist.sum(loss_t.item(), torch) / run.dist.world
    del out, loss_t  # the logits (batch x length x vocabulary) would otherwise live through the next forward
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    return loss


def _loop(run: _Run, ckpt: Path, t_start: float, progress: Progress | None, torch) -> bool:
    """Train until the step budget is spent or the held-out loss stops improving; True when stopped early."""
    state, settings = run.state, run.settings
    stopped_early = False
    while state["step"] < run.total and not stopped_early:
        epoch, offset = divmod(state["step"], run.steps_per_epoch)
        order = list(range(len(run.train_rows)))
        random.Random(settings.seed + epoch).shuffle(order)
        rows = run.dist.shard([run.train_rows[i] for i in order], settings.batch_size)  # all rows in one process
        device = next(run.model.parameters()).device
        size = settings.batch_size // run.dist.world
        for ids, labels, mask, weights in list(batches(rows, size, run.pad, torch, device))[offset:]:
            loss = _step(run, ids, labels, mask, weights, torch)
            state["step"] += 1
            state["train_tokens"] += int(run.dist.sum(float(mask.sum()), torch))
            state["history"].append({"step": state["step"], "loss": loss})
            if progress:
                progress(state["step"], run.total, loss)
            last = state["step"] >= run.total
            end_of_epoch = state["step"] % run.steps_per_epoch == 0
            if end_of_epoch or last:
                stopped_early = run.evaluate_and_keep(state["step"], torch)
            if run.dist.main and (state["step"] % settings.save_every == 0 or end_of_epoch or last or stopped_early):
                state["seconds"] = time.perf_counter() - t_start
                _save_checkpoint(run.model, run.optimizer, run.scheduler, state, ckpt, torch)
            if last or stopped_early:
                break
    return stopped_early


def _metrics(run: _Run, resumed_from: int, stopped_early: bool, seconds: float) -> dict:
    state, history = run.state, run.state["history"]
    return {"steps": state["step"], "best_step": state.get("best_step", 0), "best_eval_loss": state["best_eval"],
            "initial_eval_loss": next(h["eval_loss"] for h in history if "eval_loss" in h),
            "final_train_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
            "stopped_early": stopped_early, "resumed_from_step": resumed_from,
            "train_examples": len(run.train_rows), "eval_examples": len(run.eval_rows),
            "train_tokens": state["train_tokens"], "processes": run.dist.world, "seconds": round(seconds, 1),
            "eval_seconds": round(state.get("eval_seconds", 0.0), 1),
            "tokens_per_s": round(state["train_tokens"] / seconds, 1) if seconds > 0 else None}


def train_lora(model_dir: Path, examples: list[Example], work_dir: Path, settings: TrainSettings,
               project_name: str, progress: Progress | None = None) -> TrainResult:
    """Train a LoRA adapter on `model_dir` and return the best one (under work_dir/best) with its metrics.

    Resumes from work_dir/checkpoint when an earlier run was interrupted. Raises DataError when the base
    model's chat template cannot separate prompt from answer."""
    import torch

    run = _start(model_dir, examples, work_dir, settings, project_name, torch)
    ckpt = work_dir / "checkpoint"
    _resume(run, ckpt, torch)
    resumed_from = run.state["step"]
    if run.state["best_eval"] is None and run.state["step"] == 0:
        run.evaluate_and_keep(0, torch)  # the untrained adapter (identity) is the baseline to beat
    t_start = time.perf_counter() - run.state["seconds"]
    stopped_early = _loop(run, ckpt, t_start, progress, torch)
    seconds = time.perf_counter() - t_start
    metrics = _metrics(run, resumed_from, stopped_early, seconds)
    if run.dist.main:
        plot_losses(run.state["history"], run.best_dir / "loss_curve.png")
        write_text(work_dir / "result.json", json.dumps({"metrics": metrics, "history": run.state["history"]}))
    return TrainResult(metrics, run.best_dir, run.state["history"])


def training_record(settings: TrainSettings, metrics: dict, data_hash: str, base_dir: Path, system: str) -> dict:
    """The manifest's training record: settings, metrics and the hashes of the data, chat template and system
    message the adapter was trained under."""
    template_file = base_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else ""
    return {"hyperparameters": asdict(settings), "metrics": metrics, "training_data_sha256": data_hash,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "system_message_sha256": hashlib.sha256(system.encode()).hexdigest(), "created_at": time.time()}


def with_label(project: Project, domain: str, settings: TrainSettings) -> TrainSettings:
    """`settings` with `label_pattern` taken from the domain's format when `label_weight` is not 1 and no
    pattern is set. Raises ConfigError when the domain's format has no `label`."""
    if settings.label_weight == 1 or settings.label_pattern:
        return settings
    label = label_of(project, domain)
    if not label:
        raise ConfigError(f"--label-weight needs the answer's label: domain {domain!r} has no format with a `label` "
                          "in loradex.yaml (formats.<name>.label, e.g. '^Covered: (YES|NO)'); add one, or leave "
                          "--label-weight at 1")
    return replace(settings, label_pattern=label)


def prepare_examples(project: Project, domain: str, examples: list[Example],
                     settings: TrainSettings) -> tuple[list[Example], ContextReport | None]:
    """The examples as training will see them: with sources from the project's index when `settings.context`
    (`loradex.adapters.context.with_context`), else unchanged; and the context report (None without)."""
    if not settings.context:
        return examples, None
    from .context import with_context

    report = with_context(project, examples, k=settings.context_k, gold_share=settings.gold_share,
                          pool=settings.distractor_pool, seed=settings.seed,
                          domain=domain if domain in project.config.domains else None,
                          sources=settings.context_sources, keep=label_of(project, domain))
    return report.examples, report


def check_lengths(model_dir: Path, examples: list[Example], settings: TrainSettings, system: str) -> dict:
    """The token lengths of `examples` as training encodes them with `model_dir`'s tokenizer: `longest` and
    `median` (tokens), and `max_seq_len`. Raises DataError naming the examples longer than
    `settings.max_seq_len` (`loradex.adapters.data.encode_examples`), before any replay or training time."""
    from transformers import AutoTokenizer

    rows = encode_examples(AutoTokenizer.from_pretrained(str(model_dir)), examples, system, settings.max_seq_len)
    lengths = sorted(len(ids) for ids, _ in rows)
    return {"longest": lengths[-1], "median": lengths[len(lengths) // 2], "max_seq_len": settings.max_seq_len}


def context_summary(report: ContextReport, path: Path) -> dict:
    """The counts of `report` for the metrics, its full form written to `path`."""
    write_text(path, json.dumps(report.to_dict(), indent=1))
    return {"with_gold": report.with_gold, "without_gold": report.without_gold,
            "no_gold_found": len(report.no_gold_found), "unsupported_sentences": len(report.unsupported),
            "kept_as_given": report.kept,
            "report": str(path)}


def train(project: Project, domain: str, examples: list[Example], settings: TrainSettings, *,
          progress: Progress | None = None, activate: bool = False) -> tuple[AdapterRef | None, dict]:
    """Train an adapter for `domain` from `examples`, register it (and activate it when asked); returns the
    new version and its training metrics. With `settings.context` (the default) each example first gets
    sources from the project's index (`prepare_examples`); `metrics["context"]` counts what was built and
    names the report of the reference sentences no source supports. Under `torchrun` every process trains
    (`loradex.adapters.distributed`) and only rank 0 registers: the others get None. Raises AdapterError for an invalid
    domain name and DataError for an example longer than `settings.max_seq_len` (`check_lengths`)."""
    from .registry import check_name

    check_name(domain)
    settings = with_label(project, domain, settings)
    registry = project.registry
    base_dir = project.base_model_dir
    data_hash = data_sha256(examples)
    examples, context = prepare_examples(project, domain, examples, settings)
    work = project.state_dir / "train" / f"{domain}-{run_id(data_sha256(examples), settings, registry.base['sha256'])}"
    system = system_message(project.config.name)
    tokens = check_lengths(base_dir, examples, settings, system)
    n_domain = len(examples)
    examples = with_replay(examples, settings.replay, settings.seed, system, project.state_dir / "replay",
                           registry.base["sha256"], base_dir)
    result = train_lora(base_dir, examples, work, settings, project.config.name, progress)
    if not current().main:  # under torchrun only rank 0 registers the adapter
        return None, result.metrics
    result.metrics.update(replay_examples=len(examples) - n_domain, tokens=tokens)
    if context is not None:
        result.metrics["context"] = context_summary(context, work / "context_report.json")
    ref = registry.register(result.adapter_dir, domain, training_record(settings, result.metrics, data_hash,
                                                                         base_dir, system))
    if activate:
        registry.activate(domain, ref.version)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)  # the run is complete; keep result.json and best/
    return ref, result.metrics
