"""Every OpenAI chat completions field is honoured or refused with a 400 naming it, and every error is an
OpenAI-style body: the official `openai` client against the app on loopback (echo engine, hashing embedder)."""
import threading

import httpx
import openai
import pytest

from loradex.engine.echo import EchoEngine
from loradex.ingest.ingest import ingest
from loradex.project import open_project
from loradex.testing import ThreadedServer

from .test_ingest import DOCS
from .test_pipeline import ROUTED

THEFT = [{"role": "user", "content": "When must theft be reported to the police?"}]
ANSWER = "Call the police within 24 hours. [1]"  # what the engine answers: source 1 of THEFT supports it


class Recorder(EchoEngine):
    """The echo engine answering ANSWER, keeping every request it generated; a question containing "boom" fails."""

    def __init__(self):
        super().__init__(reply=ANSWER)
        self.requests = []
        self.lock = threading.Lock()

    def generate(self, requests, cancel=()):
        with self.lock:
            self.requests.extend(requests)
        if any("boom" in r.messages[-1]["content"] for r in requests):
            raise RuntimeError("the engine broke on this request")
        return super().generate(requests, cancel)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from loradex.server.app import create_app

    from ..conftest import write_project

    engine = Recorder()
    proj = open_project(write_project(tmp_path_factory.mktemp("fields") / "proj", DOCS, ROUTED), engine=engine)
    ingest(proj)
    running = ThreadedServer(create_app(proj, window_ms=200))
    yield engine, running
    running.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[1].url + "/v1", api_key="none", max_retries=0)


def _refused(client, param, **kw):
    """The 400 for a request with `kw` (default model and messages), asserting it names `param`."""
    kw = {"model": "claims", "messages": THEFT, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kw)
    assert e.value.body["param"] == param, e.value.body
    return e.value.body


def _streamed(client, **kw):
    chunks = list(client.chat.completions.create(model="claims", messages=THEFT, stream=True, **kw))
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# stop ---------------------------------------------------------------------------------------------------------

def test_stop_string_ends_the_answer_before_it(client, served):  # handed: a stop string
    r = client.chat.completions.create(model="claims", messages=THEFT, stop="24")
    assert r.choices[0].message.content == "Call the police within" and r.choices[0].finish_reason == "stop"
    assert "24" in served[0].requests[-1].stop
    assert _streamed(client, stop="24")[1].strip() == "Call the police within"


def test_stop_list_ends_at_the_first_that_occurs(client):  # handed: a stop list
    r = client.chat.completions.create(model="claims", messages=THEFT, stop=["hours", "police"])
    assert r.choices[0].message.content == "Call the"
    chunks, text = _streamed(client, stop=["hours", "police"])
    assert text.strip() == "Call the" and "police" not in chunks[-1].model_extra["answer"]


def test_stop_that_never_occurs_changes_nothing_and_bad_stops_are_refused(client):
    assert client.chat.completions.create(model="claims", messages=THEFT, stop=["zebra"]).choices[0].message.content \
        == ANSWER
    _refused(client, "stop", stop=["a", "b", "c", "d", "e"])
    _refused(client, "stop", stop="")


# n ------------------------------------------------------------------------------------------------------------

def test_n_2_at_greedy_decoding_is_refused_naming_n(client):  # handed: n: 2 (the project decodes greedily)
    body = _refused(client, "n", n=2)
    assert "temperature" in body["message"] and body["code"] == "unsupported_parameter"


def test_n_2_with_sampling_gives_two_choices(client):
    r = client.chat.completions.create(model="claims", messages=THEFT, n=2, temperature=0.7)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.message.content for c in r.choices] == [ANSWER, ANSWER]  # the echo engine does not sample
    one = client.chat.completions.create(model="claims", messages=THEFT, temperature=0.7)
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.completion_tokens == 2 * one.usage.completion_tokens
    assert r.choices[1].model_extra["citations"][0]["verified"]


def test_n_3_streams_each_choice_with_its_index(client):
    chunks = list(client.chat.completions.create(model="claims", messages=THEFT, stream=True, n=3, temperature=1))
    for i in range(3):
        mine = [c for c in chunks if c.choices[0].index == i]
        assert "".join(c.choices[0].delta.content or "" for c in mine).strip() == ANSWER
        assert mine[-1].choices[0].finish_reason == "stop"
    _refused(client, "n", n=17, temperature=1)


