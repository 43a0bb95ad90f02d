"""A real vLLM server (the `vllm_server` fixture: vLLM's CPU build, the packaged SmolLM2 in fp32) behind loradex:
token parity with the local transformers engine for the base model and two shipped adapters, a new adapter
version pushed while the server runs, and the hybrid pipeline end to end on the example project."""
import json
import subprocess
import sys

import pytest

from loradex.engine import GenerationRequest
from loradex.engine.local import LocalEngine
from loradex.engine.vllm import VllmEngine
from loradex.ingest.ingest import ingest
from loradex.models import resolve_model
from loradex.pipeline import answer
from loradex.project import open_project
from loradex.testing import build_random_adapter

from ..conftest import REPO, copy_example

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
EXAMPLE = REPO / "examples" / "insurance"
SYSTEM = "You are a customer service assistant for a home and motor insurer. Answer briefly."
TOKENS = 16  # the first 16 greedy tokens are compared


def _prompts() -> list[str]:
    lines = (EXAMPLE / "eval" / "questions.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:10]]


@pytest.fixture(scope="module")
def engines(vllm_server):
    local = LocalEngine(resolve_model("smollm2-135m"))
    remote = VllmEngine(vllm_server.url, ngram=True, max_lora_rank=16)
    yield local, remote
    remote.close()


def _first_difference(tokenizer, a: str, b: str) -> int:
    x, y = tokenizer(a, add_special_tokens=False)["input_ids"], tokenizer(b, add_special_tokens=False)["input_ids"]
    return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))


@pytest.mark.parametrize("adapter", [None, "claims", "billing"])
def test_greedy_tokens_match_the_local_engine(engines, adapter):
    """fp32 on both sides: at least 9 of 10 prompts give the same first 16 tokens; a mismatch names the prompt,
    the adapter and the first differing token."""
    local, remote = engines
    name = None
    if adapter is not None:
        name = f"parity-{adapter}"
        for engine in (local, remote):
            engine.load_adapter(name, EXAMPLE / "adapters" / adapter)
    reqs = [GenerationRequest(({"role": "system", "content": SYSTEM}, {"role": "user", "content": q}), TOKENS,
                              adapter=name) for q in _prompts()]
    ours, theirs = local.generate(reqs), remote.generate(reqs)
    assert all(g.completion_tokens == TOKENS or g.finish_reason == "stop" for g in theirs)
    mismatches = [f"prompt {i} ({reqs[i].messages[1]['content'][:50]!r}), adapter {adapter or 'base'}: first "
                  f"differing token {_first_difference(local.tokenizer, a.text, b.text)}: local {a.text!r} vs "
                  f"vLLM {b.text!r}" for i, (a, b) in enumerate(zip(ours, theirs)) if a.text != b.text]
    print(f"parity {adapter or 'base'}: {10 - len(mismatches)}/10 identical", *mismatches, sep="\n")
    assert len(mismatches) <= 1, "\n".join(mismatches)


@pytest.fixture(scope="module")
def project(tmp_path_factory, vllm_server):
    """The example project on the real MiniLM, generation on the vLLM server, its three adapters active."""
    root = copy_example(tmp_path_factory.mktemp("insurance-vllm"))
    with open(root / "loradex.yaml", "a") as f:
        f.write(f"\nengine: vllm\nvllm:\n  url: {vllm_server.url}\n  no_repeat_ngram: true\n")
    proj = open_project(root)
    ingest(proj)
    for domain in ("claims", "policy", "billing"):
        proj.registry.import_folder(EXAMPLE / "adapters" / domain, domain, activate=True)
    return proj


def test_the_hybrid_pipeline_runs_on_vllm(project):
    a = answer(project, "My bike was stolen from my garden shed last night. What should I do?")
    assert project.engine.name == "vllm"
    assert a.route.domain == "claims" and not a.abstained
    assert a.adapter == project.registry.active("claims").label
    assert a.answer and any(c.verified for c in a.citations), a.answer
    assert a.usage["completion_tokens"] > 0 and a.timings_ms["generate"] > 0


def test_a_pushed_version_answers_the_next_question(project, tmp_path):
    """A new version registered and pushed while the server runs answers under its own name; the old name keeps
    the old weights."""
    question = "What is the grace period for a missed monthly premium?"
    before = answer(project, question, domain="billing")
    old = project.registry.active("billing")
    assert before.adapter == old.label
    new = project.registry.import_folder(
        build_random_adapter(resolve_model("smollm2-135m"), tmp_path / "billing-v2", seed=7, rank=8, scale=5.0),
        "billing", activate=True)
    pushed = subprocess.run([sys.executable, "-m", "loradex.cli", "adapters", "push", "billing", "-p",
                             str(project.root), "--json"], capture_output=True, text=True, check=True)
    rows = json.loads(pushed.stdout)
    assert rows == [{"domain": "billing", "adapter": new.label, "loaded": True, "ms": rows[0]["ms"]}]
    after = answer(project, question, domain="billing")
    assert after.adapter == new.label != old.label
    assert after.answer != before.answer  # the random version answers otherwise
    again = answer(project, question, domain="billing")  # the same version, the same greedy answer
    assert again.answer == after.answer
    project.registry.activate("billing", old.version)  # rolled back: the old name, the old answer
    assert answer(project, question, domain="billing").answer == before.answer


def test_an_adapter_above_the_server_rank_is_refused_by_push(project, tmp_path):
    big = build_random_adapter(resolve_model("smollm2-135m"), tmp_path / "wide", seed=3, rank=32, scale=1.0)
    ref = project.registry.import_folder(big, "policy", activate=True)
    try:
        r = subprocess.run([sys.executable, "-m", "loradex.cli", "adapters", "push", "policy", "-p",
                            str(project.root), "--json"], capture_output=True, text=True)
        assert r.returncode == 1
        row = json.loads(r.stdout)[0]
        assert row["adapter"] == ref.label and "rank 32" in row["error"] and "--max-lora-rank 16" in row["error"]
    finally:
        project.registry.rollback("policy")


def test_the_server_forwards_concurrent_requests_to_vllm(project):
    """`loradex serve` with engine: vllm: concurrent requests go on at once (vLLM batches them), each answered
    with its route, adapter and citations; /metrics counts them."""
    import threading

    import httpx

    from loradex.server.app import create_app
    from loradex.testing import ThreadedServer

    running = ThreadedServer(create_app(project, max_queue=8))
    questions = ["My bike was stolen from my garden shed last night. What should I do?",
                 "What is the grace period for a missed monthly premium?",
                 "Does my home insurance cover damage from a burst pipe?",
                 "How long do I have to tell you about a car accident if nobody was hurt?"]
    replies: dict[int, dict] = {}

    def ask(i: int) -> None:
        r = httpx.post(running.url + "/v1/chat/completions", timeout=300,
                       json={"model": "auto", "messages": [{"role": "user", "content": questions[i]}]})
        replies[i] = {"status": r.status_code, **r.json()}

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert [replies[i]["status"] for i in range(4)] == [200] * 4, replies
        assert [replies[i]["route"]["domain"] for i in range(4)] == ["claims", "billing", "policy", "claims"]
        assert all(replies[i]["adapter"] == project.registry.active(replies[i]["route"]["domain"]).label
                   for i in range(4))
        metrics = httpx.get(running.url + "/metrics").text
        assert "loradex_batched_requests_total 4.0" in metrics  # each forwarded alone: four "batches" of one
        assert "loradex_batches_total 4.0" in metrics
    finally:
        running.stop()
