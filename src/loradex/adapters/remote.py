"""Train on another machine (a GPU box) what `loradex train` would train here.

`loradex train DOMAIN --data F --prepare DIR` builds the examples as training sees them (sources from the
project's index, `loradex.adapters.train.prepare_examples`) and writes `DIR/examples.jsonl` and `DIR/job.json`
(settings, hashes, the context counts). On the other machine, `python -m loradex.adapters.remote DIR MODEL_DIR`
mixes in the replay prompts answered by the base model there, runs the same training loop
(`loradex.adapters.train.train_lora`) and writes `DIR/adapter/`: the PEFT files, the loss curve and a manifest
with the training record. Back here, `loradex adapters import DIR/adapter --domain DOMAIN` validates it against
the project's base model (the manifest names the job's base, and the LoRA shapes must fit it) and keeps the
record. MODEL_DIR must hold the job's base model: the other machine has no way to check that. It needs torch,
transformers and peft, and the base model as a Hugging Face folder; not the project, its index or its embedder.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import write_text
from ..prompt import system_message
from .data import Example, data_sha256
from .distributed import current
from .registry import adapter_version
from .replay import with_replay
from .train import (
    TrainSettings,
    check_lengths,
    context_summary,
    prepare_examples,
    train_lora,
    training_record,
    with_label,
)

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["prepare_job", "run_job"]


def prepare_job(project: Project, domain: str, examples: list[Example], settings: TrainSettings, dest: Path) -> dict:
    """Write the training job for `domain` under `dest` (created); returns job.json's content. Raises DataError
    for an example longer than `settings.max_seq_len` (checked here, not on the other machine)."""
    dest = Path(dest)
    settings = with_label(project, domain, settings)
    data_hash = data_sha256(examples)
    built, context = prepare_examples(project, domain, examples, settings)
    tokens = check_lengths(project.base_model_dir, built, settings, system_message(project.config.name))
    dest.mkdir(parents=True, exist_ok=True)
    job = {"domain": domain, "project_name": project.config.name, "settings": asdict(settings),
           "training_data_sha256": data_hash, "base_model": project.registry.base,
           "examples": len(built), "tokens": tokens,
           "context": context_summary(context, dest / "context_report.json") if context is not None else None}
    write_text(dest / "examples.jsonl", "".join(json.dumps({"messages": list(e.messages), "line": e.line}) + "\n"
                                                for e in built))
    write_text(dest / "job.json", json.dumps(job, indent=1))
    return job


def run_job(job_dir: Path, model_dir: Path) -> Path:
    """Train the job in `job_dir` on the base model in `model_dir`; returns the adapter folder written
    (`job_dir/adapter`). Raises FileNotFoundError when the job's files are missing."""
    job_dir, model_dir = Path(job_dir), Path(model_dir)
    job = json.loads((job_dir / "job.json").read_text())
    fields = dict(job["settings"], target_modules=tuple(job["settings"]["target_modules"]))
    settings = TrainSettings(**fields)
    examples = [Example(tuple(r["messages"]), r["line"]) for r in
                map(json.loads, (job_dir / "examples.jsonl").read_text().splitlines())]
    system = system_message(job["project_name"])
    mixed = with_replay(examples, settings.replay, settings.seed, system, job_dir / "replay",
                        job["base_model"]["sha256"], model_dir)
    result = train_lora(model_dir, mixed, job_dir / "work", settings, job["project_name"])
    out = job_dir / "adapter"
    if not current().main:  # under torchrun only rank 0 writes the adapter
        return out
    result.metrics["replay_examples"] = len(mixed) - len(examples)
    if job["context"] is not None:
        result.metrics["context"] = job["context"]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(result.adapter_dir, out)
    record = training_record(settings, result.metrics, job["training_data_sha256"], model_dir, system)
    record.update(version=adapter_version(out), base_model=job["base_model"])  # MODEL_DIR is the job's base
    write_text(out / "manifest.json", json.dumps(record, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a job written by `loradex train --prepare DIR`.")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("model_dir", type=Path, help="the base model as a Hugging Face folder")
    args = parser.parse_args()
    out = run_job(args.job_dir, args.model_dir)
    if not current().main:
        return
    print(json.dumps({"adapter": str(out), "metrics": json.loads((out / "manifest.json").read_text())["metrics"]}))


if __name__ == "__main__":
    main()