# stream_options ----------------------------------------------------------------------------------------------

def test_include_usage_ends_the_stream_with_a_usage_chunk(client):  # handed: stream_options include_usage
    chunks, text = _streamed(client, stream_options={"include_usage": True})
    last = chunks[-1]
    plain = client.chat.completions.create(model="claims", messages=THEFT)
    assert last.choices == [] and last.usage.model_dump() == plain.usage.model_dump()
    assert last.usage.completion_tokens == len(ANSWER.split()) and last.usage.total_tokens > last.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1]) and text.strip() == ANSWER


def test_usage_chunk_counts_every_choice_and_is_absent_unless_asked(client):
    chunks, _ = _streamed(client, stream_options={"include_usage": True}, n=2, temperature=0.5)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2 * len(ANSWER.split())
    chunks, _ = _streamed(client, stream_options={"include_usage": False})
    assert all(c.choices for c in chunks) and "usage" not in chunks[0].model_extra
    _refused(client, "stream_options", stream_options={"include_usage": True})  # without stream: true


# seed, response_format, tools, logprobs, unknown fields --------------------------------------------------------

def test_seed_is_a_no_op_with_greedy_decoding_and_refused_with_sampling(client):
    r = client.chat.completions.create(model="claims", messages=THEFT, seed=7)
    assert r.choices[0].message.content == ANSWER
    _refused(client, "seed", seed=7, temperature=0.8)


def test_response_format_text_is_honoured_and_json_refused(client):
    r = client.chat.completions.create(model="claims", messages=THEFT, response_format={"type": "text"})
    assert r.choices[0].message.content == ANSWER
    _refused(client, "response_format", response_format={"type": "json_object"})
    _refused(client, "response_format", response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}})


def test_tools_functions_and_logprobs_are_refused_naming_the_field(client):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    _refused(client, "tools", tools=[tool])
    _refused(client, "tool_choice", tool_choice="required")
    _refused(client, "functions", functions=[tool["function"]])
    _refused(client, "logprobs", logprobs=True)
    _refused(client, "top_logprobs", top_logprobs=3)
    _refused(client, "top_p", top_p=0.5)
    _refused(client, "presence_penalty", presence_penalty=1.0)
    _refused(client, "messages[1].role", messages=[*THEFT, {"role": "tool", "tool_call_id": "1", "content": "x"}])
    # the defaults ask for nothing loradex does not do: accepted
    r = client.chat.completions.create(model="claims", messages=THEFT, tools=[], tool_choice="none", logprobs=False,
                                       top_p=1, frequency_penalty=0, user="u-1", store=False)
    assert r.choices[0].message.content == ANSWER


def test_unknown_fields_and_parts_are_refused_never_ignored(client):
    body = _refused(client, "frobnicate", extra_body={"frobnicate": 1})
    assert body["code"] == "unknown_parameter" and "unknown field frobnicate" in body["message"]
    _refused(client, "loradex.kk", extra_body={"loradex": {"kk": 3}})
    _refused(client, "messages[0].name", messages=[{**THEFT[0], "name": "alice"}])
    _refused(client, "messages[0].content[1].type", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what does this show?"}, {"type": "image_url", "image_url": {"url": "x"}}]}])
    _refused(client, "stream_options.include_obfuscation", stream=True, stream_options={"include_obfuscation": True})


def test_a_boolean_written_as_a_string_is_refused_not_read_as_true_or_false(client):
    """Issue 20, kind 4: `"stream": "no"` streamed and `"retrieval": "false"` kept retrieval on; OpenAI refuses
    a string where its schema has a boolean, and so does loradex, naming the field."""
    assert "valid boolean" in _refused(client, "stream", extra_body={"stream": "no"})["message"]
    _refused(client, "loradex.retrieval", extra_body={"loradex": {"retrieval": "false"}})
    _refused(client, "stream_options.include_usage", stream=True, stream_options={"include_usage": "yes"})
    _refused(client, "loradex.k", extra_body={"loradex": {"k": 10**9}})
    _refused(client, "messages[0].content", messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])


