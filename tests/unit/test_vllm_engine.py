"""The vLLM engine without a vLLM server: adapter refusals made before any request, a server that is down or never
answers, n-gram blocking that agrees with the local engine's, the batcher's `forwards` mode, the `vllm:` config
section, the managed server's start and stop with fake pythons, and `adapters push`. The real server is in
`tests/integration/test_vllm.py`."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loradex.config import ConfigError, load_config
from loradex.engine import Generation, GenerationRequest
from loradex.engine.vllm import VllmEngine, adapter_rank, from_project, push
from loradex.engine.vllm_server import PLUGIN_DIR, ManagedVllm
from loradex.errors import EngineError, QueueFull
from loradex.project import open_project
from loradex.server.batcher import Batcher
from loradex.testing import build_random_adapter, build_tiny_llama

from ..conftest import write_project

SHA_A, SHA_B = "a" * 64, "b" * 64


# ---- helpers ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A loopback port nothing listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _req(text: str = "hello", **kw) -> GenerationRequest:
    return GenerationRequest(({"role": "user", "content": text},), 8, **kw)


def _bounded(fn, limit_s: float):
    """fn() on a daemon thread: (its result or exception, seconds taken). Fails the test when fn runs past
    `limit_s` (the thread is left behind, so a hang never blocks the run)."""
    out: list = []

    def run():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out.append(e)

    t0 = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still running after {limit_s} s"
    return out[0], time.monotonic() - t0


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie that nobody reaped yet counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _wait_dead(pid: int, limit_s: float = 5.0) -> bool:
    deadline = time.monotonic() + limit_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_group_of(pid: int) -> None:
    """Clean-up after a failed check: end what is left of the fake server's process group (that of `pid`)."""
    try:
        group = os.getpgid(pid)
        if _alive(pid) and group != os.getpgrp():  # the server runs in a session of its own
            os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _adapter(folder: Path, manifest_sha: str | None = None, **cfg) -> Path:
    """A PEFT LoRA folder holding only adapter_config.json (r=4 on q/v unless `cfg` says otherwise), and a
    manifest.json naming base `manifest_sha` when given: enough for every refusal, which reads no weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **cfg}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if manifest_sha is not None:
        (folder / "manifest.json").write_text(json.dumps({"base_model": {"name": "other-base",
                                                                         "sha256": manifest_sha}}))
    return folder


def _fake_python(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def closed_url():
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def down_engine(closed_url):
    """An engine on a port nothing listens on: any request to it fails with 'cannot be reached'."""
    engine = VllmEngine(closed_url, max_lora_rank=16, base={"name": "tiny", "sha256": SHA_A}, retries=1,
                        timeout_s=5)
    yield engine
    engine.close()


@pytest.fixture
def silent_server():
    """A loopback port that accepts TCP connections and holds them without ever answering; closed at the end."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", held
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def keep_sigterm():
    """ManagedVllm.start installs a SIGTERM handler in the main thread: put the test process's back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


# ---- 1. adapters the server cannot take are refused before any request -------------------------------------------
def test_adapter_rank():
    assert adapter_rank({"r": 8}) == 8
    assert adapter_rank({"r": 8, "rank_pattern": {"q_proj": 32, "v_proj": 4}}) == 32
    assert adapter_rank({}) == 8  # PEFT's default r


def test_rank_above_max_lora_rank_is_refused_before_any_request(down_engine, tmp_path):
    with pytest.raises(EngineError, match=r"claims: LoRA rank 32 is above the server's --max-lora-rank 16"):
        down_engine.load_adapter("claims", _adapter(tmp_path / "r32", r=32))
    with pytest.raises(EngineError, match=r"LoRA rank 64 is above .*--max-lora-rank 16"):  # r fits, a pattern not
        down_engine.load_adapter("claims", _adapter(tmp_path / "pattern", r=8, rank_pattern={"v_proj": 64}))
    assert down_engine.stats["adapter_loads"] == 0 and not down_engine._adapters


def test_real_adapter_above_max_lora_rank_is_refused(tiny, tmp_path, closed_url):
    folder = build_random_adapter(tiny, tmp_path / "a", rank=8)
    engine = VllmEngine(closed_url, max_lora_rank=4, retries=0)
    try:
        with pytest.raises(EngineError, match=r"rank 8 is above the server's --max-lora-rank 4"):
            engine.load_adapter("claims", folder)
        engine.max_lora_rank = 8  # now it fits: the engine goes to the (absent) server, and says so
        with pytest.raises(EngineError, match=r"cannot be reached"):
            engine.load_adapter("claims", folder)
    finally:
        engine.close()


def test_dora_and_modules_to_save_are_refused(down_engine, tmp_path):
    with pytest.raises(EngineError, match=r"plain LoRA only.*DoRA.*engine: local"):
        down_engine.load_adapter("dora", _adapter(tmp_path / "dora", use_dora=True))
    with pytest.raises(EngineError, match=r"plain LoRA only.*modules_to_save \(lm_head\)"):
        down_engine.load_adapter("mts", _adapter(tmp_path / "mts", modules_to_save=["lm_head"]))


def test_adapter_for_another_base_is_refused(down_engine, tmp_path):
    with pytest.raises(EngineError, match=rf"trained for base 'other-base' \(sha256 {SHA_B[:12]}\).*serves 'tiny'"):
        down_engine.load_adapter("claims", _adapter(tmp_path / "other", manifest_sha=SHA_B))


def test_a_servable_adapter_goes_to_the_server(down_engine, tmp_path):
    """The control for the refusals above: same engine, an adapter it can take, so it asks the (absent) server."""
    for folder in (_adapter(tmp_path / "plain"), _adapter(tmp_path / "same-base", manifest_sha=SHA_A),
                   _adapter(tmp_path / "r16", r=16, rank_pattern={"q_proj": 16})):
        with pytest.raises(EngineError, match=r"cannot be reached"):
            down_engine.load_adapter("claims", folder)


def test_unreadable_adapter_config_is_refused(down_engine, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"adapter_config.json is unreadable"):
        down_engine.load_adapter("claims", tmp_path / "empty")


# ---- 2, 3. a server that is down, or never answers ---------------------------------------------------------------
def test_server_down_names_the_url_quickly(closed_url):
    engine = VllmEngine(closed_url, retries=1)
    try:
        err, elapsed = _bounded(lambda: engine.generate([_req()]), 30)
    finally:
        engine.close()
    assert isinstance(err, EngineError), err
    assert f"vLLM at {closed_url}" in str(err) and "cannot be reached" in str(err)
    assert elapsed < 20


def test_server_that_never_answers_times_out(silent_server):
    url, held = silent_server
    engine = VllmEngine(url, timeout_s=1, retries=1)
    try:
        err, elapsed = _bounded(lambda: engine.generate([_req(), _req("again")]), 30)
    finally:
        engine.close()
    assert isinstance(err, EngineError), err
    assert f"vLLM at {url}" in str(err) and re.search(r"did not answer within 1(\.0)? s after 1 retries", str(err))
    assert held, "the engine never connected to the silent server"
    assert elapsed < 15


# ---- 4. no_repeat_ngram needs the logits processor ------------------------------------------------------------
def test_no_repeat_ngram_without_the_processor_is_refused_before_sending(down_engine):
    assert not down_engine.ngram
    for call in (lambda: down_engine.generate([_req(no_repeat_ngram=3)]),
                 lambda: down_engine.generate([_req(no_repeat_ngram=3), _req()]),
                 lambda: list(down_engine.stream(_req(no_repeat_ngram=3)))):
        with pytest.raises(EngineError, match=r"no_repeat_ngram 3 needs loradex's n-gram logits processor") as e:
            call()
        assert "--logits-processors loradex_ngram:NoRepeatNgram" in str(e.value)
    with pytest.raises(EngineError, match="cannot be reached"):  # with the processor the request is sent
        VllmEngine(down_engine.url, ngram=True, retries=0).generate([_req(no_repeat_ngram=3)])


def test_no_repeat_ngram_refusal_does_not_depend_on_its_place_in_the_batch(down_engine):
    with pytest.raises(EngineError, match=r"needs loradex's n-gram logits processor"):
        down_engine.generate([_req(), _req(no_repeat_ngram=3)])


# ---- 5. n-gram blocking: one rule (the plugin's `banned`), the same in every engine --------------------------------
@pytest.fixture(scope="module")
def plugin():
    """The plugin as vLLM imports it: a top-level module with its folder on the path, loradex not imported."""
    import sys

    spec = importlib.util.spec_from_file_location("loradex_ngram_under_test", PLUGIN_DIR / "loradex_ngram.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PLUGIN_DIR))
    assert not module.banned.__module__.startswith("loradex")  # its own copy of the folder's rule
    return module


VOCAB = 7


def _repeats(answer: list[int], n: int) -> set[int]:
    """The definition, written apart from the code: t is banned when answer + [t] ends in an n-gram that answer
    already holds."""
    grams = {tuple(answer[i:i + n]) for i in range(len(answer) - n + 1)}
    return {t for t in range(VOCAB) if len(answer) >= n - 1 and tuple((answer + [t])[-n:]) in grams}


@settings(max_examples=300, deadline=None)
@given(prompt=st.lists(st.integers(0, VOCAB - 1), max_size=6), answer=st.lists(st.integers(0, VOCAB - 1), max_size=25),
       n=st.integers(2, 5))
def test_banned_is_the_definition_in_the_plugin_and_the_local_engine(plugin, prompt, answer, n):
    import torch

    from loradex.engine.local import _no_repeat_processor

    ids = torch.tensor([prompt + answer], dtype=torch.long)
    scores = _no_repeat_processor(n, len(prompt))(ids, torch.zeros(1, VOCAB))
    local = set(torch.isinf(scores[0]).nonzero().flatten().tolist())  # the prompt's n-grams do not count
    assert local == set(plugin.banned(answer, n)) == _repeats(answer, n)


def test_banned_by_hand_and_the_processor_it_feeds(plugin):
    import torch

    assert plugin.banned([1, 2, 3, 1, 2], 3) == [3]
    assert sorted(plugin.banned([5, 1, 5, 2, 5], 2)) == [1, 2]  # after 5: what followed a 5
    assert plugin.banned([1, 2], 3) == [] and plugin.banned([], 2) == []

    class Params:
        def __init__(self, extra_args):
            self.extra_args = extra_args

    processor = plugin.NoRepeatNgram()
    assert processor.new_req_logits_processor(Params(None)) is None
    assert processor.new_req_logits_processor(Params({"no_repeat_ngram": 0})) is None
    block = processor.new_req_logits_processor(Params({"no_repeat_ngram": 3}))
    logits = block([1, 2, 3, 1, 2], torch.zeros(VOCAB))
    assert torch.isinf(logits).nonzero().flatten().tolist() == [3]
    for bad in (1, -2, "3", 2.5):
        with pytest.raises(ValueError, match="no_repeat_ngram"):
            plugin.NoRepeatNgram.validate_params(Params({"no_repeat_ngram": bad}))
    plugin.NoRepeatNgram.validate_params(Params({"no_repeat_ngram": 2}))
    plugin.NoRepeatNgram.validate_params(Params(None))


# ---- 6. the batcher forwards each request at once to an engine that batches by itself ----------------------------
class ForwardingEngine:
    """An engine with `forwards = True` that records each call's size and how many calls run at once; calls
    wait for `gate`."""

    forwards = True

    def __init__(self):
        self.sizes: list[int] = []
        self.running = self.most = 0
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def generate(self, requests, cancel=()):
        with self._lock:
            self.sizes.append(len(requests))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.gate.wait(10)
            time.sleep(0.01)
            return [Generation(r.messages[-1]["content"].upper(), 1, 1, "stop") for r in requests]
        finally:
            with self._lock:
                self.running -= 1


def _until(check, limit_s: float = 5.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_batcher_forwards_each_request_at_once_up_to_max_queue():
    engine = ForwardingEngine()
    batcher = Batcher(engine, max_batch=8, window_ms=50, max_queue=3)  # type: ignore[arg-type]
    try:
        assert batcher.forwards
        first = [batcher.submit(_req(f"q{i}")) for i in range(3)]
        assert _until(lambda: engine.running == 3), f"{engine.running} of 3 requests reached the engine"
        waiting = [batcher.submit(_req(f"q{i}")) for i in range(3, 6)]  # in the queue: none may start yet
        time.sleep(0.2)
        assert engine.running == 3 and batcher.depth == 3 and batcher.full
        with pytest.raises(QueueFull):
            batcher.submit(_req("one too many"))
        assert batcher.stats["rejected"] == 1
        engine.gate.set()
        texts = [f.result(timeout=10).text for f in first + waiting]
        assert texts == [f"Q{i}" for i in range(6)]
        assert engine.sizes == [1] * 6 and engine.most == 3
        assert batcher.stats["requests"] == 6 and batcher.stats["largest_batch"] == 1
        assert batcher.submit(_req("after")).result(timeout=10).text == "AFTER"  # capacity came back
    finally:
        engine.gate.set()
        batcher.close()


def test_batcher_forwards_a_failure_to_its_request_only():
    class Failing(ForwardingEngine):
        def generate(self, requests, cancel=()):
            if requests[0].messages[-1]["content"] == "bad":
                raise RuntimeError("the server said no")
            return super().generate(requests, cancel)

    engine = Failing()
    engine.gate.set()
    batcher = Batcher(engine, max_queue=4)  # type: ignore[arg-type]
    try:
        good, bad = batcher.submit(_req("good")), batcher.submit(_req("bad"))
        assert good.result(timeout=10).text == "GOOD"
        with pytest.raises(EngineError, match="the server said no"):
            bad.result(timeout=10)
    finally:
        batcher.close()


# ---- 7. the vllm: section ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, expected", [
    ("engine: vllm\n", r"engine: vllm needs a `vllm:` section"),
    ("engine: vllm\nvllm:\n  url: http://127.0.0.1:8000\n  managed: true\n", r"vllm: .*exactly one of vllm.url"),
    ("engine: vllm\nvllm:\n  port: 8011\n", r"vllm: .*exactly one of vllm.url"),
], ids=["no-section", "url-and-managed", "neither"])
def test_vllm_section_must_name_one_server(tmp_path, config, expected):
    root = write_project(tmp_path / "p", {}, config)
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(root / "loradex.yaml")
    assert str(root / "loradex.yaml") in str(e.value)


def test_vllm_section_with_one_server_loads(tmp_path):
    root = write_project(tmp_path / "p", {}, "engine: vllm\nvllm:\n  url: http://127.0.0.1:8000\n")
    assert load_config(root / "loradex.yaml").vllm.url == "http://127.0.0.1:8000"  # type: ignore[union-attr]
    root = write_project(tmp_path / "q", {}, "engine: vllm\nvllm:\n  managed: true\n")
    assert load_config(root / "loradex.yaml").vllm.managed  # type: ignore[union-attr]


# ---- 8. the managed server ------------------------------------------------------------------------------------
def _managed(tmp_path: Path, python: Path, **kw) -> ManagedVllm:
    return ManagedVllm(python, tmp_path / "model", "tiny", tmp_path / "state" / "vllm.log", port=free_port(), **kw)


def test_managed_without_a_vllm_environment_says_how_to_make_one(tmp_path, keep_sigterm):
    server = _managed(tmp_path, tmp_path / "no-env" / "bin" / "python")
    with pytest.raises(EngineError, match=r"no vLLM environment at .*no-env.*scripts/vllm-env\.sh"):
        server.start()
    assert server.process is None


def test_managed_server_that_exits_shows_its_code_and_log(tmp_path, keep_sigterm):
    python = _fake_python(tmp_path / "python", "echo 'fake vllm: CUDA out of memory'\nexit 3\n")
    server = _managed(tmp_path, python)
    err, elapsed = _bounded(server.start, 30)
    assert isinstance(err, EngineError), err
    assert "vLLM exited with code 3 while starting" in str(err) and "fake vllm: CUDA out of memory" in str(err)
    assert str(server.log_path) in str(err) and elapsed < 10


def test_managed_server_not_up_in_time_is_stopped_with_its_children(tmp_path, keep_sigterm):
    child_file = tmp_path / "child.pid"
    python = _fake_python(tmp_path / "python", f"sleep 300 &\necho $! > {child_file}\necho 'loading weights'\n"
                                               "sleep 300\n")
    server = _managed(tmp_path, python, start_timeout_s=2)
    pids: list[int] = []
    try:
        err, elapsed = _bounded(server.start, 30)
        assert isinstance(err, EngineError), err
        assert "vLLM was not up after" in str(err) and "start_timeout_s" in str(err) and "loading weights" in str(err)
        assert elapsed < 15
        assert server.process is None  # stopped
        assert _until(child_file.exists, 1)
        pids.append(int(child_file.read_text()))
        assert _wait_dead(pids[0]), f"the server's child {pids[0]} outlived the stopped server"
    finally:
        for pid in pids:
            _kill_group_of(pid)


def test_managed_server_that_exits_leaves_no_child_behind(tmp_path, keep_sigterm):
    child_file = tmp_path / "child.pid"
    python = _fake_python(tmp_path / "python", f"sleep 300 &\necho $! > {child_file}\nexit 1\n")
    server = _managed(tmp_path, python)
    pid = None
    try:
        err, _ = _bounded(server.start, 30)
        assert isinstance(err, EngineError) and "exited with code 1" in str(err), err
        pid = int(child_file.read_text())
        assert _wait_dead(pid, 2), f"the exited server's child {pid} is still running"
    finally:
        if pid is not None:
            _kill_group_of(pid)


def test_managed_command_and_environment(tmp_path):
    adapters = {"claims@sha256:0123abcd": tmp_path / "a", "faq@sha256:4567ef": tmp_path / "b"}
    server = _managed(tmp_path, tmp_path / "python", adapters=adapters, max_lora_rank=32,
                      extra_args=("--enforce-eager",))
    cmd = server.command()
    assert cmd[0] == str(tmp_path / "python") and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32"
    assert cmd[cmd.index("--port") + 1] == str(server.port) and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--logits-processors") + 1] == "loradex_ngram:NoRepeatNgram"
    modules = cmd[cmd.index("--lora-modules") + 1:cmd.index("--lora-modules") + 3]
    assert modules == [f"claims@sha256:0123abcd={(tmp_path / 'a').resolve()}",
                       f"faq@sha256:4567ef={(tmp_path / 'b').resolve()}"]
    assert cmd[-1] == "--enforce-eager"
    assert "--lora-modules" not in _managed(tmp_path, tmp_path / "python").command()
    env = server.environment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(PLUGIN_DIR)
    assert (PLUGIN_DIR / "loradex_ngram.py").is_file()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert server.url == f"http://127.0.0.1:{server.port}"


# ---- 9. push, and the engine a project gets ---------------------------------------------------------------------
def test_push_needs_engine_vllm(tiny, tmp_path, monkeypatch, closed_url):
    monkeypatch.setenv("LORADEX_CACHE", str(tmp_path / "cache"))
    for name, config in (("no-section", "engine: echo\n"), ("section", f"engine: local\nvllm:\n  url: {closed_url}\n")):
        project = open_project(write_project(tmp_path / name, {}, f"model: {tiny}\n{config}"))
        with pytest.raises(EngineError, match=r"set engine: vllm and a vllm: section"):
            push(project)


def test_push_to_a_server_that_is_down_names_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LORADEX_CACHE", str(tmp_path / "cache"))
    port = free_port()
    project = open_project(write_project(tmp_path / "p", {}, f"model: {tiny}\nengine: vllm\nvllm:\n"
                                                             f"  url: http://127.0.0.1:{port}\n  retries: 0\n"))
    err, elapsed = _bounded(lambda: push(project), 30)
    assert isinstance(err, EngineError) and f"vLLM at http://127.0.0.1:{port}" in str(err), err
    assert "cannot be reached" in str(err) and elapsed < 20


def test_from_project_reads_the_vllm_section(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LORADEX_CACHE", str(tmp_path / "cache"))
    config = (f"model: {tiny}\nengine: vllm\nvllm:\n  url: http://127.0.0.1:9/\n  max_lora_rank: 64\n"
              "  timeout_s: 7\n  retries: 3\n")
    engine = from_project(open_project(write_project(tmp_path / "p", {}, config)))
    try:
        assert engine.url == "http://127.0.0.1:9" and engine.max_lora_rank == 64 and not engine.ngram
        assert engine.base is not None and engine.base["name"] == tiny.name and len(engine.base["sha256"]) == 64
        assert engine.client.max_retries == 3 and engine.client.timeout.read == 7  # type: ignore[union-attr]
        assert engine.server is None
    finally:
        engine.close()
    engine = from_project(open_project(write_project(tmp_path / "q", {}, config + "  no_repeat_ngram: true\n")))
    assert engine.ngram
    engine.close()
