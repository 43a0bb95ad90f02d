"""Clients that go away (issue 20, kind 4), through real HTTP on loopback: a stream's slot is given back on every
way out, an abandoned generation stops, and /health and /metrics answer however busy generation is."""
import json
import socket
import threading
import time

import httpx
import pytest

from loradex.engine.echo import EchoEngine
from loradex.testing import ThreadedServer

from .test_server import SlowEcho, _project

AUTH = {"Authorization": "Bearer user-key"}
WORDS = " ".join(f"word{i}" for i in range(40))  # one line: the whole reply is one chunk of the stream


def _body(stream: bool) -> dict:
    return {"model": "base", "stream": stream, "messages": [{"role": "user", "content": "theft police report"}]}


def _send_and_leave(running, body: dict, after_s: float) -> None:
    """Send a chat request on a raw socket and close it `after_s` seconds later, reading nothing."""
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer user-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", running.port)) as s:
        s.sendall(head + data)
        time.sleep(after_s)


def _until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _metric(running, name: str) -> float:
    for line in httpx.get(running.url + "/metrics").text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def slow(project_dir, tmp_path, monkeypatch):
    """A server whose engine streams one word every 50 ms, with room for 4 streams."""
    from loradex.server.app import create_app

    engine = EchoEngine(reply=WORDS, token_delay_s=0.05)
    proj, _ = _project(project_dir, tmp_path, monkeypatch, engine=engine)
    running = ThreadedServer(create_app(proj, max_queue=4))
    yield engine, proj, running
    running.stop()


def test_clients_that_leave_give_their_stream_slot_back(slow):
    """Before the fix, a client that asked for a stream and left at once kept its slot for good: after as many
    as the queue holds, every stream was refused with 429 until restart."""
    engine, _, running = slow
    for i in range(12):  # three times the 4 slots: at once, before the first byte, and mid-stream
        if i % 3 == 2:
            with httpx.stream("POST", running.url + "/v1/chat/completions", headers=AUTH, json=_body(True)) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # the role chunk; then leave
        else:
            _send_and_leave(running, _body(True), after_s=0.0 if i % 3 == 0 else 0.2)
    state = running.server.config.app.state.loradex
    assert _until(lambda: state.streams.active == 0), state.streams.active
    with httpx.stream("POST", running.url + "/v1/chat/completions", headers=AUTH, json=_body(True)) as r:
        assert r.status_code == 200 and list(r.iter_lines())[-2] == "data: [DONE]"
    assert _metric(running, 'loradex_client_disconnects_total{stream="true"}') >= 8


def test_an_abandoned_stream_stops_generating(slow):
    engine, _, running = slow
    _send_and_leave(running, _body(True), after_s=0.3)  # about 6 of the 40 words made by then
    assert _until(lambda: engine.streamed_words > 0)
    made = engine.streamed_words
    time.sleep(0.5)  # 10 more words' time
    assert engine.streamed_words <= made + 2 and engine.streamed_words < 40, (made, engine.streamed_words)


def test_an_abandoned_request_is_dropped_from_the_queue(project_dir, tmp_path, monkeypatch):
    """The batcher is busy (its engine held); a client sends a non-streaming request and leaves: the request is
    never generated, and the one that waited with it still gets its answer."""
    from loradex.server.app import create_app

    engine = SlowEcho()
    proj, _ = _project(project_dir, tmp_path, monkeypatch, engine=engine)
    running = ThreadedServer(create_app(proj, max_batch=1))
    try:
        first: list[httpx.Response] = []
        held = threading.Thread(target=lambda: first.append(httpx.post(
            running.url + "/v1/chat/completions", headers=AUTH, json=_body(False), timeout=30)))
        held.start()
        assert _until(lambda: running.server.config.app.state.loradex.batcher.stats["batches"] == 1)
        _send_and_leave(running, _body(False), after_s=0.3)  # waits in the queue behind the held batch
        assert _until(lambda: _metric(running, 'loradex_client_disconnects_total{stream="false"}') == 1)
        engine.gate.set()
        held.join(timeout=30)
        assert first[0].status_code == 200 and first[0].json()["choices"][0]["message"]["content"]
        time.sleep(0.3)
        assert engine.served == [None] and engine.batches == [1]  # the abandoned request never reached it
    finally:
        engine.gate.set()
        running.stop()


def test_health_and_metrics_answer_while_streams_hold_every_worker_thread(project_dir, tmp_path, monkeypatch):
    """45 streams, each holding a worker thread of the pool (40) while its line is generated: /health and
    /metrics still answer at once (before the fix they waited for a free thread, seconds here, minutes on a
    busy model)."""
    from loradex.server.app import create_app

    engine = EchoEngine(reply=WORDS, token_delay_s=0.1)  # 4 s per stream, all of it inside one worker call
    proj, _ = _project(project_dir, tmp_path, monkeypatch, engine=engine)
    running = ThreadedServer(create_app(proj, max_queue=64))
    try:
        clients = [threading.Thread(target=httpx.post, args=(running.url + "/v1/chat/completions",),
                                    kwargs={"headers": AUTH, "json": _body(True), "timeout": 60}) for _ in range(45)]
        for c in clients:
            c.start()
        state = running.server.config.app.state.loradex
        assert _until(lambda: state.streams.active == 45)
        time.sleep(0.3)
        t0 = time.monotonic()
        health = httpx.get(running.url + "/health", timeout=10)
        metrics = httpx.get(running.url + "/metrics", timeout=10)
        took = time.monotonic() - t0
        assert health.status_code == 200 and metrics.status_code == 200
        assert "loradex_streams_active 45.0" in metrics.text
        assert took < 1.0, took
        for c in clients:
            c.join(timeout=60)
    finally:
        running.stop()