# conversations ------------------------------------------------------------------------------------------------

def test_history_and_system_message_reach_the_prompt_and_the_follow_up_is_routed(client, served):  # handed
    messages = [{"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "My bike was stolen. How do I report the theft?"},
                {"role": "assistant", "content": "Call the police within 24 hours [1]."},
                {"role": "user", "content": "And how long do I have?"}]
    r = client.chat.completions.create(model="auto", messages=messages)
    extra = r.model_extra
    assert extra["route"]["domain"] == "claims"
    assert extra["conversation"] == {"search_query": "And how long do I have? bike stolen report theft",
                                     "turns": 2, "dropped": 0}
    sent = served[0].requests[-1].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == messages[1]["content"] and sent[2]["content"] == "Call the police within 24 hours."
    assert sent[3]["content"].startswith("Instructions:\nAnswer in one sentence.\n\nSources:")
    assert "Answer in one sentence" not in sent[0]["content"]  # the serving system message stays as trained


def test_old_turns_beyond_the_budget_are_dropped(client, served):
    old = [{"role": "user", "content": "w " * 4000}, {"role": "assistant", "content": "ok"}]
    recent = [{"role": "user", "content": "theft police"}, {"role": "assistant", "content": "24 hours"}]
    r = client.chat.completions.create(model="claims", messages=[*old, *recent, *THEFT])
    assert r.model_extra["conversation"]["dropped"] == 2 and r.model_extra["conversation"]["turns"] == 2
    assert [m["content"] for m in served[0].requests[-1].messages[1:3]] == ["theft police", "24 hours"]
    _refused(client, "messages", messages=[*THEFT, {"role": "assistant", "content": "Call them."}])


# errors -------------------------------------------------------------------------------------------------------

def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_unknown_paths_wrong_methods_and_missing_fields_are_openai_errors(served):
    url = served[1].url
    assert _error(httpx.get(url + "/v1/nothing"), 404)["code"] == "not_found"
    err = _error(httpx.get(url + "/v1/chat/completions"), 405)
    assert err["code"] == "method_not_allowed" and "POST" in err["message"]
    err = _error(httpx.post(url + "/v1/chat/completions", json={"model": "auto"}), 400)
    assert err["param"] == "messages" and err["code"] == "missing_required_parameter"
    err = _error(httpx.post(url + "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "robot"}]}),
                 400)
    assert err["param"] == "messages[0].role"


def test_an_engine_failure_is_a_500_for_that_request_only(client, served):
    boom = [{"role": "user", "content": "theft police boom"}]
    results: dict[str, object] = {}

    def call(name, messages):
        try:
            results[name] = client.chat.completions.create(model="claims", messages=messages)
        except openai.APIError as e:
            results[name] = e

    threads = [threading.Thread(target=call, args=a) for a in (("boom", boom), ("fine", THEFT))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert isinstance(results["boom"], openai.InternalServerError)
    assert results["boom"].body["type"] == "server_error" and "RuntimeError" in results["boom"].body["message"]
    assert results["fine"].choices[0].message.content == ANSWER
    with pytest.raises(openai.APIError, match="RuntimeError"):  # after the first chunk: an error event
        list(client.chat.completions.create(model="claims", messages=boom, stream=True))


def test_local_engine_counts_a_streams_prompt_as_generate_does(tmp_path):
    """A stream's usage (`count_tokens`): the prompt as generate counts it; the completion re-encoded."""
    from loradex.engine import GenerationRequest
    from loradex.engine.local import LocalEngine
    from loradex.testing import build_tiny_llama

    engine = LocalEngine(build_tiny_llama(tmp_path / "model"))
    request = GenerationRequest(({"role": "system", "content": "Be brief."}, *THEFT), 6)
    gen = engine.generate([request])[0]
    prompt_tokens, completion_tokens = engine.count_tokens(request, "Call the police")
    assert prompt_tokens == gen.prompt_tokens > 10
    assert completion_tokens == len(engine.tokenizer("Call the police", add_special_tokens=False)["input_ids"])
