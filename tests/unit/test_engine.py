"""LocalEngine and EchoEngine specifics: chat template, model resolution, adapter eviction. What every engine
must do (batching, streaming, stop strings, budgets, adapters) is in `tests/contract/test_engine.py`."""
import pytest

from loradex.engine import GenerationRequest, cut_at_stop
from loradex.engine.echo import EchoEngine
from loradex.engine.local import LocalEngine
from loradex.errors import EngineError
from loradex.models import ModelNotFound, resolve_model
from loradex.testing import build_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return LocalEngine(build_tiny_llama(tmp_path_factory.mktemp("tiny")))


def _req(text, n=12, **kw):
    return GenerationRequest(({"role": "system", "content": "Be brief."}, {"role": "user", "content": text}), n, **kw)


def test_chat_template_carries_our_system_message(tiny):
    prompt = tiny.prompt(_req("hello").messages)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_local_engine_times_prompt_and_generation(tiny):
    # the rest of the former test_token_budget_and_batch_equals_single is in tests/contract/test_engine.py
    reqs = [_req("Report a claim", 10), _req("What is the grace period for a missed monthly premium?", 6)]
    batch = tiny.generate(reqs)
    assert batch[0].timings_ms["prompt"] > 0 and batch[0].timings_ms["generate"] >= 0


def test_cut_at_stop():
    assert cut_at_stop("answer\nQuestion: x", ["\nQuestion:", "###"]) == ("answer", True)
    assert cut_at_stop("answer", ["###"]) == ("answer", False)


def test_echo_engine_cites_source_one():
    msgs = ({"role": "user", "content": '<source 1 file="a">\nFirst sentence. Second.\n</source 1>'},)
    assert EchoEngine().generate([GenerationRequest(msgs)])[0].text == "First sentence. [1]"
    assert "".join(EchoEngine().stream(GenerationRequest(msgs))) == "First sentence. [1]"


def test_unknown_model_lists_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFound, match="tried the packaged names"):
        resolve_model("no-such-model", tmp_path)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF not really")
    import os
    os.environ["LORADEX_CACHE"] = str(tmp_path / "cache")
    try:
        with pytest.raises(ModelNotFound, match="cannot read GGUF"):
            resolve_model(str(bad), log=lambda m: None)
    finally:
        del os.environ["LORADEX_CACHE"]
    assert resolve_model(str(build_tiny_llama(tmp_path / "tiny"))) == tmp_path / "tiny"


