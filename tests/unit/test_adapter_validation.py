"""Adapter validation against the base model (every tensor, at the rank PEFT uses per module), the mixed-batch
decision made at import, and one request's failure staying its own. Each handed input of issue 19 (kind 5,
`../shared/cases/adapter_*.py`) is rebuilt here on a tiny random Llama, beside instances written for these tests.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loradex.adapters.registry import Registry
from loradex.adapters.validate import module_alpha, module_rank, serving, targets
from loradex.engine import GenerationRequest
from loradex.engine.echo import EchoEngine
from loradex.engine.local import LocalEngine
from loradex.errors import AdapterError, EngineError
from loradex.models import base_identity, cache_dir, weight_shapes
from loradex.server.batcher import Batcher
from loradex.testing import build_random_adapter, build_tiny_llama

CASES = Path(__file__).resolve().parents[2] / ".." / "shared" / "cases"
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MSGS = ({"role": "user", "content": "Report a claim"},)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("base") / "m")


@pytest.fixture
def registry(tmp_path, tiny):
    return Registry(tmp_path / "adapters", base_identity(tiny), weight_shapes(tiny), base_dir=tiny)


def peft_adapter(base_dir: Path, out: Path, *, resize: int = 0, scale: float = 1.0, **lora) -> Path:
    """A PEFT LoRA adapter saved by PEFT itself (random, non-zero weights), as the handed scripts make them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    if resize:
        model.resize_token_embeddings(model.config.vocab_size + resize)
    lora = {"r": 4, "lora_alpha": 16, "target_modules": ATTN, "init_lora_weights": False, **lora}
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft_model.save_pretrained(str(out))
    return out


def edit(folder: Path, tensors=None, config=None) -> Path:
    """Change an adapter's tensors (`tensors(dict)` edits the state dict in place) or config (a dict update)."""
    if tensors:
        sd = load_file(folder / "adapter_model.safetensors")
        tensors(sd)
        save_file(sd, folder / "adapter_model.safetensors")
    if config:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    return folder


KEY = "base_model.model.model.layers.0.self_attn.q_proj"


# ---- handed: adapter_dora.py ---------------------------------------------------------------------------------
def test_dora_is_accepted_and_recorded_as_needing_batches_of_its_own(registry, tiny, tmp_path):
    dora = peft_adapter(tiny, tmp_path / "dora", r=8, use_dora=True)
    plain = peft_adapter(tiny, tmp_path / "plain", r=8)
    d, p = registry.import_folder(dora, "dora"), registry.import_folder(plain, "plain")
    assert registry.manifest(d)["serving"]["mixed_batch"] is False
    assert "DoRA" in registry.manifest(d)["serving"]["reason"]
    assert registry.manifest(p)["serving"] == {"mixed_batch": True, "reason": None}
    assert {r["domain"]: r["mixed_batch"] for r in registry.versions()} == {"dora": False, "plain": True}


def test_dora_beside_plain_lora_concurrent_requests_all_answer(tiny, tmp_path):
    """The handed failure: every request batched with the DoRA adapter failed ("Cannot pass adapter_names when
    DoRA is enabled"). Now the DoRA adapter gets batches of its own and each answer equals the request alone."""
    engine = LocalEngine(tiny)
    engine.load_adapter("dora", peft_adapter(tiny, tmp_path / "dora", use_dora=True, scale=50.0))
    engine.load_adapter("plain", build_random_adapter(tiny, tmp_path / "plain", seed=1))
    reqs = [GenerationRequest(({"role": "user", "content": q},), 8, adapter=a)
            for q in ("Report a claim", "Theft") for a in (None, "dora", "plain")]
    alone = [engine.generate([r])[0].text for r in reqs]
    assert len(set(alone[:3])) == 3  # base, DoRA and plain really answer differently
    assert [g.text for g in engine.generate(reqs)] == alone
    batcher = Batcher(engine, max_batch=8, window_ms=500)
    try:
        futures = [batcher.submit(r) for r in reqs]
        assert [f.result(timeout=120).text for f in futures] == alone
        assert batcher.stats["largest_batch"] == 6 and batcher.stats["retried_batches"] == 0
    finally:
        batcher.close()


