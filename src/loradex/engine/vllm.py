"""The vLLM engine: generation on a vLLM server through its OpenAI-compatible API, adapters by name.

loradex keeps routing, retrieval, citation checking and the adapter registry; vLLM decodes, with its
multi-LoRA kernels keeping mixed-adapter batches near base speed. A request names its adapter as the model
(`model=claims@sha256:...`, the registry's content-derived label), so a new version is a new name and vLLM
never serves one version's weights from a cache kept for another under the same name. Adapters are loaded at
run time (`POST /v1/load_lora_adapter`, which needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` on the server);
one the server cannot take (rank above its `--max-lora-rank`, DoRA and other non-plain LoRA, another base
model) is refused here, before any request, with the reason.

Requests are sent concurrently (vLLM batches them itself), streamed, so a cancelled one is closed at the next
token. Talking to the server goes through the `openai` client: timeouts, and bounded retries with exponential
backoff of connection errors, timeouts and 408/409/429/5xx answers; every failure becomes an EngineError that
names the server and the adapter. `no_repeat_ngram` is sent as `vllm_xargs` to loradex's logits processor
(`loradex/vllm_plugin/loradex_ngram.py`), which managed servers load; on a server without it, requests asking
for it are refused unless `vllm.no_repeat_ngram` says the server has it.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapters.validate import serving
from ..errors import EngineError
from . import CANCELLED, Generation, GenerationRequest

if TYPE_CHECKING:
    from ..config import VllmConfig
    from ..project import Project
    from .vllm_server import ManagedVllm

__all__ = ["VllmEngine", "adapter_rank", "from_project", "push"]


def adapter_rank(cfg: dict) -> int:
    """The largest LoRA rank of a PEFT config (`r`, or any `rank_pattern` value)."""
    return max([int(cfg.get("r", 8))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


class VllmEngine:
    """An Engine on the vLLM server at `url` (scheme, host and port; `/v1` is added).

    `model`: the base model's served name (default: the server's only base model); `max_lora_rank`: the server's
    `--max-lora-rank`; `base`: the project's base model identity (`name`, `sha256`): an adapter whose manifest
    names another base is refused; `ngram`: whether the server runs loradex's n-gram logits processor;
    `timeout_s` and `retries`: per request; `concurrency`: requests in flight at once from one `generate`;
    `server`: a ManagedVllm this engine owns (stopped by `close`)."""

    name = "vllm"
    forwards = True  # the server's batcher sends each request on at once: vLLM batches them itself

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, max_lora_rank: int = 16,
                 base: dict | None = None, ngram: bool = False, timeout_s: float = 120.0, retries: int = 2,
                 concurrency: int = 64, server: ManagedVllm | None = None):
        import httpx2  # the openai client's HTTP library
        import openai

        self.url = url.rstrip("/")
        self.max_lora_rank, self.base, self.ngram, self.concurrency = max_lora_rank, base, ngram, concurrency
        self.server = server
        self._openai = openai
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=retries,
                                    timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)))
        self._model = model
        self._adapters: OrderedDict[str, str] = OrderedDict()  # name -> folder, least recently used first
        self._lock = threading.RLock()
        self._connected = False
        self.stats = {"adapter_loads": 0, "adapter_evictions": 0}

    # ---- the server --------------------------------------------------------------------------------------
    def _connect(self) -> None:
        """Read the served models once: the base model's name, and the adapters the server already holds."""
        with self._lock:
            if self._connected:
                return
            models = self._call(lambda: self.client.models.list().data, None)
            bases = [m.id for m in models if getattr(m, "parent", None) is None]
            if self._model is None:
                if len(bases) != 1:
                    raise EngineError(f"vLLM at {self.url} serves {len(bases)} base models ({', '.join(bases)}); "
                                      "name one in vllm.model")
                self._model = bases[0]
            elif self._model not in bases:
                raise EngineError(f"vLLM at {self.url} does not serve {self._model!r} (it serves "
                                  f"{', '.join(bases) or 'nothing'}); fix vllm.model")
            for m in models:
                if getattr(m, "parent", None) is not None:
                    self._adapters[m.id] = str(Path(getattr(m, "root", "") or "").resolve())
            self._connected = True

    @property
    def model(self) -> str:
        """The base model's served name."""
        self._connect()
        return self._model  # type: ignore[return-value]

    def _call(self, fn: Any, adapter: str | None) -> Any:
        """`fn()`, its openai/httpx errors raised as an EngineError naming the server and the adapter."""
        import httpx2 as httpx  # the openai client's HTTP library: raised while a stream is read

        openai = self._openai
        who = f"vLLM at {self.url} (adapter: {adapter or 'base'})"
        try:
            return fn()
        except openai.APIStatusError as e:
            raise EngineError(f"{who} answered {e.status_code}: {_message(e)}") from e
        except (openai.APITimeoutError, httpx.TimeoutException) as e:
            raise EngineError(f"{who} did not answer within {self.client.timeout.read} s after "  # type: ignore
                              f"{self.client.max_retries} retries; raise vllm.timeout_s or check the server") from e
        except (openai.APIConnectionError, httpx.TransportError) as e:
            raise EngineError(f"{who} cannot be reached ({type(e).__name__}: {e}); is it running? "
                              "Check vllm.url, or set vllm.managed: true to start one here") from e

    # ---- adapters ----------------------------------------------------------------------------------------
    def loaded_adapters(self) -> list[str]:
        """The adapters the server holds, least recently used here first."""
        self._connect()
        return list(self._adapters)

    def refuse(self, name: str, folder: Path) -> None:
        """Raise EngineError when the server cannot serve the PEFT folder `folder` as `name`."""
        try:
            cfg = json.loads((folder / "adapter_config.json").read_text())
        except (OSError, ValueError) as e:
            raise EngineError(f"{name}: {folder}/adapter_config.json is unreadable ({e})") from None
        how = serving(cfg)
        if not how.mixed_batch:
            raise EngineError(f"{name}: vLLM serves plain LoRA only, and this adapter is not ({how.reason}); "
                              "serve it with engine: local")
        rank = adapter_rank(cfg)
        if rank > self.max_lora_rank:
            raise EngineError(f"{name}: LoRA rank {rank} is above the server's --max-lora-rank {self.max_lora_rank}"
                              f" ({self.url}); start vLLM with --max-lora-rank {rank} or more and set "
                              "vllm.max_lora_rank to match")
        manifest = folder / "manifest.json"
        trained = json.loads(manifest.read_text()).get("base_model", {}) if manifest.is_file() else {}
        if self.base and trained.get("sha256") and trained["sha256"] != self.base["sha256"]:
            raise EngineError(f"{name}: trained for base {trained.get('name')!r} (sha256 {trained['sha256'][:12]}), "
                              f"but vLLM at {self.url} serves {self.base['name']!r} for this project")

    def load_adapter(self, name: str, path: str | Path) -> bool:
        """Load the PEFT folder `path` into the server as `name` (the server must read the same path). A no-op
        when `name` is loaded from the same folder; the same name from another folder is unloaded first.
        Raises EngineError when `refuse` does, or the server refuses. True when it was (re)loaded."""
        folder = Path(path).resolve()
        with self._lock:
            if self._adapters.get(name) == str(folder):
                self._adapters.move_to_end(name)
                return False
            self.refuse(name, folder)
            self._connect()
            if self._adapters.get(name) == str(folder):  # the server had it already
                self._adapters.move_to_end(name)
                return False
            if name in self._adapters:  # never serve old weights under the name
                self._unload(name)
            try:
                self._call(lambda: self.client.post("/load_lora_adapter", cast_to=str,
                                                    body={"lora_name": name, "lora_path": str(folder)}), name)
            except EngineError as e:  # loaded by another client (`adapters push`): a label names one content
                if "already been loaded" not in str(e):
                    raise
            self._adapters[name] = str(folder)
            self.stats["adapter_loads"] += 1
            return True

    def _unload(self, name: str) -> None:
        try:
            self._call(lambda: self.client.post("/unload_lora_adapter", cast_to=str, body={"lora_name": name}), name)
        except EngineError:  # gone already (a restarted server): nothing to unload
            pass
        self._adapters.pop(name, None)
        self.stats["adapter_evictions"] += 1

    # ---- generation ----------------------------------------------------------------------------------
    def _check(self, requests: Sequence[GenerationRequest]) -> None:
        """Refuse, before anything is sent: n-gram blocking on a server without the processor (no server
        contact needed), then an adapter that was never loaded."""
        for request in requests:
            if request.no_repeat_ngram and not self.ngram:
                raise EngineError(f"no_repeat_ngram {request.no_repeat_ngram} needs loradex's n-gram logits "
                                  f"processor, which vLLM at {self.url} does not run: start it with "
                                  "--logits-processors loradex_ngram:NoRepeatNgram (and set vllm.no_repeat_ngram: "
                                  "true), or set answer.no_repeat_ngram: 0")
        self._connect()
        for request in requests:
            if request.adapter is not None and request.adapter not in self._adapters:
                raise EngineError(f"adapter {request.adapter!r} is not loaded on vLLM at {self.url}; load it first "
                                  "(`loradex adapters push`)")

    def _open(self, request: GenerationRequest) -> Any:
        """The server's streamed chat completion for `request`."""
        extra: dict[str, Any] = {"skip_special_tokens": True}
        if request.no_repeat_ngram:
            extra["vllm_xargs"] = {"no_repeat_ngram": request.no_repeat_ngram}

        def create() -> Any:
            return self.client.chat.completions.create(  # type: ignore[call-overload]
                model=request.adapter or self.model, messages=list(request.messages),
                max_tokens=request.max_new_tokens, temperature=request.temperature,
                stop=[s for s in request.stop if s] or None, stream=True, stream_options={"include_usage": True},
                extra_body=extra)

        with self._lock:
            folder = self._adapters.get(request.adapter or "")
            if request.adapter is not None:
                self._adapters.move_to_end(request.adapter)
        try:
            return self._call(create, request.adapter)
        except EngineError as e:  # a restarted server forgot an adapter loaded at run time: load it again, once
            if folder is None or not isinstance(e.__cause__, self._openai.NotFoundError):
                raise
            with self._lock:
                self._adapters.pop(request.adapter or "", None)
                self.load_adapter(request.adapter or "", folder)
            return self._call(create, request.adapter)

    def _chunks(self, request: GenerationRequest, cancel: threading.Event | None) -> Iterator[tuple[str, Any]]:
        """(text piece, chunk) as the server streams them, ending early once `cancel` is set."""
        stream = self._open(request)
        try:
            chunks = iter(stream)
            while True:
                if cancel is not None and cancel.is_set():
                    return
                chunk = self._call(lambda: next(chunks, None), request.adapter)
                if chunk is None:
                    return
                piece = chunk.choices[0].delta.content or "" if chunk.choices else ""
                yield piece, chunk
        finally:
            stream.close()  # vLLM aborts a request whose connection closes

    def _one(self, request: GenerationRequest, cancel: threading.Event | None) -> Generation:
        t0 = time.perf_counter()
        first: float | None = None
        text, pieces, reason, usage = [], 0, None, None
        if cancel is not None and cancel.is_set():
            return Generation("", 0, 0, CANCELLED, {"prompt": 0.0, "generate": 0.0})
        for piece, chunk in self._chunks(request, cancel):
            if chunk.choices:
                first = first or time.perf_counter()
                pieces += 1
                text.append(piece)
                reason = chunk.choices[0].finish_reason or reason
            if chunk.usage is not None:
                usage = chunk.usage
        end = time.perf_counter()
        first = first or end
        timings = {"prompt": (first - t0) * 1000, "generate": (end - first) * 1000}
        if usage is None:  # cancelled: the server never sent its count
            return Generation("".join(text).strip(), 0, min(pieces, request.max_new_tokens), CANCELLED, timings)
        return Generation("".join(text).strip(), usage.prompt_tokens, usage.completion_tokens,
                          "length" if reason == "length" else "stop", timings)

    def generate(self, requests: Sequence[GenerationRequest],
                 cancel: Sequence[threading.Event | None] = ()) -> list[Generation]:
        """One Generation per request, in order, all sent at once (vLLM batches them). Raises EngineError for
        an adapter that was never loaded (before anything is sent), or for the first request that failed."""
        self._check(requests)
        if len(requests) == 1:
            return [self._one(requests[0], cancel[0] if cancel else None)]
        events = [cancel[i] if i < len(cancel) else None for i in range(len(requests))]
        with ThreadPoolExecutor(max_workers=max(1, min(len(requests), self.concurrency))) as pool:
            return list(pool.map(self._one, requests, events))

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces as vLLM streams them (stop strings are applied by the server, which holds back text
        that could still become one)."""
        self._check([request])
        for piece, _ in self._chunks(request, cancel):
            if piece:
                yield piece

    def count_tokens(self, request: GenerationRequest, text: str) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of `request` answered with `text`, by the server's tokenizer
        (`POST /tokenize`): the usage of a stream whose pieces carry no counts."""
        def count(body: dict) -> int:
            out: Any = self._call(lambda: self.client.post(f"{self.url}/tokenize", cast_to=object,
                                                           body={"model": self.model, **body}), request.adapter)
            return int(out["count"])

        return (count({"messages": list(request.messages), "add_generation_prompt": True}),
                count({"prompt": text, "add_special_tokens": False}))

    def close(self) -> None:
        """Close the HTTP client and stop the managed server, if this engine started one."""
        self.client.close()
        if self.server is not None:
            self.server.stop()


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error", {}).get("message") or body)
    return str(getattr(e, "message", e))


