"""The server through real HTTP on loopback, with the official `openai` client (echo engine, hashing embedder)."""
import socket
import threading
import time

import httpx
import openai
import pytest

from loradex.engine.echo import EchoEngine
from loradex.ingest.ingest import ingest
from loradex.project import open_project
from loradex.testing import ThreadedServer

from .test_ingest import DOCS
from .test_pipeline import ROUTED

KEYS = """
server:
  keys:
    - {name: alice, key: user-key}
    - {name: finance, key: finance-key, groups: [finance]}
    - {name: ops, key_env: TEST_LORADEX_ADMIN, admin: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowEcho(EchoEngine):
    """Echo engine that holds each batch until released: fills queues and shows batching."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.batches: list[int] = []

    def generate(self, requests, cancel=()):
        self.gate.wait(timeout=30)
        self.batches.append(len(requests))
        return super().generate(requests, cancel)


def _project(project_dir, tmp_path, monkeypatch, engine=None):
    from loradex.testing import build_random_adapter, build_tiny_llama

    monkeypatch.setenv("TEST_LORADEX_ADMIN", "admin-key")
    model = build_tiny_llama(tmp_path / "model")
    config = ROUTED.replace('    paths: ["docs/billing/**"]', '    paths: ["docs/billing/**"]\n    groups: [finance]')
    proj = open_project(project_dir(DOCS, config + KEYS + f"model: {model}\n"), engine=engine)
    ingest(proj)
    folder = build_random_adapter(model, tmp_path / "a0", seed=0)
    ref = proj.registry.register(folder, "claims", {"hyperparameters": {}, "metrics": {}})
    proj.registry.activate("claims", ref.version)
    return proj, ref


@pytest.fixture
def served(project_dir, tmp_path, monkeypatch):
    from loradex.server.app import create_app

    proj, ref = _project(project_dir, tmp_path, monkeypatch)
    running = ThreadedServer(create_app(proj))
    yield proj, ref, running
    running.stop()


def _client(running, key="user-key"):
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)


def test_openai_client_plain_answer_with_route_adapter_and_citations(served):
    proj, ref, running = served
    r = _client(running).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "police report for a stolen bike"}])
    extra = r.model_extra
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.endswith("[1]")
    assert extra["route"]["domain"] == "claims" and extra["adapter"] == ref.label
    assert extra["citations"][0]["verified"] and extra["sources"][0]["file"].startswith("docs/claims/")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    b = _client(running).chat.completions.create(model="base", messages=[{"role": "user", "content": "theft police"}])
    assert b.model_extra["adapter"] is None and b.model_extra["route"]["reason"] == "not_routed"
    v = _client(running).chat.completions.create(model=f"claims@{ref.version[:10]}",
                                                 messages=[{"role": "user", "content": "premium direct debit"}])
    assert v.model_extra["adapter"] == ref.label and v.model_extra["route"]["reason"] == "explicit"
    o = _client(running).chat.completions.create(model="claims", messages=[{"role": "user", "content": "theft"}],
                                                 extra_body={"loradex": {"retrieval": False}})
    assert o.model_extra["sources"] == [] and o.model_extra["adapter"] == ref.label


