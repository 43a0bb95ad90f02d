"""The Engine contract (`loradex.engine.Engine`), run against every engine: the echo fake, the local
transformers engine and the onnxruntime-genai engine on a tiny random Llama (`loradex.testing.build_tiny_llama`),
and a real vLLM server on the packaged SmolLM2 (marked `vllm` and `slow`; the `vllm_server` fixture starts it).

Rows compare an engine with itself (batch vs alone, stream vs generate, with vs without a stop string), so
they hold for any deterministic (greedy) engine whatever it answers.
"""
from __future__ import annotations

import threading

import pytest

from loradex.engine import GenerationRequest
from loradex.engine.echo import EchoEngine
from loradex.engine.local import LocalEngine
from loradex.errors import EngineError
from loradex.testing import build_random_adapter, build_tiny_llama

SOURCE = ('<source 1 file="docs/claims.md">\nReport a claim within seven days of the loss to the insurer and keep '
          'the receipts. Then wait.\n</source 1>\nQuestion: how soon must I report a claim?')


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model folder and two random adapters for it (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("tiny")
    folder = build_tiny_llama(root / "m")
    return folder, [build_random_adapter(folder, root / f"a{i}", seed=i) for i in range(2)]


@pytest.fixture(scope="module", params=["echo", "local", "ort", pytest.param("vllm", marks=[pytest.mark.slow,
                                                                                     pytest.mark.vllm])])
def engine(request, tiny):
    if request.param == "vllm":
        from loradex.engine.vllm import VllmEngine

        engine = VllmEngine(request.getfixturevalue("vllm_server").url, ngram=True, max_lora_rank=16)
        yield engine
        engine.close()
        return
    if request.param == "ort":
        from loradex.engine.ort import OrtEngine

        yield OrtEngine(tiny[0])
        return
    yield EchoEngine() if request.param == "echo" else LocalEngine(tiny[0])


@pytest.fixture(scope="module")
def adapters(engine, tiny, tmp_path_factory):
    """Two random adapters (seeds 0 and 1) for the engine's base model: the tiny one, or vLLM's SmolLM2."""
    if engine.name != "vllm":
        return tiny[1]
    from loradex.models import resolve_model

    root = tmp_path_factory.mktemp("vllm-adapters")
    return [build_random_adapter(resolve_model("smollm2-135m"), root / f"a{i}", seed=i, scale=5.0) for i in range(2)]


def _req(text, n=12, **kw):
    return GenerationRequest(({"role": "system", "content": "Be brief."}, {"role": "user", "content": text}), n, **kw)


def _texts(generations):
    return [g.text for g in generations]


def test_token_budget_and_batch_equals_single(engine):  # moved from tests/unit/test_engine.py
    reqs = [_req("Report a claim", 10), _req("What is the grace period for a missed monthly premium?", 6)]
    batch = engine.generate(reqs)
    single = [engine.generate([r])[0] for r in reqs]
    assert [g.text for g in batch] == [g.text for g in single]
    assert batch[0].completion_tokens <= 10 and batch[1].completion_tokens <= 6
    assert all(g.finish_reason in ("stop", "length") for g in batch)
    assert batch[0].prompt_tokens < batch[1].prompt_tokens
    # LocalEngine's `prompt > 0` (a measured time) stays in tests/unit/test_engine.py; the echo engine measures none
    assert batch[0].timings_ms["prompt"] >= 0 and batch[0].timings_ms["generate"] >= 0


def test_a_batch_of_several_requests_equals_each_alone(engine):
    reqs = [_req(SOURCE, 20), _req("Report a claim", 7), _req(SOURCE, 3), _req("Theft", 12, stop=("e",)),
            _req("What is the grace period for a missed monthly premium?", 15), _req(SOURCE, 20, stop=("seven",))]
    batch = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert len(batch) == len(reqs)
    assert [(g.text, g.completion_tokens, g.finish_reason, g.prompt_tokens) for g in batch] == \
        [(g.text, g.completion_tokens, g.finish_reason, g.prompt_tokens) for g in alone]


def test_stream_yields_the_same_text_as_generate(engine):  # moved from tests/unit/test_engine.py
    req = _req("Theft must be reported", 15)
    assert "".join(engine.stream(req)).strip() == engine.generate([req])[0].text


@pytest.mark.parametrize("n", [1, 5, 30])
def test_stream_joined_equals_generate_for_every_budget(engine, n):
    req = _req(SOURCE, n)
    assert "".join(engine.stream(req)).strip() == engine.generate([req])[0].text


def test_stop_sequences_cut_the_text(engine):  # moved from tests/unit/test_engine.py
    full = engine.generate([_req("Report a claim", 20)])[0].text
    assert len(full) >= 4  # the tiny model never emits special tokens, so it fills its budget
    stop = full[2:4]
    cut = engine.generate([_req("Report a claim", 20, stop=(stop,))])[0]
    assert stop not in cut.text and full.startswith(cut.text)
    assert "".join(engine.stream(_req("Report a claim", 20, stop=(stop,)))).strip() == cut.text
    assert cut.finish_reason == "stop"


def test_a_stop_string_from_the_middle_of_the_answer(engine):
    full = engine.generate([_req(SOURCE, 30)])[0].text
    assert len(full) >= 6, full
    # three plain characters from the second half of the unstopped output (so the cut is not at its start)
    at = next(i for i in range(len(full) // 2, len(full) - 2)
              if full[i:i + 3].isascii() and full[i:i + 3].isprintable() and full[i:i + 3].strip())
    stop = full[at:at + 3]
    assert 0 < full.index(stop)
    cut = engine.generate([_req(SOURCE, 30, stop=(stop, "never-in-the-output-###"))])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and full.startswith(cut.text) and len(cut.text) < len(full)
    assert cut.text == full[: full.index(stop)].strip()
    assert "".join(engine.stream(_req(SOURCE, 30, stop=(stop,)))).strip() == cut.text
    unmatched = engine.generate([_req(SOURCE, 30, stop=("never-in-the-output-###",))])[0]
    assert unmatched.text == full  # a stop string that never occurs changes nothing


def test_max_new_tokens_bounds_completion_and_length_is_reported(engine):
    full = engine.generate([_req(SOURCE, 40)])[0]
    assert full.completion_tokens <= 40
    assert full.finish_reason == ("stop" if full.completion_tokens < 40 else "length")
    assert full.completion_tokens > 3  # so a budget of 3 runs out
    short = engine.generate([_req(SOURCE, 3)])[0]
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert full.text.startswith(short.text) and len(short.text) < len(full.text)
    assert short.prompt_tokens == full.prompt_tokens > 0


def test_an_unknown_adapter_raises_engine_error(engine):
    req = GenerationRequest(_req("Report a claim").messages, 4, adapter="never-loaded")
    with pytest.raises(EngineError, match="not loaded"):
        engine.generate([req])
    with pytest.raises(EngineError, match="not loaded"):  # also with other requests in the batch
        engine.generate([_req("Report a claim", 4), req])
    errors: list[BaseException] = []

    def consume():
        try:
            list(engine.stream(req))
        except BaseException as e:  # noqa: BLE001 - checked below
            errors.append(e)

    thread = threading.Thread(target=consume, daemon=True)  # a stream must fail, not hang
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "stream() hung on an adapter that was never loaded"
    assert len(errors) == 1 and isinstance(errors[0], EngineError) and "not loaded" in str(errors[0])


def test_load_adapter_lists_it_and_a_second_identical_load_is_a_no_op(engine, adapters):
    a0, a1 = adapters
    assert engine.load_adapter("contract-x@v1", a0) is True
    assert "contract-x@v1" in engine.loaded_adapters()
    assert engine.load_adapter("contract-x@v1", a0) is False
    assert engine.loaded_adapters().count("contract-x@v1") == 1
    assert engine.loaded_adapters()[-1] == "contract-x@v1"  # most recently used last
    req = GenerationRequest(_req("Report a claim").messages, 6, adapter="contract-x@v1")
    assert engine.generate([req])[0].completion_tokens <= 6  # servable under its name


def test_mixed_adapter_batch_equals_each_request_alone(engine, adapters):
    a0, a1 = adapters
    engine.load_adapter("contract-a@v1", a0)
    engine.load_adapter("contract-b@v1", a1)
    reqs = [GenerationRequest(_req(q).messages, n, adapter=a)
            for q, n in ((SOURCE, 12), ("Report a claim", 9))
            for a in (None, "contract-a@v1", "contract-b@v1")]
    mixed = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert _texts(mixed) == _texts(alone)
    assert [g.completion_tokens for g in mixed] == [g.completion_tokens for g in alone]
    assert all(g.completion_tokens <= r.max_new_tokens for g, r in zip(mixed, reqs))
    streamed = ["".join(engine.stream(r)).strip() for r in reqs]
    assert streamed == _texts(alone)
    assert _texts(engine.generate(reqs[::-1])) == _texts(alone)[::-1]  # order within the batch does not matter


@pytest.fixture(scope="module")
def dora(tiny, tmp_path_factory):
    """A DoRA adapter for the tiny model: valid PEFT, but PEFT refuses it in a mixed batch (`adapter_names`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny[0])),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False))
    out = tmp_path_factory.mktemp("dora") / "a"
    model.save_pretrained(str(out))
    return out


def test_an_adapter_that_cannot_be_mixed_shares_a_call_with_others(engine, adapters, dora):
    a0 = adapters[0]
    if engine.name == "vllm":  # vLLM's kernels serve plain LoRA only: refused before the server sees it
        with pytest.raises(EngineError, match="plain LoRA only.*DoRA"):
            engine.load_adapter("contract-dora@v1", dora)
        assert "contract-dora@v1" not in engine.loaded_adapters()
        return
    engine.load_adapter("contract-dora@v1", dora)
    engine.load_adapter("contract-a@v1", a0)
    reqs = [GenerationRequest(_req(q).messages, 8, adapter=a)
            for q in (SOURCE, "Report a claim") for a in ("contract-dora@v1", None, "contract-a@v1")]
    alone = [engine.generate([r])[0].text for r in reqs]
    assert _texts(engine.generate(reqs)) == alone
    assert "".join(engine.stream(reqs[0])).strip() == alone[0]


def test_no_repeat_ngram_keeps_batch_stream_and_alone_equal(engine):
    reqs = [_req(SOURCE, 30, no_repeat_ngram=3), _req("Report a claim", 30), _req(SOURCE, 30, no_repeat_ngram=2)]
    batch = _texts(engine.generate(reqs))
    assert batch == [engine.generate([r])[0].text for r in reqs]
    assert "".join(engine.stream(reqs[0])).strip() == batch[0]


def test_no_repeat_ngram_one_is_refused():
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        _req("x", 5, no_repeat_ngram=1)


def test_a_cancelled_request_ends_early_and_the_rest_of_its_batch_does_not(engine):
    """The server sets a request's event when its client goes away (issue 20): that row stops, the others go on."""
    reqs = [_req(SOURCE, 30), _req("Report a claim", 30), _req(SOURCE, 30)]
    full = engine.generate(reqs)
    assert full[1].completion_tokens > 1
    gone = threading.Event()
    gone.set()
    out = engine.generate(reqs, [None, gone, None])
    assert _texts([out[0], out[2]]) == _texts([full[0], full[2]])
    assert out[1].finish_reason == "cancelled" and out[1].completion_tokens <= 1


def test_a_stream_ends_once_its_cancel_is_set(engine):
    gone, pieces = threading.Event(), []
    for piece in engine.stream(_req(SOURCE, 30), gone):
        pieces.append(piece)
        gone.set()
    assert len(pieces) == 1 and len("".join(engine.stream(_req(SOURCE, 30)))) > len(pieces[0])
