"""Exporting the base model and LoRA adapters for onnxruntime-genai (`engine: ort`, `loradex.engine.ort`).

The base model is exported once per precision into the model cache (`$LORADEX_CACHE/ort/<name>-<sha12>-<precision>`,
keyed by the base model's hash like the safetensors conversion) with onnxruntime-genai's model builder
(`python -m onnxruntime_genai.models.builder`), given a template PEFT adapter of rank 1 on every linear layer of
the decoder (PEFT's `all-linear`). The builder bakes that adapter in as `MatMul(x, A)` and `MatMul(., B)` beside
each base `MatMul`; the export then turns those LoRA weights into graph inputs whose rank dimension is
symbolic (one name per layer), so one graph serves any adapter on those layers, of any rank, chosen per
request (onnxruntime-genai's `Adapters`). `int8` quantises the base MatMuls of the fp32 export to 8-bit
blocks (onnxruntime's `MatMulNBitsQuantizer`, block 32, symmetric); the LoRA weights, being inputs, stay float.

An adapter is exported on first use into onnxruntime's adapter format (`onnxruntime.AdapterFormat`), cached under
the hash of its PEFT files: A transposed to (in, r), B transposed to (r, out) and scaled by PEFT's scaling
(alpha / r, or alpha / sqrt(r) with rsLoRA), and empty (rank 0) tensors for the layers it does not adapt, which
then add nothing. The bare base model is the adapter with every tensor empty.

What cannot be exported raises `Unsupported` with a one-line reason: a model the builder does not know, DoRA,
`modules_to_save`, per-layer rank or alpha patterns, LoRA on layers outside the graph's (embeddings, lm_head).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..models import base_identity, cache_dir

__all__ = ["LORA_A", "LORA_B", "Unsupported", "export_adapter", "export_base", "lora_inputs"]

LORA_A, LORA_B = ".lora_A.MatMul.weight", ".lora_B.MatMul.weight"  # the builder's names of the LoRA weights
PRECISIONS = ("fp32", "int8")
_INPUTS = "lora_inputs.json"  # written last: its presence marks a complete export


class Unsupported(Exception):
    """The model or adapter cannot run on onnxruntime-genai; the message is the one-line reason."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_base(model_dir: Path, precision: str = "fp32", log: Callable[[str], None] = _log) -> Path:
    """The folder of the exported base model (model.onnx, genai_config.json, `lora_inputs.json`), exported now
    unless cached. A crash mid-export leaves no folder behind (it is built aside and renamed). Raises
    Unsupported when the builder fails (its last line of output is the reason) or names LoRA weights in a way
    this module does not know, ValueError for a precision other than fp32 or int8."""
    from filelock import FileLock

    if precision not in PRECISIONS:
        raise ValueError(f"ort precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    ident = base_identity(model_dir)
    out = cache_dir() / "ort" / f"{ident['name']}-{ident['sha256'][:12]}-{precision}"
    if (out / _INPUTS).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / _INPUTS).exists():
            return out
        work = out.with_name(out.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        if precision == "int8":
            _quantize(export_base(model_dir, "fp32", log), work / "model")
        else:
            log(f"first use of engine ort: exporting {ident['name']} to ONNX (fp32) in {out} (once, under a minute)")
            _build(model_dir, work)
        shutil.rmtree(out, ignore_errors=True)
        (work / "model").rename(out)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _build(model_dir: Path, work: Path) -> None:
    """The builder's fp32 export of `model_dir` with a rank-1 template adapter, its LoRA weights made inputs."""
    template = _template_adapter(model_dir, work / "template")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(work / "model"),
           "-p", "fp32", "-e", "cpu", "-c", str(work / "hf-cache"), "--extra_options", f"adapter_path={template}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise Unsupported(f"onnxruntime-genai's model builder cannot export {model_dir.name}: {last}")
    inputs = _lora_as_inputs(work / "model" / "model.onnx")
    expected = {_onnx_name(k) for k in _safetensors_keys(template / "adapter_model.safetensors")}
    if expected != set(inputs):
        raise Unsupported(f"the builder names {model_dir.name}'s LoRA weights in a way loradex does not map "
                          f"({len(expected ^ set(inputs))} names differ)")
    (work / "model" / _INPUTS).write_text(json.dumps(inputs, indent=1, sort_keys=True))


def _template_adapter(model_dir: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules="all-linear")).save_pretrained(str(out))
    return out


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return list(f.keys())


