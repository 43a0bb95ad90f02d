"""The local engine: transformers on this machine (CPU, or a GPU when present).

Requests sharing sampling settings and stop sequences are generated as one left-padded batch.
Timings split prompt processing (to the first new token) from the rest of generation.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from . import Generation, GenerationRequest, cut_at_stop


class LocalEngine:
    def __init__(self, model_dir: str | Path, *, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.name = Path(model_dir).name
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device).eval()
        if not self.tokenizer.chat_template:
            raise ValueError(f"{model_dir} has no chat template; loradex needs an instruction-tuned chat model")

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT LoRA adapter under `name` (the base weights stay shared and unchanged)."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()

    def _using(self, adapter: str | None):
        """Context manager selecting an adapter, or disabling all of them for the bare base."""
        from contextlib import nullcontext

        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            if adapter is not None:
                raise ValueError(f"adapter {adapter!r} is not loaded")
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        if adapter not in self.model.peft_config:
            raise ValueError(f"adapter {adapter!r} is not loaded")
        self.model.set_adapter(adapter)
        return nullcontext()

    def prompt(self, messages: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def _config(self, request: GenerationRequest, max_new_tokens: int):
        from transformers import GenerationConfig

        sample = request.temperature > 0
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample,
                                temperature=request.temperature if sample else None, top_p=None, top_k=None,
                                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                stop_strings=list(request.stop) or None)

    def _encode(self, requests: Sequence[GenerationRequest]):
        texts = [self.prompt(r.messages) for r in requests]
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.stop, r.adapter), []).append(i)
        out: list[Generation | None] = [None] * len(requests)
        for idx in groups.values():
            for i, g in zip(idx, self._generate_batch([requests[i] for i in idx])):
                out[i] = g
        return out  # type: ignore[return-value]

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        enc = self._encode(requests)
        first: list[float] = []

        class FirstToken(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                if not first:
                    first.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        longest = max(r.max_new_tokens for r in requests)
        t0 = time.perf_counter()
        with torch.inference_mode(), self._using(requests[0].adapter):
            ids = self.model.generate(**enc, generation_config=self._config(requests[0], longest),
                                      stopping_criteria=StoppingCriteriaList([FirstToken()]), tokenizer=self.tokenizer)
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
            text, stopped = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), r.stop)
            reason = "stop" if ended or stopped or len(new) < r.max_new_tokens else "length"
            results.append(Generation(text.strip(), int(enc["attention_mask"][row].sum()), len(new), reason, timings))
        return results

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        enc = self._encode([request])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**enc, generation_config=self._config(request, request.max_new_tokens),
                      streamer=streamer, tokenizer=self.tokenizer, adapter=request.adapter)
        thread = threading.Thread(target=self._generate_quietly, kwargs=kwargs, daemon=True)
        thread.start()
        hold = max((len(s) for s in request.stop), default=0)
        buffer = ""
        for piece in streamer:
            buffer += piece
            text, stopped = cut_at_stop(buffer, request.stop)
            if stopped:
                yield text
                break
            if len(buffer) > hold:  # keep back what could still become a stop sequence
                yield buffer[: len(buffer) - hold]
                buffer = buffer[len(buffer) - hold:]
        else:
            if buffer:
                yield buffer
        thread.join()

    def _generate_quietly(self, adapter: str | None = None, **kwargs) -> None:
        with self.torch.inference_mode(), self._using(adapter):
            self.model.generate(**kwargs)