def test_adapter_changes_output_and_base_stays_unchanged(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = build_tiny_llama(tmp_path / "m")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(50.0)  # a strong adapter: its greedy output must differ from the base's
    peft_model.save_pretrained(tmp_path / "a")
    engine = LocalEngine(folder)
    req = _req("Report a claim", 12)
    base = engine.generate([req])[0].text
    engine.load_adapter("claims", tmp_path / "a")
    with_adapter = engine.generate([GenerationRequest(req.messages, 12, adapter="claims")])[0].text
    assert with_adapter != base
    assert engine.generate([req])[0].text == base  # adapter=None is the bare base model
    assert "".join(engine.stream(GenerationRequest(req.messages, 12, adapter="claims"))).strip() == with_adapter
    with pytest.raises(EngineError, match="not loaded"):
        engine.generate([GenerationRequest(req.messages, 4, adapter="billing")])


@pytest.fixture(scope="module")
def four_adapters(tmp_path_factory):
    from loradex.testing import build_random_adapter

    root = tmp_path_factory.mktemp("adapters")
    folder = build_tiny_llama(root / "m")
    return folder, [build_random_adapter(folder, root / f"a{i}", seed=i) for i in range(4)]


def test_mixed_batch_equals_each_request_alone(four_adapters):
    folder, paths = four_adapters
    engine = LocalEngine(folder, max_adapters=4)
    for i, p in enumerate(paths):
        engine.load_adapter(f"d{i}@v1", p)
    prompts = ["Report a claim", "What is the grace period for a missed monthly premium?", "Theft", "Fees"]
    reqs = [GenerationRequest(_req(q).messages, 10, adapter=a)
            for q in prompts for a in (None, "d0@v1", "d1@v1", "d3@v1")]
    mixed = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert [g.text for g in mixed] == [g.text for g in alone]
    by_adapter = {r.adapter: g.text for r, g in zip(reqs[:4], alone[:4])}
    assert len(set(by_adapter.values())) == 4  # four different models really answered


def test_lru_eviction_and_a_new_version_never_serves_old_weights(four_adapters):
    folder, paths = four_adapters
    engine = LocalEngine(folder, max_adapters=2)
    req = _req("Report a claim")
    texts = {}
    for i in range(3):
        assert engine.load_adapter(f"d{i}", paths[i]) is True
        texts[i] = engine.generate([GenerationRequest(req.messages, 12, adapter=f"d{i}")])[0].text
    assert engine.loaded_adapters() == ["d1", "d2"] and engine.stats["adapter_evictions"] == 1
    with pytest.raises(EngineError, match="not loaded"):
        engine.generate([GenerationRequest(req.messages, 4, adapter="never-loaded")])
    assert engine.load_adapter("d1", paths[1]) is False  # already there: only marked as recently used
    engine.load_adapter("d0", paths[0])  # evicts d2, the least recently used
    assert engine.loaded_adapters() == ["d1", "d0"]
    assert engine.generate([GenerationRequest(req.messages, 12, adapter="d0")])[0].text == texts[0]
    # an evicted adapter asked for again is reloaded; a batch needing more than the limit goes over it for now
    three = engine.generate([GenerationRequest(req.messages, 12, adapter=f"d{i}") for i in range(3)])
    assert [g.text for g in three] == [texts[0], texts[1], texts[2]]
    assert set(engine.loaded_adapters()) == {"d0", "d1", "d2"}
    engine.load_adapter("d1", paths[3])  # the same name from another folder: replaced, not reused
    assert engine.generate([GenerationRequest(req.messages, 12, adapter="d1")])[0].text != texts[1]
    base = LocalEngine(folder).generate([req])[0].text
    assert engine.generate([req])[0].text == base  # the base is untouched by all of this


def test_replacing_the_only_adapter(four_adapters):
    folder, paths = four_adapters
    engine, fresh = LocalEngine(folder, max_adapters=1), LocalEngine(folder)
    req = _req("Report a claim")
    engine.load_adapter("x", paths[0])
    engine.load_adapter("x", paths[1])
    fresh.load_adapter("y", paths[1])
    assert engine.generate([GenerationRequest(req.messages, 12, adapter="x")])[0].text == \
        fresh.generate([GenerationRequest(req.messages, 12, adapter="y")])[0].text
    engine.load_adapter("z", paths[2])  # max 1: x goes
    assert engine.loaded_adapters() == ["z"]


def _repeated_ngrams(ids: list[int], n: int) -> int:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def test_no_repeat_ngram_blocks_repeats_in_the_answer_but_not_copies_of_the_prompt(tiny):
    import torch
    from transformers import LogitsProcessorList

    from loradex.engine.local import _no_repeat_processor

    engine = tiny
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    plain = engine.model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=0)[0, 11:].tolist()
    blocked = engine.model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=0,
                                    logits_processor=LogitsProcessorList([_no_repeat_processor(3, 11)]))[0, 11:]
    assert _repeated_ngrams(plain, 3) > 0  # the tiny random model loops when left alone
    assert _repeated_ngrams(blocked.tolist(), 3) == 0
    # the processor bans what would repeat the answer, never what only repeats the prompt
    scores = torch.zeros(1, 20)
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 9, 1, 2]])  # prompt [1, 2, 3] (len 3), answer [1, 2, 3, 9, 1, 2]
    out = _no_repeat_processor(3, 3)(ids, scores.clone())
    assert torch.isinf(out[0, 3]) and torch.isinf(out).sum() == 1  # "1 2 3" was answered once already
    out = _no_repeat_processor(3, 6)(ids, scores.clone())  # answer [9, 1, 2]: "1 2 3" only in the prompt
    assert not torch.isinf(out).any()


def test_echo_engine_blocks_repeated_words():
    engine = EchoEngine(reply="a b c a b c a b c d")
    req = GenerationRequest(({"role": "user", "content": "x"},), 20, no_repeat_ngram=3)
    words = engine.generate([req])[0].text.split()
    assert _repeated_ngrams(words, 3) == 0 and words[:3] == ["a", "b", "c"] and words[-1] == "d"