def test_without_the_import_decision_peft_fails_the_mixed_batch_as_an_engine_error(tiny, tmp_path):
    engine = LocalEngine(tiny)
    engine.load_adapter("dora", peft_adapter(tiny, tmp_path / "dora", use_dora=True))
    engine._solo.pop("dora")  # pretend it could be mixed: what loradex did before
    with pytest.raises(EngineError, match=r"adapters: base, dora\): ValueError: Cannot pass `adapter_names` when "
                                          r"DoRA is enabled") as caught:
        engine.generate([GenerationRequest(MSGS, 4), GenerationRequest(MSGS, 4, adapter="dora")])
    assert isinstance(caught.value.__cause__, ValueError)


# ---- handed: adapter_modules_to_save.py ----------------------------------------------------------------------
def test_a_resized_embedding_in_modules_to_save_is_refused_at_import(registry, tiny, tmp_path):
    vocab = weight_shapes(tiny)["model.embed_tokens.weight"][0]
    folder = peft_adapter(tiny, tmp_path / "mts", resize=1, modules_to_save=["embed_tokens"], init_lora_weights=True)
    with pytest.raises(AdapterError, match=rf"base_model\.model\.model\.embed_tokens\.weight: has shape "
                                           rf"\[{vocab + 1}, 64\], the base model's model\.embed_tokens\.weight is "
                                           rf"\[{vocab}, 64\]"):
        registry.import_folder(folder, "mts")
    assert registry.versions() == []  # nothing registered


def test_modules_to_save_of_the_right_shape_is_accepted_and_served_alone(registry, tiny, tmp_path):
    """A second kind that cannot mix: with `adapter_names`, PEFT's modules_to_save wrapper raises KeyError for
    every other adapter of the batch, even in batches that do not use it, as long as it is loaded."""
    folder = peft_adapter(tiny, tmp_path / "head", modules_to_save=["lm_head"], scale=50.0)
    ref = registry.import_folder(folder, "head")
    assert registry.manifest(ref)["serving"]["mixed_batch"] is False
    engine = LocalEngine(tiny)
    engine.load_adapter("head", folder)
    engine.load_adapter("plain", build_random_adapter(tiny, tmp_path / "plain", seed=2))
    reqs = [GenerationRequest(MSGS, 8, adapter=a) for a in ("head", None, "plain", "head")]
    alone = [engine.generate([r])[0].text for r in reqs]
    assert alone[0] != alone[1] != alone[2]
    assert [g.text for g in engine.generate(reqs)] == alone
    assert [g.text for g in engine.generate(reqs[1:3])] == alone[1:3]  # base + plain while it stays loaded


def test_trainable_tokens_cannot_mix_either(tiny, tmp_path):
    folder = peft_adapter(tiny, tmp_path / "tokens", trainable_token_indices=[3, 5])
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert serving(cfg).mixed_batch is False and "trainable_token_indices" in serving(cfg).reason


# ---- handed: adapter_rank_variants.py ------------------------------------------------------------------------
def test_valid_rank_variants_are_accepted(registry, tiny, tmp_path):
    for name, kw in {"r64": {"r": 64}, "rank-pattern": {"r": 8, "rank_pattern": {"q_proj": 16}},
                     "no-base-name": {"r": 8}}.items():
        folder = peft_adapter(tiny, tmp_path / name, **kw)
        if name == "no-base-name":
            edit(folder, config={"base_model_name_or_path": None})
        ref = registry.import_folder(folder, name)
        assert registry.manifest(ref)["serving"]["mixed_batch"] is True
    engine = LocalEngine(tiny)
    engine.load_adapter("rp", tmp_path / "rank-pattern")
    assert engine.generate([GenerationRequest(MSGS, 4, adapter="rp")])[0].completion_tokens == 4


