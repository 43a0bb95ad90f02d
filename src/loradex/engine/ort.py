"""The ort engine: onnxruntime-genai on this machine's CPU, one exported base model, LoRA adapters per request.

`loradex.engine.ort_export` exports the base model once (fp32 or int8) with the LoRA weights as graph inputs,
and each adapter on first use; onnxruntime-genai's `Adapters` holds the loaded ones and each request's generator
activates its own, so requests of different adapters share the one base model. Decoding is driven token by
token here (logits from onnxruntime-genai, the choice made in numpy), so greedy decoding, sampling, stop strings,
n-gram blocking (`GenerationRequest.no_repeat_ngram`, the answer only) and cancellation behave as in the
transformers engine (`loradex.engine.local`), whose tokenizer and chat template this engine uses too: in fp32
the greedy tokens are the same (tests/integration/test_ort_parity.py).

Requests run one at a time under one lock (a batch is its requests in turn); a stream decodes in a thread of
its own, so a slow reader does not hold the lock. An adapter the exported graph
cannot run (DoRA, `modules_to_save`, LoRA on the embeddings...) is served by a transformers engine built on
first need, and a base model the builder cannot export makes `from_project` return the transformers engine:
both say why in one line on stderr, never silently.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, LoradexError
from ..vllm_plugin.ngram_rule import banned
from . import CANCELLED, Engine, Generation, GenerationRequest, cancelled, cut_at_stop
from .local import LocalEngine, chat_prompt, token_counts
from .ort_export import Unsupported, export_adapter, export_base

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["OrtEngine", "from_project"]

_END = object()  # the end of a stream's queue
_BASE = "__base__"  # onnxruntime-genai's name of the all-empty adapter that gives the bare base model


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class OrtEngine:
    """onnxruntime-genai on `model_dir` (a Hugging Face folder of an instruction-tuned chat model) exported in
    `precision` (fp32 or int8), at most `max_adapters` adapters loaded (least recently used unloaded).
    `fallback` builds the engine that serves adapters this one cannot (default: the transformers engine on the
    same folder). Raises Unsupported when the base model cannot be exported, EngineError when it has no chat
    template."""

    def __init__(self, model_dir: str | Path, *, precision: str = "fp32", max_adapters: int = 4,
                 fallback: Callable[[], Engine] | None = None, log: Callable[[str], None] = _log):
        import numpy as np
        import onnxruntime_genai as og
        from transformers import AutoTokenizer

        self.np, self.og = np, og
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.name = f"{self.model_dir.name} (onnxruntime-genai {precision})"
        self.folder = export_base(self.model_dir, precision, log)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(self.model_dir))
        if not self.tokenizer.chat_template:
            raise EngineError(f"{model_dir} has no chat template; loradex needs an instruction-tuned chat model")
        self.model = og.Model(str(self.folder))
        self.adapters = og.Adapters(self.model)
        self.adapters.load(str(export_adapter(None, self.folder)), _BASE)
        self.max_adapters = max_adapters
        self.context_length = self._context_length()
        self._loaded: OrderedDict[str, str] = OrderedDict()  # name -> PEFT folder, least recently used first
        self._known: dict[str, str] = {}  # every adapter ever loaded: an evicted one is reloaded when asked for
        self._elsewhere: dict[str, str] = {}  # adapters served by the fallback engine -> why
        self._fallback_factory = fallback or (lambda: _transformers(self.model_dir, max_adapters))
        self._fallback: Engine | None = None
        self._log = log
        self._lock = threading.RLock()
        self._rng = np.random.default_rng()
        self.stats = {"adapter_loads": 0, "adapter_evictions": 0}

    def _context_length(self) -> int:
        import json

        return int(json.loads((self.folder / "genai_config.json").read_text())["model"]["context_length"])

    def loaded_adapters(self) -> list[str]:
        """Names of the loaded adapters (those served by the fallback engine included), least recently used
        first."""
        with self._lock:
            return [*self._loaded, *(n for n in self._elsewhere if self._fallback and
                                     n in self._fallback.loaded_adapters())]

    def load_adapter(self, name: str, path: str | Path) -> bool:
        """`Engine.load_adapter`: exports the adapter (cached by its files' hash) and loads it; one this graph
        cannot run goes to the fallback engine, with the reason on stderr. Raises EngineError when the folder
        is not a readable PEFT LoRA adapter."""
        path = str(Path(path).resolve())
        with self._lock:
            if name in self._elsewhere and self._known.get(name) == path:
                return self._fallback_engine().load_adapter(name, path)
            if self._loaded.get(name) == path:
                self._loaded.move_to_end(name)
                return False
            try:
                file = export_adapter(Path(path), self.folder)
            except Unsupported as e:
                self._log(f"engine ort: adapter {name} runs on the transformers engine instead: {e}")
                self._elsewhere[name] = str(e)
                self._known[name] = path
                return self._fallback_engine().load_adapter(name, path)
            except (OSError, KeyError, ValueError) as e:
                raise EngineError(f"cannot load adapter {name} from {path}: {type(e).__name__}: {e}") from e
            if name in self._loaded:  # same name, other folder: replace, never serve the old weights
                self._unload(name)
            self.adapters.load(str(file), name)
            self._loaded[name] = path
            self._known[name] = path
            self._elsewhere.pop(name, None)
            self.stats["adapter_loads"] += 1
            while len(self._loaded) > self.max_adapters:
                self._unload(next(iter(self._loaded)))
                self.stats["adapter_evictions"] += 1
            return True

    def _unload(self, name: str) -> None:
        self._loaded.pop(name)
        self.adapters.unload(name)

    def _fallback_engine(self) -> Engine:
        if self._fallback is None:
            self._fallback = self._fallback_factory()
        return self._fallback

    def _adapter(self, request: GenerationRequest) -> str:
        """The onnxruntime-genai adapter name for `request`, reloading an evicted one. Raises EngineError for
        an adapter never loaded."""
        name = request.adapter
        if name is None:
            return _BASE
        if name not in self._loaded:
            if name not in self._known:
                raise EngineError(f"adapter {name!r} is not loaded; load it first (engine.load_adapter)")
            self.load_adapter(name, self._known[name])
        self._loaded.move_to_end(name)
        return name

    def prompt(self, messages: Sequence[dict]) -> str:
        """The chat template applied to `messages`, as the transformers engine builds it."""
        return chat_prompt(self.tokenizer, messages)

    def count_tokens(self, request: GenerationRequest, text: str) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of `request` answered with `text` (`local.token_counts`)."""
        return token_counts(self.tokenizer, request, text)

    def generate(self, requests: Sequence[GenerationRequest],
                 cancel: Sequence[threading.Event | None] = ()) -> list[Generation]:
        """`Engine.generate`: each request in turn (so a batch equals each alone). Raises EngineError for an
        adapter never loaded and when generation fails."""
        out = []
        for i, r in enumerate(requests):
            event = cancel[i] if i < len(cancel) else None
            if r.adapter in self._elsewhere:
                out.append(self._fallback_engine().generate([r], [event])[0])
                continue
            out.append(_Decoding(self, r, event).run())
        return out

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[str]:
        """`Engine.stream`: the text as it is decoded, held back where it could still become a stop string.
        Generation also stops when the reader closes the iterator before its end."""
        if request.adapter in self._elsewhere:
            yield from self._fallback_engine().stream(request, cancel)
            return
        left = threading.Event()  # set when this iterator ends, however it ends: nobody reads what comes next
        pieces: queue.Queue = queue.Queue()

        def work() -> None:  # decodes at its own pace: a slow reader never holds the engine's lock
            try:
                for piece in _Decoding(self, request, cancel, left):
                    pieces.put(piece)
            except BaseException as e:  # noqa: BLE001 - handed to the reader, who would otherwise wait forever
                pieces.put(e)
            finally:
                pieces.put(_END)

        threading.Thread(target=work, daemon=True).start()
        try:
            while (item := pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if cancel is not None and cancel.is_set():  # the decoder may be ahead: nothing more is shown
                    return
                yield item
        finally:
            left.set()


class _Decoding:
    """One request's decoding as an iterator of text pieces; `result` is its Generation once iterated to the end.
    Holds the engine's lock while it runs."""

    def __init__(self, engine: OrtEngine, request: GenerationRequest, cancel: threading.Event | None,
                 left: threading.Event | None = None):
        self.engine, self.request, self.events = engine, request, [cancel, left]
        self.result: Generation | None = None

    def run(self) -> Generation:
        """Decode to the end and return the Generation."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def __iter__(self) -> Iterator[str]:
        e, r = self.engine, self.request
        ids = e.tokenizer(e.prompt(r.messages), add_special_tokens=False)["input_ids"]
        if len(ids) + r.max_new_tokens > e.context_length:
            raise EngineError(f"the prompt ({len(ids)} tokens) and max_new_tokens ({r.max_new_tokens}) exceed the "
                              f"model's context of {e.context_length} tokens")
        with e._lock:
            try:
                yield from self._run(ids)
            except LoradexError:
                raise
            except Exception as err:  # onnxruntime's: an error of the engine, for this request
                raise EngineError.of(err, f" (adapter: {r.adapter or 'base'})") from err

    def _run(self, ids: list[int]) -> Iterator[str]:
        e, r, np = self.engine, self.request, self.engine.np
        params = e.og.GeneratorParams(e.model)
        params.set_search_options(max_length=len(ids) + r.max_new_tokens, batch_size=1)
        gen = e.og.Generator(e.model, params)
        gen.set_active_adapter(e.adapters, e._adapter(r))
        eos = e.tokenizer.eos_token_id
        t0 = time.perf_counter()
        gen.append_tokens(np.array([ids], dtype=np.int32))
        t_first = None
        new: list[int] = []
        shown, text, reason, hold = 0, "", "length", max((len(s) for s in r.stop), default=0)
        while len(new) < r.max_new_tokens:
            if cancelled(self.events, 0) or cancelled(self.events, 1):
                reason = CANCELLED
                break
            token = self._choose(gen.get_logits()[0, -1], new)
            t_first = t_first or time.perf_counter()
            if token == eos:
                reason = "stop"
                break
            new.append(token)
            text, stopped = cut_at_stop(str(e.tokenizer.decode(new, skip_special_tokens=True)), r.stop)
            if stopped:
                reason = "stop"
                break
            if len(new) < r.max_new_tokens:
                gen.append_tokens(np.array([[token]], dtype=np.int32))
            ready = len(text) - hold - 1  # the last character may still change (a partial UTF-8 sequence)
            bad = text.find("\ufffd", shown)
            ready = min(ready, bad) if bad >= 0 else ready
            if ready > shown:
                yield text[shown:ready]
                shown = ready
        if text[shown:] and reason != CANCELLED:
            yield text[shown:]
        t1 = time.perf_counter()
        t_first = t_first or t1
        timings = {"prompt": (t_first - t0) * 1000, "generate": (t1 - t_first) * 1000}
        self.result = Generation(text.strip(), len(ids), len(new), reason, timings)

    def _choose(self, logits, new: list[int]) -> int:
        """The next token: greedy at temperature 0, else sampled from softmax(logits / temperature); tokens that
        would repeat an n-gram of the answer (`no_repeat_ngram`) are excluded."""
        np, r = self.engine.np, self.request
        ban = banned(new, r.no_repeat_ngram) if r.no_repeat_ngram else []
        if ban:
            logits = logits.copy()
            logits[ban] = -np.inf
        if r.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / r.temperature
        p = np.exp(z - z.max())
        return int(self.engine._rng.choice(len(p), p=p / p.sum()))


def _transformers(model_dir: Path, max_adapters: int) -> Engine:
    return LocalEngine(model_dir, max_adapters=max_adapters)


def from_project(project: Project) -> Engine:
    """The `ort` entry of `loradex.backends.ENGINES`: the project's base model exported in `ort.precision`; the
    transformers engine, with the reason on stderr, when onnxruntime-genai is not installed or cannot export
    the model."""
    cfg = project.config.ort
    limit = project.config.adapters.max_loaded
    try:
        return OrtEngine(project.base_model_dir, precision=cfg.precision, max_adapters=limit)
    except (ImportError, Unsupported) as e:
        _log(f"engine ort is not available here, using the transformers engine: {e}")
        return _transformers(project.base_model_dir, limit)
