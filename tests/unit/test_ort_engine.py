"""The onnxruntime-genai engine's own behaviour on the tiny random Llama: the int8 export keeps LoRA in float,
adapters the graph cannot run go to the transformers engine with a reason, and a base model that cannot be
exported falls back whole. (The Engine contract is tests/contract/test_engine.py; parity with the transformers
engine on the real model is tests/integration/test_ort_parity.py.)"""
import pytest

from loradex.engine import GenerationRequest
from loradex.engine.local import LocalEngine
from loradex.engine.ort import OrtEngine
from loradex.engine.ort_export import Unsupported, export_base, lora_inputs
from loradex.errors import EngineError
from loradex.testing import build_random_adapter, build_tiny_llama

MSGS = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Report a claim within seven days"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort-tiny")
    return build_tiny_llama(root / "m"), root


def _peft(model_dir, out, **config):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                           LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(50.0)
    model.save_pretrained(str(out))
    return out


def test_int8_quantises_the_base_and_keeps_lora_float(tiny):
    import onnx

    model_dir, root = tiny
    fp32, int8 = export_base(model_dir, "fp32"), export_base(model_dir, "int8")
    assert lora_inputs(int8) == lora_inputs(fp32) and len(lora_inputs(fp32)) == 2 * 7 * 2  # 2 layers, 7 linears
    graph = onnx.load(str(int8 / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMulNBits" in ops
    lora = {i.name: i for i in graph.input if i.name in lora_inputs(int8)}
    assert len(lora) == 28 and all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in lora.values())
    assert all(n.op_type == "MatMul" for n in graph.node if any(x in lora for x in n.input))
    engine = OrtEngine(model_dir, precision="int8")
    engine.load_adapter("a", build_random_adapter(model_dir, root / "a-int8", seed=0))
    plain, adapted = engine.generate([GenerationRequest(MSGS, 12), GenerationRequest(MSGS, 12, adapter="a")])
    assert plain.completion_tokens == 12 and plain.text != adapted.text


def test_an_unknown_precision_is_refused(tiny):
    with pytest.raises(ValueError, match="fp32, int8"):
        export_base(tiny[0], "int4")


@pytest.mark.parametrize("config,reason", [
    ({"r": 4, "target_modules": ["q_proj"], "use_dora": True}, "DoRA"),
    ({"r": 4, "target_modules": ["q_proj", "lm_head"]}, "lm_head is not a layer the exported graph adapts"),
])
def test_an_adapter_the_graph_cannot_run_is_served_by_transformers_with_the_reason(tiny, config, reason):
    model_dir, root = tiny
    said: list[str] = []
    engine = OrtEngine(model_dir, log=said.append)
    path = _peft(model_dir, root / f"odd-{len(reason)}", **config)
    engine.load_adapter("odd", path)
    assert len(said) == 1 and "adapter odd runs on the transformers engine" in said[0] and reason in said[0]
    assert "odd" in engine.loaded_adapters()
    local = LocalEngine(model_dir)
    local.load_adapter("odd", path)
    r = GenerationRequest(MSGS, 10, adapter="odd")
    assert engine.generate([r])[0].text == local.generate([r])[0].text
    assert "".join(engine.stream(r)).strip() == local.generate([r])[0].text


def test_rslora_scaling_and_other_ranks_give_the_transformers_tokens(tiny):
    model_dir, root = tiny
    engine, local = OrtEngine(model_dir), LocalEngine(model_dir)
    for name, config in {"rs": {"r": 8, "target_modules": ["q_proj", "down_proj"], "use_rslora": True},
                         "r2": {"r": 2, "lora_alpha": 7, "target_modules": ["v_proj", "up_proj"]}}.items():
        path = _peft(model_dir, root / name, **config)
        engine.load_adapter(name, path)
        local.load_adapter(name, path)
    reqs = [GenerationRequest(MSGS, 16, adapter=a) for a in ("rs", "r2", None)]
    assert [g.text for g in engine.generate(reqs)] == [g.text for g in local.generate(reqs)]
    assert len({g.text for g in engine.generate(reqs)}) == 3


def test_past_max_adapters_the_least_recent_is_unloaded_and_reloaded_when_asked(tiny):
    model_dir, root = tiny
    engine = OrtEngine(model_dir, max_adapters=1)
    paths = [build_random_adapter(model_dir, root / f"lru{i}", seed=i) for i in range(2)]
    engine.load_adapter("a0", paths[0])
    first = engine.generate([GenerationRequest(MSGS, 8, adapter="a0")])[0].text
    engine.load_adapter("a1", paths[1])
    assert engine.loaded_adapters() == ["a1"] and engine.stats["adapter_evictions"] == 1
    assert engine.generate([GenerationRequest(MSGS, 8, adapter="a0")])[0].text == first
    assert engine.loaded_adapters() == ["a0"]


def test_a_prompt_past_the_context_is_an_engine_error(tiny):
    engine = OrtEngine(tiny[0])
    with pytest.raises(EngineError, match="exceed the model's context"):
        engine.generate([GenerationRequest(MSGS, engine.context_length)])


def test_a_model_that_cannot_be_exported_falls_back_to_transformers_with_the_reason(tiny, monkeypatch, capsys,
                                                                                     tmp_path):
    from loradex.engine import ort
    from loradex.project import open_project

    def refuse(*a, **k):
        raise Unsupported("onnxruntime-genai's model builder cannot export m: NotImplementedError: arch")

    monkeypatch.setattr(ort, "export_base", refuse)
    (tmp_path / "loradex.yaml").write_text(f"model: {tiny[0]}\nengine: ort\nembedder: hashing\n")
    engine = open_project(tmp_path).engine
    assert isinstance(engine, LocalEngine)
    assert "engine ort is not available here, using the transformers engine" in capsys.readouterr().err


def test_a_failed_export_leaves_no_folder(tiny, monkeypatch, tmp_path):
    from loradex.engine import ort_export

    monkeypatch.setenv("LORADEX_CACHE", str(tmp_path / "cache"))

    def crash(model_dir, work):
        (work / "model").mkdir()
        (work / "model" / "model.onnx").write_text("half")
        raise Unsupported("builder died")

    monkeypatch.setattr(ort_export, "_build", crash)
    with pytest.raises(Unsupported, match="builder died"):
        export_base(tiny[0], "fp32")
    assert [p.name for p in (tmp_path / "cache" / "ort").iterdir() if not p.name.endswith((".lock", ".partial"))] == []


def test_the_servers_batcher_and_concurrent_streams_get_each_request_alone(tiny):
    """What `loradex serve` does with the engine: batches from its batcher, streams from other threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    from loradex.server.batcher import Batcher

    model_dir, root = tiny
    engine = OrtEngine(model_dir)
    for i in range(2):
        engine.load_adapter(f"c{i}", build_random_adapter(model_dir, root / f"conc{i}", seed=i))
    reqs = [GenerationRequest(({"role": "user", "content": q},), 10, adapter=a)
            for q in ("Report a claim", "Theft") for a in (None, "c0", "c1")]
    alone = [engine.generate([r])[0].text for r in reqs]
    assert len(set(alone[:3])) == 3
    batcher = Batcher(engine, max_batch=8, window_ms=200)
    try:
        futures = [batcher.submit(r) for r in reqs]
        with ThreadPoolExecutor(4) as pool:
            streamed = list(pool.map(lambda r: "".join(engine.stream(r)).strip(), reqs))
        assert [f.result(timeout=120).text for f in futures] == alone
        assert streamed == alone
    finally:
        batcher.close()