def _settings(project: Project) -> dict[str, Any]:
    """VllmEngine's keyword arguments from the project's `vllm:` settings."""
    import os

    from ..models import base_identity

    cfg: VllmConfig = project.config.vllm  # type: ignore[assignment]
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if cfg.api_key_env and not key:
        raise EngineError(f"vllm.api_key_env names {cfg.api_key_env}, which is not set")
    return {"model": cfg.model, "api_key": key,
            "max_lora_rank": cfg.max_lora_rank, "base": base_identity(project.base_model_dir),
            "ngram": cfg.managed if cfg.no_repeat_ngram is None else cfg.no_repeat_ngram,
            "timeout_s": cfg.timeout_s, "retries": cfg.retries}


def from_project(project: Project) -> VllmEngine:
    """The `vllm` entry of `loradex.backends.ENGINES`: the project's `vllm:` settings; a managed server is started
    now, with the registry's active adapters, and stopped when the process exits."""
    cfg: VllmConfig = project.config.vllm  # type: ignore[assignment]
    settings = _settings(project)
    if not cfg.managed:
        return VllmEngine(cfg.url or "", **settings)
    from .vllm_server import ManagedVllm, active_adapters

    server = ManagedVllm.for_project(project, active_adapters(project))
    server.start()
    return VllmEngine(server.url, server=server, **settings)