def _lora_as_inputs(model_path: Path) -> dict[str, list[int]]:
    """Rewrite the graph so every LoRA weight initializer is an input (rank dimension `lora_rank`); returns
    {input name: [in, out]} (A: in features; B: out features; the other number is 0)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    lora = [t for t in graph.initializer if t.name.endswith((LORA_A, LORA_B))]
    keep = [t for t in graph.initializer if not t.name.endswith((LORA_A, LORA_B))]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # the builder's shapes of the LoRA weights and of what they feed hold the template's rank 1: dropped, so
    # onnxruntime infers them from the inputs (a shared rank name would also make it reuse buffers across layers
    # of different ranks)
    kept_info = [v for v in graph.value_info if "lora" not in v.name]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    inputs: dict[str, list[int]] = {}
    for t in lora:
        rows, cols = t.dims
        a = t.name.endswith(LORA_A)
        rank = "rank." + t.name.removesuffix(LORA_A if a else LORA_B)  # A and B of one layer share a rank
        graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, [rows, rank] if a else [rank, cols]))
        inputs[t.name] = [rows, 0] if a else [0, cols]
    onnx.save(model, str(model_path))  # the weights stay in model.onnx.data (the template's few kB unused)
    return inputs


def _quantize(fp32: Path, out: Path) -> None:
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line a layer
    out.mkdir(parents=True)
    q = MatMulNBitsQuantizer(onnx.load(str(fp32 / "model.onnx")), bits=8, block_size=32, is_symmetric=True,
                             accuracy_level=4)
    q.process()  # MatMuls whose weight is a graph input (the LoRA ones) are left in float
    q.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
    for f in fp32.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)


def lora_inputs(folder: Path) -> dict[str, list[int]]:
    """The exported graph's LoRA inputs: {name: [in, out]} as `export_base` wrote them."""
    return json.loads((folder / _INPUTS).read_text())


def _onnx_name(peft_key: str) -> str:
    """The builder's input name for a PEFT weight key, e.g. `base_model.model.model.layers.0.self_attn.q_proj.
    lora_A.weight` -> `model.layers.0.attn.q_proj.lora_A.MatMul.weight`."""
    name = peft_key.removeprefix("base_model.model.").replace(".self_attn.", ".attn.")
    return name.replace(".lora_A.weight", LORA_A).replace(".lora_B.weight", LORA_B)


def _check_config(cfg: dict) -> float:
    """PEFT's LoRA scaling for `cfg` (adapter_config.json); Unsupported for what the graph cannot run."""
    problems = [what for what, bad in (
        (f"PEFT type {cfg.get('peft_type')}", cfg.get("peft_type", "LORA") != "LORA"),
        ("DoRA", bool(cfg.get("use_dora"))), ("modules_to_save", bool(cfg.get("modules_to_save"))),
        ("per-layer rank_pattern or alpha_pattern", bool(cfg.get("rank_pattern") or cfg.get("alpha_pattern"))),
        ("trainable tokens", bool(cfg.get("trainable_token_indices"))),
        ("LoRA bias", cfg.get("bias", "none") != "none"),
    ) if bad]
    if problems:
        raise Unsupported(f"onnxruntime-genai's graph cannot run {', '.join(problems)}")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    return alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def adapter_file(folder: Path, peft_dir: Path) -> Path:
    """Where the export of the PEFT adapter in `peft_dir` for the base export `folder` is cached."""
    h = hashlib.sha256()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((peft_dir / f).read_bytes())
    return folder / "adapters" / f"{h.hexdigest()[:16]}.onnx_adapter"


def export_adapter(peft_dir: Path | None, folder: Path) -> Path:
    """The PEFT adapter in `peft_dir` (None: the bare base model, every tensor empty) in onnxruntime's adapter
    format for the export `folder`, exported now unless cached. Raises Unsupported (see the module docstring)."""
    import numpy as np
    import onnxruntime as ort

    inputs = lora_inputs(folder)
    out = adapter_file(folder, peft_dir) if peft_dir else folder / "adapters" / "base.onnx_adapter"
    if out.exists():
        return out
    params: dict[str, object] = {}
    if peft_dir is not None:
        from safetensors.numpy import load_file

        scaling = _check_config(json.loads((peft_dir / "adapter_config.json").read_text()))
        for key, w in load_file(str(peft_dir / "adapter_model.safetensors")).items():
            name = _onnx_name(key)
            if name not in inputs:
                module = key.removeprefix("base_model.model.").rsplit(".", 2 if ".lora_" in key else 1)[0]
                raise Unsupported(f"{module.removesuffix('.base_layer')} is not a layer the exported graph adapts "
                                  f"({key})")
            arr = w.astype(np.float32).T * (scaling if name.endswith(LORA_B) else 1.0)
            if (arr.shape[0] if name.endswith(LORA_A) else arr.shape[1]) != max(inputs[name]):
                raise Unsupported(f"{key} has shape {list(w.shape)}, which does not fit the base model")
            params[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))
    for name, (rows, cols) in inputs.items():  # layers the adapter leaves alone: rank 0, adding nothing
        if name not in params:
            params[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros((rows, 0) if rows else (0, cols), np.float32))
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(params)
    out.parent.mkdir(exist_ok=True)
    part = out.with_name(out.name + f".{os.getpid()}.partial")
    fmt.export_adapter(str(part))
    part.replace(out)
    return out
