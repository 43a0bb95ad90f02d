"""`loradex ask` with the packaged SmolLM2-135M-Instruct: conversion from GGUF, generation, streaming,
citations verified against the passages, abstention on an off-topic question."""
import json
import subprocess
import sys

import pytest

from loradex.engine import GenerationRequest
from loradex.ingest.ingest import ingest
from loradex.models import MARKER, resolve_model
from loradex.pipeline import answer
from loradex.project import open_project

from ..conftest import copy_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("insurance")
    proj = open_project(copy_example(root))
    ingest(proj)
    return proj


def test_packaged_model_resolves_to_cached_safetensors():
    folder = resolve_model("smollm2-135m")
    assert (folder / "model.safetensors").is_file() and (folder / MARKER).is_file()
    assert resolve_model("smollm2-135m") == folder  # the second resolution reuses the cache


def test_engine_uses_our_system_message_and_stops(project):
    engine = project.engine
    prompt = engine.prompt([{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}])
    assert "SYS" in prompt and "SmolLM" not in prompt  # the template's default system message is not injected
    req = GenerationRequest(({"role": "user", "content": "Count from one to twenty in words."},), 24)
    gen = engine.generate([req])[0]
    assert gen.completion_tokens <= 24 and gen.text
    assert "".join(engine.stream(req)).strip() == gen.text
    assert gen.timings_ms["prompt"] > 0


def test_answer_on_the_example_project(project):
    a = answer(project, "What is the grace period for a missed payment?", domain="billing")
    assert not a.abstained and a.answer
    docs = project.load_manifest()["documents"]
    assert a.sources and all(docs[s.file]["domain"] == "billing" for s in a.sources)
    for c in a.citations:  # whatever the small model wrote, every citation points at a listed source
        assert 1 <= c.n <= len(a.sources) and c.chunk_id == a.sources[c.n - 1].chunk_id
        assert isinstance(c.verified, bool)
    assert a.usage["completion_tokens"] <= project.config.answer.max_new_tokens


def test_off_topic_question_abstains(project):
    a = answer(project, "Who won the football world cup in 1998?")
    assert a.abstained and a.citations == ()


def test_cli_ask_json(project):
    r = subprocess.run([sys.executable, "-m", "loradex.cli", "ask", "How do I report a claim by phone?",
                        "-p", str(project.root), "--json"], capture_output=True, text=True, check=True)
    data = json.loads(r.stdout)
    assert set(data) >= {"answer", "citations", "sources", "abstained", "timings_ms"}
    assert set(data["timings_ms"]) >= {"retrieve", "generate", "verify"}