def test_openai_client_streaming(served):
    _, ref, running = served
    stream = _client(running).chat.completions.create(
        model="auto", stream=True, messages=[{"role": "user", "content": "police report for a stolen bike"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    last = chunks[-1]
    assert text.endswith("[1]") and last.choices[0].finish_reason == "stop"
    assert last.model_extra["adapter"] == ref.label and last.model_extra["citations"][0]["verified"]
    assert last.model_extra["answer"] == text.strip()
    with httpx.stream("POST", running.url + "/v1/chat/completions", headers={"Authorization": "Bearer user-key"},
                      json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "theft"}]}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and r.headers["content-type"].startswith("text/event-stream")
    # both streams ended normally: no client counted as gone, and their tokens are counted (a second new user saw
    # every finished stream counted as a disconnect, and streamed tokens left out)
    metrics = httpx.get(running.url + "/metrics").text
    assert 'loradex_client_disconnects_total{stream="true"} 1' not in metrics
    assert not any(line.startswith('loradex_client_disconnects_total{stream="true"}') and not line.endswith(" 0.0")
                   for line in metrics.splitlines())
    assert any(line.startswith('loradex_tokens_total{kind="completion"}') and not line.endswith(" 0.0")
               for line in metrics.splitlines())


def test_errors_are_openai_style_4xx(served):
    _, _, running = served
    client = _client(running)
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="claims@ffffffff", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    with pytest.raises(openai.BadRequestError, match="user message"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "  "}])
    with pytest.raises(openai.AuthenticationError):
        _client(running, key="wrong").chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    auth = {"Authorization": "Bearer user-key", "Content-Type": "application/json"}
    r = httpx.post(running.url + "/v1/chat/completions", headers=auth, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(running.url + "/v1/chat/completions", headers=auth,
                   json={"model": "auto", "messages": [{"role": "user", "content": "x" * 9000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages" and "server.max_input_chars" in r.json()["error"]["message"]
    r = httpx.post(running.url + "/v1/chat/completions", headers=auth, json={  # before a stream starts, too
        "model": "auto", "stream": True, "messages": [{"role": "user", "content": "x" * 9000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(running.url + "/v1/chat/completions", headers=auth,
                   json={"model": "auto", "max_tokens": -3, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_models_lists_auto_base_domains_and_versions(served):
    _, ref, running = served
    ids = [m.id for m in _client(running).models.list()]
    assert ids[:2] == ["auto", "base"] and {"claims", "policy", "billing", ref.label} <= set(ids)


def test_access_groups_filter_every_passage(served):
    _, _, running = served
    q = [{"role": "user", "content": "how are monthly premiums collected by direct debit"}]
    for key, allowed in (("user-key", False), ("finance-key", True), ("admin-key", True)):
        r = _client(running, key).chat.completions.create(model="base", messages=q)
        files = [s["file"] for s in r.model_extra["sources"]]
        assert any(f.startswith("docs/billing/") for f in files) == allowed, (key, files)
    r = _client(running, "user-key").chat.completions.create(model="billing", messages=q)
    assert not any(s["file"].startswith("docs/billing/") for s in r.model_extra["sources"])


def test_admin_endpoints_need_the_admin_key(served, tmp_path):
    proj, ref, running = served
    user, admin = {"Authorization": "Bearer user-key"}, {"Authorization": "Bearer admin-key"}
    assert httpx.get(running.url + "/admin/adapters", headers=user).status_code == 403
    assert httpx.get(running.url + "/admin/adapters").status_code == 401
    rows = httpx.get(running.url + "/admin/adapters", headers=admin).json()["adapters"]
    assert rows[0]["label"] == ref.label
    r = httpx.post(running.url + "/admin/adapters/claims/rollback", headers=admin)
    assert r.json() == {"active": None}
    a = _client(running).chat.completions.create(model="auto",
                                                 messages=[{"role": "user", "content": "stolen bike police"}])
    assert a.model_extra["adapter"] is None  # the rollback took effect on the next request
    r = httpx.post(running.url + "/admin/adapters/claims/activate", headers=admin, json={"version": ref.version[:8]})
    assert r.json() == {"active": ref.label}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    (bad / "adapter_model.bin").write_bytes(b"pickle")
    r = httpx.post(running.url + "/admin/adapters/import", headers=admin, json={"path": str(bad), "domain": "policy"})
    assert r.status_code == 400 and "pickle" in r.json()["error"]["message"]
    doc = next(d for d in proj.load_manifest()["documents"] if "theft" in d)
    assert httpx.delete(running.url + f"/admin/documents/{doc}", headers=admin).json() == {"removed": doc}
    assert httpx.delete(running.url + f"/admin/documents/{doc}", headers=admin).status_code == 404
    for path, body, field in (("/admin/adapters/claims/activate", {"version": "ab", "actvate": True}, "actvate"),
                              ("/admin/adapters/import", {"path": str(bad), "domain": "policy", "activate": "yes"},
                               "activate"),
                              ("/admin/documents/ingest", {"paths": "docs", "prune": False}, "paths"),
                              ("/admin/documents/ingest", {"prune": 1}, "prune"),
                              ("/admin/documents/ingest", {"paths": ["docs", str(tmp_path)]}, "paths[1]"),
                              ("/admin/documents/ingest", {"paths": ["docs/../../"]}, "paths[0]"),
                              ("/admin/documents/ingest", {"paths": ["/etc"]}, "paths[0]")):
        r = httpx.post(running.url + path, headers=admin, json=body)  # misspelt or mistyped: refused, not ignored
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (path, body, r.text)
    assert "does not take it" in httpx.post(running.url + "/admin/documents/ingest", headers=admin,
                                            json={"prnue": True}).json()["error"]["message"]
    assert doc not in proj.load_manifest()["documents"]  # none of them ingested anything
    r = httpx.post(running.url + "/admin/documents/ingest", headers=admin, json={})
    assert r.status_code == 200 and doc in proj.load_manifest()["documents"]
    r = httpx.post(running.url + "/admin/router/fit", headers=admin)
    assert r.json()["examples"] == 16
    metrics = httpx.get(running.url + "/metrics").text
    assert "loradex_requests_total" in metrics and "loradex_queue_depth 0" in metrics
    assert 'loradex_errors_total{status="403"}' in metrics
    assert httpx.get(running.url + "/health").json()["status"] == "ok"
    page = httpx.get(running.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text


def test_full_queue_answers_429_and_concurrent_requests_share_a_batch(project_dir, tmp_path, monkeypatch):
    from loradex.server.app import create_app

    engine = SlowEcho()
    proj, _ = _project(project_dir, tmp_path, monkeypatch, engine)
    running = ThreadedServer(create_app(proj, max_batch=8, window_ms=200, max_queue=3))
    try:
        body = {"model": "base", "messages": [{"role": "user", "content": "theft police report"}]}
        auth = {"Authorization": "Bearer user-key"}
        results: list[int] = []

        def call():
            r = httpx.post(running.url + "/v1/chat/completions", headers=auth, json=body, timeout=60)
            results.append(r.status_code)

        first = threading.Thread(target=call)
        first.start()  # taken by the worker, which then waits on the gate
        time.sleep(0.6)
        waiting = [threading.Thread(target=call) for _ in range(3)]
        for t in waiting:
            t.start()
        time.sleep(0.6)  # the three wait in the queue (limit 3)
        r = httpx.post(running.url + "/v1/chat/completions", headers=auth, json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
        engine.gate.set()
        for t in [first, *waiting]:
            t.join(timeout=30)
        assert results == [200] * 4
        assert engine.batches == [1, 3]  # the three queued requests were generated as one batch
    finally:
        engine.gate.set()
        running.stop()


def test_loradex_serve_command(project_dir, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    proj, _ = _project(project_dir, tmp_path, monkeypatch)
    port = _free_port()
    env = {**os.environ, "TEST_LORADEX_ADMIN": "admin-key"}
    proc = subprocess.Popen([sys.executable, "-m", "loradex.cli", "serve", "-p", str(proj.root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="user-key", max_retries=0) \
            .chat.completions.create(model="auto", messages=[{"role": "user", "content": "stolen bike police report"}])
        assert r.model_extra["route"]["domain"] == "claims"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "user-key" not in err and "admin-key" not in err  # keys are never logged


def test_a_streamed_line_that_repeats_an_earlier_one_is_never_sent(project_dir, tmp_path, monkeypatch):
    """The model loops (as SmolLM2 did on the demo's billing question): the stream sends each line once."""
    from loradex.server.app import create_app

    looping = "Fee: none [1]\n1. Call us. [1]\n2. Pick a day. [1]\n2. Pick a day. [1]\n2. Pick a day. [1]"
    proj, _ = _project(project_dir, tmp_path, monkeypatch, engine=EchoEngine(reply=looping))
    monkeypatch.setattr(proj.config.answer, "no_repeat_ngram", 0)  # a model that loops: no blocking to stop it
    running = ThreadedServer(create_app(proj))
    try:
        chunks = list(_client(running).chat.completions.create(
            model="auto", stream=True, messages=[{"role": "user", "content": "police report for a stolen bike"}]))
    finally:
        running.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == "Fee: none [1]\n1. Call us. [1]\n2. Pick a day. [1]"
    assert chunks[-1].model_extra["repeated"] == ["Pick a day. [1]", "Pick a day. [1]"]  # kept out of the answer


def test_a_version_without_its_manifest_gets_no_server_error_on_any_route(served):
    """Issue 20, kind 1: deleting a registered version's manifest.json gave a 500 on three routes."""
    proj, ref, running = served
    (ref.path / "manifest.json").unlink()
    admin, user = {"Authorization": "Bearer admin-key"}, {"Authorization": "Bearer user-key"}
    assert httpx.get(running.url + "/v1/models", headers=user).status_code == 200
    listed = httpx.get(running.url + "/admin/adapters", headers=admin)
    assert listed.status_code == 200 and "manifest.json is missing" in listed.text
    for model in (f"claims@{ref.version[:12]}", "claims", "auto"):
        r = httpx.post(running.url + "/v1/chat/completions", headers=user,
                       json={"model": model, "messages": [{"role": "user", "content": "police report stolen bike"}]})
        assert r.status_code < 500, (model, r.text)
        if r.status_code != 200:
            assert "manifest.json is missing" in r.json()["error"]["message"], r.text
    r = httpx.post(running.url + "/admin/adapters/claims/activate", headers=admin, json={"version": ref.version})
    assert r.status_code == 400 and "manifest.json is missing" in r.json()["error"]["message"]
    assert httpx.get(running.url + "/health").status_code == 200
