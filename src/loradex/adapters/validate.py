"""What a PEFT LoRA adapter may carry on this base model, and whether it may share a mixed-adapter batch.

`check_config` refuses PEFT features that cannot be served on one shared, unchanged base model. `check_tensors`
checks every tensor of adapter_model.safetensors against the base model's weight shapes: LoRA A/B at the rank PEFT
gives that module (`r`, `rank_pattern`), LoRA biases, embedding LoRA, DoRA magnitude vectors, trainable-token
deltas, `modules_to_save` copies and copies of base weights (whose values must equal the base's, since PEFT loads
them into the shared base); a tensor of no known kind or for a module the base lacks is refused, and so is an
adapter that lacks the weights of a module its config targets (PEFT would serve that module freshly initialised).
`serving` decides whether the adapter can join a batch that mixes adapters (PEFT's `adapter_names=`).

The rules follow PEFT 0.21's own code, cited per function. Files, hashes and manifests are `registry.py`'s;
loading and batching are the engine's (`loradex.engine.local`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, ValidationError

from ..errors import AdapterError

__all__ = ["Serving", "check_config", "check_tensors", "module_alpha", "module_rank", "serving", "targets"]

PREFIX = "base_model.model."  # PEFT's prefix of every saved key (PeftModel -> LoraModel -> the transformers model)
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.(?P<param>weight|bias)$")
_EMBED = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<part>[AB])(?:\.[^.]+)?$")
_MAGNITUDE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")
_BASE_COPY = re.compile(r"^(?P<module>.+)\.base_layer\.(?P<param>weight|bias)$")
_TOKENS = re.compile(r"^(?P<module>.+)\.token_adapter\.trainable_tokens_delta$")
# LoraConfig fields that select a LoRA variant (PEFT 0.21 `lora.layer.Linear.lora_variants`); DoRA is served
_VARIANTS = ("arrow_config", "use_bdlora", "alora_invocation_tokens", "velora_config", "monteclora_config",
             "kasa_config")
# initialisations that rewrite the base layer's weight when PEFT loads the adapter (`LoraLayer.update_layer`)
_RESIDUAL_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")
_SHOWN = 6  # problems listed in one error


@dataclass(frozen=True)
class Serving:
    """How an adapter can be batched: `mixed_batch` False means its requests are generated in batches of their
    own (one adapter, `set_adapter`), for `reason`."""

    mixed_batch: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mixed_batch": self.mixed_batch, "reason": self.reason}


def serving(cfg: dict) -> Serving:
    """Whether an adapter with PEFT config `cfg` can share a batch with other adapters and the bare base.

    Not with DoRA (PEFT's `LoraLayer._check_forward_args` raises "Cannot pass `adapter_names` when DoRA is
    enabled"), nor with `modules_to_save` or `trainable_token_indices`: PEFT's `AuxiliaryTrainingWrapper` looks up
    every row's adapter in its own modules (a KeyError for adapters without them) and passes the whole batch
    through the base module when the active adapter is not its own (PEFT 0.21 `utils/other.py`)."""
    if cfg.get("use_dora"):
        return Serving(False, "DoRA: PEFT cannot mix DoRA adapters in one batch (adapter_names)")
    if cfg.get("modules_to_save"):
        return Serving(False, f"modules_to_save ({', '.join(cfg['modules_to_save'])}): PEFT cannot mix adapters "
                              "that replace whole modules in one batch")
    if cfg.get("trainable_token_indices"):
        return Serving(False, "trainable_token_indices: PEFT cannot mix adapters with trainable tokens in one batch")
    return Serving(True)


def pattern_value(patterns: dict, module: str, default: Any) -> Any:
    """The value of the first key of `patterns` that matches the end of `module` (after a '.'), else `default`:
    PEFT's `get_pattern_key` (peft/utils/other.py) as `LoraModel._create_and_replace` uses it."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def module_rank(cfg: dict, module: str) -> int:
    """The LoRA rank PEFT gives `module` (a full module name, e.g. `model.layers.0.self_attn.q_proj`):
    `rank_pattern`'s first matching entry, else `r`."""
    return int(pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8)))


def module_alpha(cfg: dict, module: str) -> float:
    """The LoRA alpha PEFT gives `module`: `alpha_pattern`'s first matching entry, else `lora_alpha`."""
    return float(pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8)))