def test_rank_512_and_pickle_weights_are_refused_with_the_reason(registry, tiny, tmp_path):
    with pytest.raises(AdapterError, match=r"r is 512, outside 1\.\.256; retrain with a lower rank"):
        registry.import_folder(edit(peft_adapter(tiny, tmp_path / "r512"), config={"r": 512}), "r512")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny)), LoraConfig(target_modules=ATTN)).save_pretrained(
        str(tmp_path / "bin"), safe_serialization=False)
    with pytest.raises(AdapterError, match=r"refusing pickle files \(adapter_model\.bin\)"):
        registry.import_folder(tmp_path / "bin", "bin")


def test_shapes_are_checked_at_the_rank_the_pattern_gives_each_module(registry, tiny, tmp_path):
    """A config whose rank_pattern does not match its tensors: q_proj's tensors are rank 4, the config says 16."""
    folder = edit(peft_adapter(tiny, tmp_path / "lie"), config={"rank_pattern": {"q_proj": 16}})
    with pytest.raises(AdapterError, match=rf"{KEY}\.lora_A\.weight: has shape \[4, 64\], the base layer needs "
                                           r"\[16, 64\]"):
        registry.import_folder(folder, "lie")


# ---- instances written here: tensors of every kind checked -------------------------------------------------
def test_a_lora_tensor_for_a_module_the_base_lacks_is_refused(registry, tiny, tmp_path):
    def rename(sd):
        sd[KEY.replace("q_proj", "x_proj") + ".lora_A.weight"] = sd.pop(f"{KEY}.lora_A.weight")
    with pytest.raises(AdapterError, match=r"x_proj\.lora_A\.weight: is for 'model\.layers\.0\.self_attn\.x_proj', "
                                           r"which the base model does not have"):
        registry.import_folder(edit(peft_adapter(tiny, tmp_path / "x"), tensors=rename), "x")


def test_a_tensor_of_no_known_kind_and_a_missing_lora_b_are_refused(registry, tiny, tmp_path):
    def damage(sd):
        sd[f"{KEY}.lora_C.weight"] = torch.zeros(4, 64)
        del sd[KEY.replace("q_proj", "v_proj") + ".lora_B.weight"]
    with pytest.raises(AdapterError, match=r"2 tensor\(s\) do not fit.*lora_C\.weight: matches no module of the base "
                                           r"model.*v_proj: targeted by target_modules but has no lora_B"):
        registry.import_folder(edit(peft_adapter(tiny, tmp_path / "c"), tensors=damage), "c")


def test_dora_magnitudes_are_checked(registry, tiny, tmp_path):
    def shorten(sd):
        sd[f"{KEY}.lora_magnitude_vector"] = sd[f"{KEY}.lora_magnitude_vector"][:10]
    folder = edit(peft_adapter(tiny, tmp_path / "d", use_dora=True), tensors=shorten)
    with pytest.raises(AdapterError, match=rf"{KEY}\.lora_magnitude_vector: has shape \[10\], the base layer needs "
                                           r"\[64\]"):
        registry.import_folder(folder, "d")
    not_dora = edit(peft_adapter(tiny, tmp_path / "nd", use_dora=True), config={"use_dora": False})
    with pytest.raises(AdapterError, match="is a DoRA magnitude vector, but the config does not set use_dora"):
        registry.import_folder(not_dora, "nd")


def test_lora_bias_and_embedding_lora_are_accepted_and_mixable(registry, tiny, tmp_path):
    bias = registry.import_folder(peft_adapter(tiny, tmp_path / "b", lora_bias=True), "bias")
    emb = registry.import_folder(peft_adapter(tiny, tmp_path / "e", target_modules=["embed_tokens", "q_proj"]), "emb")
    assert registry.manifest(bias)["serving"]["mixed_batch"] and registry.manifest(emb)["serving"]["mixed_batch"]
    biased = edit(peft_adapter(tiny, tmp_path / "b2"), tensors=lambda sd: sd.update({f"{KEY}.lora_B.bias":
                                                                                   torch.zeros(64)}))
    with pytest.raises(AdapterError, match="is a LoRA bias, but the config does not set lora_bias"):
        registry.import_folder(biased, "b2")