def push(project: Project, domains: Sequence[str] = ()) -> list[dict]:
    """Load each domain's active adapter version (all domains by default) into the project's running vLLM server
    (`vllm.url`, or a managed server's port) under its content-derived label, so the next request for the domain
    gets the new weights under a name never used for others. Each row: `domain`, `adapter`, `loaded` (False:
    already there), `ms`, or `error` (the registry's or the engine's refusal, made before any request). Starts no
    server: raises EngineError when none answers."""
    from ..errors import AdapterError

    cfg: VllmConfig | None = project.config.vllm
    if project.config.engine != "vllm" or cfg is None:
        raise EngineError("`adapters push` loads adapters into a vLLM server: set engine: vllm and a vllm: section")
    engine = VllmEngine(cfg.url or f"http://127.0.0.1:{cfg.port}", **_settings(project))
    rows: list[dict] = []
    try:
        engine.loaded_adapters()  # fails now, naming the server, when none answers
        for domain in domains or list(project.config.domains):
            ref = project.registry.active(domain)
            if ref is None:
                continue
            t0 = time.perf_counter()
            try:
                project.registry.check(ref)
                loaded = engine.load_adapter(ref.label, ref.path)
            except (AdapterError, EngineError) as e:
                rows.append({"domain": domain, "adapter": ref.label, "error": str(e)})
                continue
            rows.append({"domain": domain, "adapter": ref.label, "loaded": loaded,
                         "ms": round((time.perf_counter() - t0) * 1000, 1)})
    finally:
        engine.client.close()
    return rows