def targets(cfg: dict, module: str) -> bool:
    """Whether PEFT wraps `module` with LoRA: `check_target_module_exists` of peft/tuners/tuners_utils.py
    (exclude_modules, modules_to_save, target_modules as a regex or as name suffixes, layers_to_transform with
    layers_pattern). `all-linear` and a missing `target_modules` depend on module types and are not decided here:
    False."""
    exclude = cfg.get("exclude_modules")
    if exclude and (re.fullmatch(exclude, module) if isinstance(exclude, str)
                    else module in exclude or any(module.endswith(f".{e}") for e in exclude)):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in cfg.get("modules_to_save") or ()):
        return False
    wanted = cfg.get("target_modules")
    if not wanted or wanted == "all-linear":
        return False
    if isinstance(wanted, str):
        return re.fullmatch(wanted, module) is not None
    if module in wanted:
        return True
    if not any(module.endswith(f".{t}") for t in wanted):
        return False
    return _in_layers(cfg, module)


def _in_layers(cfg: dict, module: str) -> bool:
    layers, pattern = cfg.get("layers_to_transform"), cfg.get("layers_pattern")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    match = None
    if not pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        for p in [pattern] if isinstance(pattern, str) else pattern:
            if (match := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)) is not None:
                break
    if not match:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)(\[.*\])?$")


class _ConfigFields(BaseModel):
    """The types of the adapter_config.json fields loradex reads (PEFT's LoraConfig); others pass unread."""

    model_config = ConfigDict(extra="allow")
    peft_type: Optional[str] = None
    base_model_name_or_path: Optional[str] = None
    r: StrictInt = 8
    lora_alpha: Union[StrictInt, StrictFloat, None] = None
    target_modules: Union[str, list[str], None] = None
    exclude_modules: Union[str, list[str], None] = None
    rank_pattern: Optional[dict[str, StrictInt]] = None
    alpha_pattern: Optional[dict[str, Union[StrictInt, StrictFloat]]] = None
    layers_to_transform: Union[StrictInt, list[StrictInt], None] = None
    layers_pattern: Union[str, list[str], None] = None
    modules_to_save: Optional[list[str]] = None
    use_dora: Optional[StrictBool] = None
    fan_in_fan_out: Optional[StrictBool] = None
    lora_bias: Optional[StrictBool] = None
    init_lora_weights: Union[StrictBool, str, None] = None
    layer_replication: Optional[list[list[StrictInt]]] = None
    target_parameters: Optional[list[str]] = None
    trainable_token_indices: Union[list[StrictInt], dict[str, list[StrictInt]], None] = None


def check_types(cfg: Any, folder: Path) -> None:
    """Raise AdapterError naming adapter_config.json and the first field whose value has the wrong type (a
    rank written as a string, a list where a mapping belongs), before any rule reads it."""
    where = Path(folder) / "adapter_config.json"
    if not isinstance(cfg, dict):
        raise AdapterError(f"{where}: must hold a JSON object, not {type(cfg).__name__}; save the adapter again "
                           "with PEFT")
    try:
        _ConfigFields.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if not _TYPE_TAG.match(str(p)))  # not a union's branch
        raise AdapterError(f"{where}: {field}: {first['msg']} (got {first.get('input')!r}); fix the file or save "
                           "the adapter again with PEFT") from None