def test_a_copy_of_a_base_weight_with_other_values_is_refused(registry, tiny, tmp_path):
    """PEFT saves the embedding with adapters that target it, and loads it back into the shared base: a copy
    with other values would change the base model for every adapter (checked by loading it with PEFT)."""
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    folder = edit(peft_adapter(tiny, tmp_path / "e", target_modules=["embed_tokens", "q_proj"]),
                  tensors=lambda sd: sd.update({key: torch.zeros_like(sd[key])}))
    with pytest.raises(AdapterError, match=rf"{key}: copies the base model's model\.embed_tokens\.weight with other "
                                           r"values"):
        registry.import_folder(folder, "e")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny)), str(folder))
    assert float(loaded.get_input_embeddings().base_layer.weight.abs().sum()) == 0.0  # why it must be refused


@pytest.mark.parametrize("config,message", [
    ({"init_lora_weights": "pissa"}, r"init_lora_weights='pissa': PEFT rewrites the base model's weights"),
    ({"init_lora_weights": "olora"}, r"init_lora_weights='olora'"),
    ({"alora_invocation_tokens": [5, 6]}, r"the LoRA variant alora_invocation_tokens is not served"),
    ({"layer_replication": [[0, 2], [1, 2]]}, r"layer_replication changes the base model's layers"),
    ({"rank_pattern": {"q_proj": 300}}, r"rank_pattern\['q_proj'\] is 300, outside 1\.\.256"),
    ({"peft_type": "IA3"}, r"peft_type is 'IA3', only LORA"),
])
def test_configs_the_shared_base_cannot_serve_are_refused(registry, tiny, tmp_path, config, message):
    with pytest.raises(AdapterError, match=message):
        registry.import_folder(edit(peft_adapter(tiny, tmp_path / "a"), config=config), "a")


@pytest.mark.parametrize("config,message", [  # issue 20 kind 1: each named by file and field, never a traceback
    ({"r": "eight"}, r"adapter_config\.json: r: Input should be a valid integer \(got 'eight'\)"),
    ({"r": None}, r"adapter_config\.json: r: Input should be a valid integer"),
    ({"r": 0}, r"r is 0, outside 1\.\.256; a LoRA rank is at least 1"),
    ({"target_modules": 5}, r"adapter_config\.json: target_modules: "),
    ({"lora_alpha": "x"}, r"adapter_config\.json: lora_alpha: "),
    ({"rank_pattern": [1]}, r"adapter_config\.json: rank_pattern: Input should be a valid dictionary"),
    ({"alpha_pattern": {"q_proj": "z"}}, r"adapter_config\.json: alpha_pattern\.q_proj: "),
    ({"layers_to_transform": "a"}, r"adapter_config\.json: layers_to_transform: "),
    ({"use_dora": "yes"}, r"adapter_config\.json: use_dora: Input should be a valid boolean"),
])
def test_a_malformed_config_is_refused_naming_the_file_and_field(registry, tiny, tmp_path, config, message):
    with pytest.raises(AdapterError, match=message):
        registry.import_folder(edit(peft_adapter(tiny, tmp_path / "a"), config=config), "a")
    assert registry.versions() == []


def test_a_config_naming_another_base_model_is_refused_unless_allowed(registry, tiny, tmp_path):
    """Issue 20, kind 1: an adapter whose config names another base model (shapes that happen to fit) was
    accepted. Without a loradex manifest (whose base hash decides), the name must be this base's."""
    from loradex.adapters.registry import same_model_family

    base = base_identity(tiny)["name"]  # "m": the other name below must not hold an m
    other = edit(peft_adapter(tiny, tmp_path / "a"), config={"base_model_name_or_path": "Org/Other-Net-7B"})
    with pytest.raises(AdapterError, match=r"adapter_config\.json: base_model_name_or_path is 'Org/Other-Net-7B'.*"
                                           r"--allow-other-base"):
        registry.import_folder(other, "a")
    assert registry.versions() == []
    assert registry.import_folder(other, "a", other_base=True).version  # the user says it is this model
    renamed = edit(peft_adapter(tiny, tmp_path / "b"), config={"base_model_name_or_path": f"Org/{base.upper()}-chat"})
    assert registry.import_folder(renamed, "b").version  # the same model under a hub id
    with pytest.raises(AdapterError, match=r"base_model_name_or_path: Input should be a valid string"):
        registry.import_folder(edit(peft_adapter(tiny, tmp_path / "c"), config={"base_model_name_or_path": 5}), "c")
    assert same_model_family("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m")
    assert same_model_family("/tmp/ldxcache/models/smollm2-135m-b179c9523d0e/", "smollm2-135m")
    assert not same_model_family("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm2-135m")
    assert not same_model_family("meta-llama/Llama-3.2-1B", "smollm2-135m")


