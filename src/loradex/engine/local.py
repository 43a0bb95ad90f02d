"""The local engine: transformers on this machine (CPU, or a GPU when present).

One base model, several LoRA adapters loaded on it (least recently used unloaded past `max_adapters`).
Requests sharing sampling settings and stop sequences are generated as one left-padded batch, even when
they ask for different adapters or the bare base: PEFT applies each row's adapter (`adapter_names=`).
An adapter that PEFT cannot mix (DoRA, `modules_to_save`, trainable tokens: `loradex.adapters.validate.serving`,
decided when it is loaded) gets batches of its own. An error while generating (PEFT's or torch's) is raised
as an EngineError for the batch; the server's batcher then retries its requests one by one.
An adapter is addressed by its full name (`claims@sha256:...`), so a new version is a new name and the
old weights are never served under it. Timings split prompt processing (to the first new token) from
the rest of generation. One lock serialises use of the model across threads.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapters.validate import serving
from ..errors import EngineError, LoradexError
from . import CANCELLED, Generation, GenerationRequest, cancelled, cut_at_stop

if TYPE_CHECKING:
    from ..project import Project


def _no_repeat_processor(n: int, prompt_len: int) -> Any:
    """A transformers logits processor that bans, in each row, every token that would complete an n-gram
    already generated in that row after `prompt_len` (the prompt's n-grams stay allowed)."""
    import torch
    from transformers import LogitsProcessor

    class NoRepeatInAnswer(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            answer = input_ids[:, prompt_len:]
            if answer.shape[1] < n:
                return scores
            windows = answer.unfold(1, n, 1)  # (batch, n-grams so far, n)
            tail = answer[:, answer.shape[1] - n + 1:].unsqueeze(1)  # the last n-1 tokens
            hit = (windows[:, :, :-1] == tail).all(-1)
            for row in hit.any(-1).nonzero().flatten().tolist():
                scores[row, windows[row, hit[row], -1]] = -float("inf")
            return scores

    return NoRepeatInAnswer()


class LocalEngine:
    """transformers + PEFT on `model_dir` (a Hugging Face folder of an instruction-tuned chat model), fp32, on
    `device` (default: CUDA when present, else CPU), keeping at most `max_adapters` adapters loaded.
    Raises EngineError when the model has no chat template."""

    def __init__(self, model_dir: str | Path, *, device: str | None = None, max_adapters: int = 4):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.name = Path(model_dir).name
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model: Any = model.to(self.device).eval()
        if not self.tokenizer.chat_template:
            raise EngineError(f"{model_dir} has no chat template; loradex needs an instruction-tuned chat model")
        self.max_adapters = max_adapters
        self._adapters: OrderedDict[str, tuple[str, str]] = OrderedDict()  # name -> (path, PEFT slot), LRU order
        self._known: dict[str, str] = {}  # every adapter ever loaded: an evicted one is reloaded when asked for
        self._solo: dict[str, str] = {}  # adapters that cannot share a mixed batch -> why (from their PEFT config)
        self._lock = threading.RLock()
        self.stats = {"adapter_loads": 0, "adapter_evictions": 0}

    @staticmethod
    def _slot(name: str) -> str:
        return "a" + hashlib.sha256(name.encode()).hexdigest()[:16]  # PEFT module keys cannot hold '.'

    def loaded_adapters(self) -> list[str]:
        """Names of the loaded adapters, least recently used first."""
        return list(self._adapters)

    def load_adapter(self, name: str, path: str | Path, keep: frozenset[str] = frozenset()) -> bool:
        """Make adapter `name` (a PEFT LoRA folder) available; the base weights stay shared and unchanged.

        A no-op when the same name is loaded from the same folder (it only becomes most recently used);
        loading past `max_adapters` unloads the least recently used one. An adapter whose config rules out mixed
        batches (`serving`) is generated in batches of its own from then on. True when it was (re)loaded."""
        from peft import PeftModel

        path = str(Path(path).resolve())
        with self._lock:
            if self._adapters.get(name, ("", ""))[0] == path:
                self._adapters.move_to_end(name)
                return False
            slot = self._slot(name)
            if name in self._adapters:  # same name, other folder: replace, never serve the old weights
                self._unload(name)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=slot)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=slot).eval()
            self._adapters[name] = (path, slot)
            self._known[name] = path
            how = serving(json.loads((Path(path) / "adapter_config.json").read_text()))
            if how.mixed_batch:
                self._solo.pop(name, None)
            else:
                self._solo[name] = how.reason or "cannot be mixed"
            self.stats["adapter_loads"] += 1
            while len(self._adapters) > self.max_adapters:
                victim = next((n for n in self._adapters if n not in keep and n != name), None)
                if victim is None:  # everything loaded is needed by the batch at hand: go over the limit for now
                    break
                self._unload(victim)
                self.stats["adapter_evictions"] += 1
            return True

    def _unload(self, name: str) -> None:
        _, slot = self._adapters.pop(name)
        remaining = [s for _, s in self._adapters.values()]
        if remaining:
            self.model.set_adapter(remaining[-1])  # PEFT will not delete the active adapter
            self.model.delete_adapter(slot)
        else:  # the last one: go back to the bare model
            self.model = self.model.unload()

    def _adapter_kwargs(self, requests: Sequence[GenerationRequest]):
        """(context manager, generate kwargs) selecting each request's adapter, or none for the base."""
        from contextlib import nullcontext

        names = [r.adapter for r in requests]
        needed = frozenset(n for n in names if n is not None)
        for n in needed:
            if n not in self._adapters:
                if n not in self._known:
                    raise EngineError(f"adapter {n!r} is not loaded; load it first (engine.load_adapter)")
                self.load_adapter(n, self._known[n], keep=needed)  # evicted since: back, without evicting this batch's
        for n in needed:
            self._adapters.move_to_end(n)
        if not self._adapters:
            return nullcontext(), {}
        distinct = set(names)
        if distinct == {None}:
            return self.model.disable_adapter(), {}
        if len(distinct) == 1:
            only = next(iter(distinct))
            assert only is not None
            self.model.set_adapter(self._adapters[only][1])
            return nullcontext(), {}
        return self._wrappers_passed_through(), {
            "adapter_names": [self._adapters[n][1] if n else "__base__" for n in names]}

    @contextmanager
    def _wrappers_passed_through(self) -> Iterator[None]:
        """Within a mixed batch, every module PEFT replaced for a solo adapter (modules_to_save, trainable tokens)
        gives the base module's output: no row of the batch uses them, and with `adapter_names` PEFT's
        `AuxiliaryTrainingWrapper` would look every row's adapter up among its own (a KeyError)."""
        from peft.utils.other import AuxiliaryTrainingWrapper

        wrappers = [m for m in self.model.modules()
                    if isinstance(m, AuxiliaryTrainingWrapper) and not m.disable_adapters]
        for m in wrappers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in wrappers:
                m.enable_adapters(True)

    def prompt(self, messages: Sequence[dict]) -> str:
        """The chat template applied to `messages`, ending where the assistant's answer starts."""
        return str(self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))

    def count_tokens(self, request: GenerationRequest, text: str) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of `request` answered with `text`, by this model's tokenizer: the
        usage of a stream, whose pieces carry no counts (the text is re-encoded, so it may differ from the ids
        generated by a token or two at a stop string)."""
        encode = self.tokenizer
        return (len(encode(self.prompt(request.messages), add_special_tokens=False)["input_ids"]),
                len(encode(text, add_special_tokens=False)["input_ids"]))

    def _config(self, request: GenerationRequest, max_new_tokens: int):
        from transformers import GenerationConfig

        sample = request.temperature > 0
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample,
                                temperature=request.temperature if sample else None, top_p=None, top_k=None,
                                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                stop_strings=list(request.stop) or None)

    @staticmethod
    def _processors(request: GenerationRequest, prompt_len: int) -> dict:
        if not request.no_repeat_ngram:
            return {}
        from transformers import LogitsProcessorList

        return {"logits_processor": LogitsProcessorList([_no_repeat_processor(request.no_repeat_ngram, prompt_len)])}

    def _encode(self, requests: Sequence[GenerationRequest]):
        texts = [self.prompt(r.messages) for r in requests]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def generate(self, requests: Sequence[GenerationRequest],
                 cancel: Sequence[threading.Event | None] = ()) -> list[Generation]:
        """One Generation per request, in order: batches by sampling settings and stop strings, mixing adapters
        except those that cannot be mixed (each of those gets batches of its own). A request whose `cancel`
        event is set ends at the next token (a transformers stopping criterion that ends that row only).
        Raises EngineError for an adapter never loaded and when generation fails."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            solo = r.adapter if r.adapter in self._solo else None  # None: joins the mixed batch
            groups.setdefault((r.temperature, r.stop, r.no_repeat_ngram, solo), []).append(i)
        out: list[Generation | None] = [None] * len(requests)
        with self._lock:
            for idx in groups.values():
                events = [cancel[i] if i < len(cancel) else None for i in idx]
                for i, g in zip(idx, self._generate_batch([requests[i] for i in idx], events)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def _generate_batch(self, requests: Sequence[GenerationRequest],
                        cancel: Sequence[threading.Event | None]) -> list[Generation]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        enc = self._encode(requests)
        first: list[float] = []

        class FirstTokenOrCancel(StoppingCriteria):  # notes the first token's time; ends cancelled rows
            def __call__(self, input_ids, scores, **kwargs):
                if not first:
                    first.append(time.perf_counter())
                return torch.tensor([cancelled(cancel, i) for i in range(input_ids.shape[0])],
                                    dtype=torch.bool, device=input_ids.device)

        longest = max(r.max_new_tokens for r in requests)
        t0 = time.perf_counter()
        context, extra = self._adapter_kwargs(requests)
        extra.update(self._processors(requests[0], enc["input_ids"].shape[1]))
        try:
            with torch.inference_mode(), context:
                ids = self.model.generate(**enc, generation_config=self._config(requests[0], longest), **extra,
                                          stopping_criteria=StoppingCriteriaList([FirstTokenOrCancel()]),
                                          tokenizer=self.tokenizer)
        except LoradexError:
            raise
        except Exception as e:  # PEFT's or torch's: an error of the engine, for the requests of this batch
            adapters = sorted({r.adapter or "base" for r in requests})
            raise EngineError.of(e, f" for a batch of {len(requests)} (adapters: {', '.join(adapters)})") from e
        t1 = time.perf_counter()
        t_first = first[0] if first else t1
        timings = {"prompt": (t_first - t0) * 1000, "generate": (t1 - t_first) * 1000}
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for row, r in enumerate(requests):
            new = ids[row, prompt_len:].tolist()[: r.max_new_tokens]
            ended = self.tokenizer.eos_token_id in new
            if ended:
                new = new[: new.index(self.tokenizer.eos_token_id)]
            while new and new[-1] == self.tokenizer.pad_token_id:
                new.pop()
            text, stopped = cut_at_stop(str(self.tokenizer.decode(new, skip_special_tokens=True)), r.stop)
            reason = "stop" if ended or stopped or len(new) < r.max_new_tokens else "length"
            reason = CANCELLED if cancelled(cancel, row) and not (ended or stopped) else reason
            results.append(Generation(text.strip(), int(enc["attention_mask"][row].sum()), len(new), reason, timings))
        return results

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None) -> Iterator[str]:
        """`Engine.stream`. Generation also stops when the reader closes the iterator before its end."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        left = threading.Event()  # set when this iterator ends, however it ends: nobody reads what comes next

        class Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return left.is_set() or (cancel is not None and cancel.is_set())

        enc = self._encode([request])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**enc, generation_config=self._config(request, request.max_new_tokens),
                      streamer=streamer, tokenizer=self.tokenizer, request=request,
                      stopping_criteria=StoppingCriteriaList([Cancel()]),
                      **self._processors(request, enc["input_ids"].shape[1]))
        errors: list[BaseException] = []
        thread = threading.Thread(target=self._generate_for_streamer, args=(errors,), kwargs=kwargs, daemon=True)
        thread.start()
        try:
            yield from self._pieces(streamer, request.stop, cancel)
        finally:
            left.set()
        thread.join()
        if errors:  # e.g. an adapter that was never loaded: fail as generate() does
            e = errors[0]
            raise EngineError.of(e, f" (adapter: {request.adapter or 'base'})") if isinstance(e, Exception) else e

    @staticmethod
    def _pieces(streamer: Iterator[str], stop: Sequence[str], cancel: threading.Event | None) -> Iterator[str]:
        """The streamer's text cut at the first stop string, holding back what could still become one."""
        hold = max((len(s) for s in stop), default=0)
        buffer = ""
        for piece in streamer:
            if cancel is not None and cancel.is_set():
                return
            buffer += piece
            text, stopped = cut_at_stop(buffer, stop)
            if stopped:
                yield text
                return
            if len(buffer) > hold:  # keep back what could still become a stop sequence
                yield buffer[: len(buffer) - hold]
                buffer = buffer[len(buffer) - hold:]
        if buffer:
            yield buffer

    def _generate_for_streamer(self, errors: list[BaseException], request: GenerationRequest, **kwargs) -> None:
        try:
            with self._lock:
                context, extra = self._adapter_kwargs([request])
                with self.torch.inference_mode(), context:
                    self.model.generate(**kwargs, **extra)
        except BaseException as e:  # noqa: BLE001 - handed to stream(), whose reader would otherwise wait forever
            errors.append(e)
            kwargs["streamer"].end()


def from_project(project: Project) -> LocalEngine:
    """The `local` entry of `loradex.backends.ENGINES`: the project's base model, its adapter limit."""
    return LocalEngine(project.base_model_dir, max_adapters=project.config.adapters.max_loaded)