def check_config(cfg: dict, folder: Path, max_rank: int) -> None:
    """Refuse what PEFT would load but one shared, unchanged base cannot serve. Raises AdapterError for a
    field of the wrong type (`check_types`), a non-LoRA type, a rank (`r` or a `rank_pattern` value) outside
    1..max_rank, a LoRA variant other than DoRA, an initialisation that rewrites base weights on load (PiSSA,
    CorDA, OLoRA, LoftQ, LoRA-GA), layer replication and LoRA on bare parameters (`target_parameters`)."""
    check_types(cfg, folder)
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"{folder}: peft_type is {cfg.get('peft_type')!r}, only LORA adapters are served")
    for where, rank in [("r", cfg.get("r", 0)), *(
            (f"rank_pattern[{k!r}]", v) for k, v in (cfg.get("rank_pattern") or {}).items())]:
        if not 0 < rank <= max_rank:
            fix = "retrain with a lower rank" if rank > max_rank else "a LoRA rank is at least 1"
            raise AdapterError(f"{folder}: {where} is {rank}, outside 1..{max_rank}; {fix}")
    variants = [f for f in _VARIANTS if cfg.get(f)] + (["mica"] if cfg.get("init_lora_weights") == "mica" else [])
    if variants:
        raise AdapterError(f"{folder}: the LoRA variant {', '.join(variants)} is not served (plain LoRA and DoRA "
                           "are); retrain as plain LoRA")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_RESIDUAL_INITS):
        raise AdapterError(f"{folder}: init_lora_weights={init!r}: PEFT rewrites the base model's weights when it "
                           "loads this adapter, which would change them for every adapter; save it as plain LoRA "
                           "(PEFT save_pretrained(path_initial_model_for_weight_conversion=...)) and import that")
    if cfg.get("layer_replication"):
        raise AdapterError(f"{folder}: layer_replication changes the base model's layers; it cannot be served on "
                           "the shared base")
    if cfg.get("target_parameters"):
        raise AdapterError(f"{folder}: target_parameters (LoRA on bare parameters) is not served; target modules")


def check_tensors(folder: Path, cfg: dict, shapes: dict[str, tuple[int, ...]],
                  base_shapes: dict[str, tuple[int, ...]], base_dir: Path | None = None) -> None:
    """Check every tensor of the adapter (`shapes`: saved name -> shape) against the base model (`base_shapes`:
    weight name -> shape, as in its safetensors; `base_dir`: its folder, to compare copies of base weights).

    Raises AdapterError naming each tensor that does not fit (its shape and the expected one), that is of no
    known kind or for a module the base lacks, that copies a base weight with other values, and each module the
    config targets without its LoRA weights."""
    base = _with_tied_head(base_shapes)
    embeddings = {m.group("module") for k in shapes if (m := _EMBED.match(_strip(k)))}
    problems, copies = [], []
    for key, shape in shapes.items():
        problem = _check_one(_strip(key), tuple(shape), cfg, base, embeddings)
        if problem == "copy":
            copies.append(key)
        elif problem:
            problems.append(f"{key}: {problem}")
    problems += _missing(cfg, {_strip(k) for k in shapes}, base)
    if not problems and copies and base_dir is not None:
        problems += _changed_copies(folder, copies, base_dir)
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise AdapterError(f"{folder}: {len(problems)} tensor(s) do not fit the base model: "
                           f"{'; '.join(problems[:_SHOWN])}{more}. Use an adapter trained for this base model")