@pytest.mark.parametrize("text", ["[]", '"lora"', "{not json"])
def test_a_config_that_is_no_json_object_is_refused_naming_the_file(registry, tiny, tmp_path, text):
    folder = peft_adapter(tiny, tmp_path / "a")
    (folder / "adapter_config.json").write_text(text)
    with pytest.raises(AdapterError, match=r"adapter_config\.json"):
        registry.import_folder(folder, "a")


def test_pissa_would_change_the_shared_base_when_loaded(tiny, tmp_path):
    """Why a PiSSA config is refused: PEFT re-runs the initialisation on load and rewrites the base weight."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = edit(peft_adapter(tiny, tmp_path / "p"), config={"init_lora_weights": "pissa"})
    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    loaded = PeftModel.from_pretrained(model, str(folder))
    assert not torch.equal(before, loaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight)


# ---- PEFT's matching rules, checked against PEFT itself -------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    {"target_modules": ATTN},
    {"target_modules": ["q_proj", "up_proj"], "exclude_modules": ["model.layers.1.mlp.up_proj"]},
    {"target_modules": r".*layers\.1.*(q|v)_proj", "modules_to_save": ["lm_head"]},
    {"target_modules": ["v_proj", "down_proj"], "layers_to_transform": [1]},
    {"target_modules": ["q_proj"], "layers_to_transform": 0, "layers_pattern": "layers"},
    {"target_modules": ["k_proj", "lm_head"], "exclude_modules": "model\\.layers\\.0\\..*",
     "modules_to_save": ["embed_tokens"]},
])
def test_targets_matches_peft(tiny, cfg):
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    ns = SimpleNamespace(**{"exclude_modules": None, "modules_to_save": None, "target_parameters": None,
                            "layers_to_transform": None, "layers_pattern": None, **cfg})
    names = [k[: -len(".weight")] for k in weight_shapes(tiny)]
    assert [targets(cfg, n) for n in names] == [bool(check_target_module_exists(ns, n)) for n in names]
    assert any(targets(cfg, n) for n in names)


def test_module_rank_and_alpha_follow_peft_pattern_matching():
    from peft.utils.other import get_pattern_key

    cfg = {"r": 8, "lora_alpha": 16, "rank_pattern": {"layers.1.self_attn.q_proj": 2, "q_proj": 16, "proj": 4},
           "alpha_pattern": {r"layers\.0\..*_proj": 3}}
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.up_proj",
                   "model.layers.1.mlp.gate", "model.layers.11.self_attn.q_proj", "lm_head"):
        rank_key = get_pattern_key(cfg["rank_pattern"].keys(), module)
        alpha_key = get_pattern_key(cfg["alpha_pattern"].keys(), module)
        assert module_rank(cfg, module) == cfg["rank_pattern"].get(rank_key, 8)
        assert module_alpha(cfg, module) == cfg["alpha_pattern"].get(alpha_key, 16)
    assert module_rank(cfg, "model.layers.1.self_attn.q_proj") == 2 and module_rank(cfg, "lm_head") == 8


# ---- one request's failure is its own ----------------------------------------------------------------------
class _Poisoned(EchoEngine):
    """The echo engine, failing (as a bug would, not with a loradex error) any batch that holds "poison"."""

    def generate(self, requests, cancel=()):
        if any("poison" in r.messages[-1]["content"] for r in requests):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return super().generate(requests, cancel)


@pytest.mark.parametrize("engine,bad", [
    (EchoEngine(), GenerationRequest(MSGS, 4, adapter="never-loaded")),
    (_Poisoned(), GenerationRequest(({"role": "user", "content": "poison"},), 4)),
])
def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered(engine, bad):
    batcher = Batcher(engine, max_batch=8, window_ms=300)
    try:
        good = [GenerationRequest(({"role": "user", "content": f"q{i}"},), 4) for i in range(3)]
        futures = [batcher.submit(r) for r in (good[0], bad, good[1], good[2])]
        error = futures[1].exception(timeout=30)
        assert isinstance(error, EngineError)  # the server answers it with an OpenAI-style error body
        if isinstance(engine, _Poisoned):
            assert str(error) == "generation failed: RuntimeError: CUDA error: device-side assert triggered"
            assert isinstance(error.__cause__, RuntimeError)
        else:
            assert "'never-loaded' is not loaded" in str(error)
        assert [f.result(timeout=30).text for f in futures[::2] + futures[3:]] == \
            [g.text for g in EchoEngine().generate([good[0], good[1], good[2]])]
        assert batcher.stats["largest_batch"] == 4
        assert batcher.stats["retried_batches"] == 1 and batcher.stats["failed_requests"] == 1
    finally:
        batcher.close()


def test_a_cancelled_request_does_not_stop_the_worker():
    batcher = Batcher(EchoEngine(), max_batch=4, window_ms=200)
    try:
        first = batcher.submit(GenerationRequest(MSGS, 4))
        assert first.cancel()
        second = batcher.submit(GenerationRequest(MSGS, 4))
        assert second.result(timeout=30).completion_tokens >= 0
        time.sleep(0.3)
        assert batcher._thread.is_alive()
    finally:
        batcher.close()


# ---- the handed scripts on the real base model -------------------------------------------------------------
def _real_base() -> Path | None:
    return next(iter(sorted((cache_dir() / "models").glob("smollm2-135m-*"))), None)


@pytest.mark.slow
@pytest.mark.skipif(not CASES.is_dir() or _real_base() is None, reason="needs ../shared/cases and packaged SmolLM2")
def test_handed_adapter_scripts_on_the_real_base(tmp_path):
    base = _real_base()
    assert base is not None
    for script in ("adapter_dora.py", "adapter_modules_to_save.py", "adapter_rank_variants.py"):
        out = tmp_path / script.removesuffix(".py")
        done = subprocess.run([sys.executable, str(CASES / script), str(base), str(out)], capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    reg = Registry(tmp_path / "reg", base_identity(base), weight_shapes(base), base_dir=base)
    dora = reg.import_folder(tmp_path / "adapter_dora", "dora")
    assert reg.manifest(dora)["serving"]["mixed_batch"] is False
    with pytest.raises(AdapterError, match=r"embed_tokens\.weight: has shape \[49153, 576\], the base model's "
                                           r"model\.embed_tokens\.weight is \[49152, 576\]"):
        reg.import_folder(tmp_path / "adapter_modules_to_save", "mts")
    variants = tmp_path / "adapter_rank_variants"
    for name in ("r64", "rank-pattern", "no-base-name"):
        assert reg.manifest(reg.import_folder(variants / name, name))["serving"]["mixed_batch"] is True
    with pytest.raises(AdapterError, match=r"outside 1\.\.256"):
        reg.import_folder(variants / "r512", "r512")
    with pytest.raises(AdapterError, match="refusing pickle"):
        reg.import_folder(variants / "bin", "bin")
    engine = LocalEngine(base)
    engine.load_adapter("dora", tmp_path / "adapter_dora")
    engine.load_adapter("rp", variants / "rank-pattern")
    reqs = [GenerationRequest(MSGS, 4, adapter=a) for a in (None, "dora", "rp")]
    assert [g.text for g in engine.generate(reqs)] == [engine.generate([r])[0].text for r in reqs]
    shutil.rmtree(tmp_path / "reg")