def _strip(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def _with_tied_head(base_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Base shapes plus `lm_head.weight` when the head is tied to the input embedding (saved once, not twice)."""
    embeds = [k for k in base_shapes if k.endswith("embed_tokens.weight")]
    if "lm_head.weight" in base_shapes or len(embeds) != 1:
        return base_shapes
    return {**base_shapes, "lm_head.weight": base_shapes[embeds[0]]}


def _features(base: tuple[int, ...], cfg: dict, embedding: bool) -> tuple[int, int, tuple[int, ...]]:
    """(in_features, out_features, kernel) of a base weight: nn.Linear stores (out, in), nn.Embedding and
    GPT-2's Conv1D (`fan_in_fan_out`) store (in, out), convolutions (out, in, *kernel)."""
    if embedding or cfg.get("fan_in_fan_out"):
        return base[0], base[1], ()
    return base[1], base[0], tuple(base[2:])


def _check_one(key: str, shape: tuple[int, ...], cfg: dict, base: dict, embeddings: set[str]) -> str | None:
    """What is wrong with one tensor (None: nothing; "copy": a copy of a base weight, values checked later)."""
    for pattern in (_LORA, _EMBED, _MAGNITUDE, _TOKENS):
        if m := pattern.match(key):
            module = m.group("module")
            if f"{module}.weight" not in base:
                return f"is for {module!r}, which the base model does not have"
            want = _expected(pattern, m, cfg, base[f"{module}.weight"], module in embeddings)
            if isinstance(want, str):
                return want
            return None if shape == want else f"has shape {list(shape)}, the base layer needs {list(want)}"
    if (m := _BASE_COPY.match(key)) and f"{m.group('module')}.{m.group('param')}" in base:
        want = base[f"{m.group('module')}.{m.group('param')}"]
        return "copy" if shape == want else f"has shape {list(shape)}, the base layer needs {list(want)}"
    if key in base:
        if shape != base[key]:
            return f"has shape {list(shape)}, the base model's {key} is {list(base[key])}"
        saved = any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in cfg.get("modules_to_save") or ())
        return None if saved else "copy"
    return "matches no module of the base model (not a tensor PEFT's LoRA loads)"


def _expected(pattern: re.Pattern, m: re.Match, cfg: dict, base: tuple[int, ...],
              embedding: bool) -> tuple[int, ...] | str:
    """The shape PEFT builds for this tensor (`LoraLayer.update_layer`, `Embedding.update_layer`, `DoraLinearLayer`,
    `TrainableTokensLayer`), or why the tensor should not be there."""
    module = m.group("module")
    r = module_rank(cfg, module)
    fan_in, fan_out, kernel = _features(base, cfg, embedding or pattern is _EMBED)
    if pattern is _LORA:
        if m.group("param") == "bias":
            if m.group("part") == "A" or not cfg.get("lora_bias"):
                return "is a LoRA bias, but the config does not set lora_bias"
            return (fan_out,)
        return (r, fan_in, *kernel) if m.group("part") == "A" else (fan_out, r, *(1,) * len(kernel))
    if pattern is _EMBED:
        return (r, fan_in) if m.group("part") == "A" else (fan_out, r)
    if pattern is _MAGNITUDE:
        if not cfg.get("use_dora"):
            return "is a DoRA magnitude vector, but the config does not set use_dora"
        return (1, fan_out, *(1,) * len(kernel)) if kernel else (fan_out,)
    indices = cfg.get("trainable_token_indices")
    if isinstance(indices, dict):
        indices = next((v for k, v in indices.items() if module == k or module.endswith(f".{k}")), None)
    if not indices:
        return "is a trainable-token delta, but the config has no trainable_token_indices for this module"
    return (len(indices), base[1])


def _missing(cfg: dict, keys: set[str], base: dict) -> list[str]:
    """Modules the config targets that the adapter has no LoRA weights (or DoRA magnitude) for."""
    out = []
    for name in sorted(k[: -len(".weight")] for k, s in base.items() if k.endswith(".weight") and len(s) >= 2):
        if not targets(cfg, name):
            continue
        has = {p for p in ("A", "B") if any(k.startswith(f"{name}.lora_{p}") or k.startswith(
            f"{name}.lora_embedding_{p}") for k in keys)}
        if has != {"A", "B"}:
            out.append(f"{name}: targeted by target_modules but has no lora_{'/lora_'.join(sorted({'A', 'B'} - has))} "
                       "(PEFT would serve it with freshly initialised weights)")
        elif cfg.get("use_dora") and not any(k.startswith(f"{name}.lora_magnitude_vector") for k in keys):
            out.append(f"{name}: DoRA adapter without its lora_magnitude_vector")
    return out


def _changed_copies(folder: Path, keys: list[str], base_dir: Path) -> list[str]:
    """Copies of base weights whose values differ from the base's (compared at the lower of the two precisions):
    PEFT loads them into the shared base model, changing it for every adapter."""
    import torch
    from safetensors import safe_open

    where = {}
    for w in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(w), "pt") as f:
            where.update({k: w for k in f.keys()})
    out = []
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in keys:
            name = _strip(key).replace(".base_layer.", ".")
            if name not in where:  # the tied head, saved as the input embedding
                name = next((k for k in where if k.endswith("embed_tokens.weight")), name)
            if name not in where:
                continue
            with safe_open(str(where[name]), "pt") as b:
                mine, theirs = f.get_tensor(key), b.get_tensor(name)
            low = mine.dtype if torch.finfo(mine.dtype).bits <= torch.finfo(theirs.dtype).bits else theirs.dtype
            if not torch.equal(mine.to(low), theirs.to(low)):
                out.append(f"{key}: copies the base model's {name} with other values; PEFT would load it into the "
                           "shared base model and change it for every adapter")
    return out
