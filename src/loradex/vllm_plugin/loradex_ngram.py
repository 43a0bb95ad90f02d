"""n-gram blocking inside a vLLM server: the logits processor loradex's `vllm` engine asks for per request.

This file is imported by vLLM (`--logits-processors loradex_ngram:NoRepeatNgram`, this folder on PYTHONPATH),
in vLLM's own environment, so it imports vLLM and torch only, never loradex. A request turns it on with
`vllm_xargs: {"no_repeat_ngram": n}` (vLLM's `SamplingParams.extra_args`); it then bans every token that would
complete an n-gram already generated in that request's answer. The prompt does not count, as in
`loradex.engine.GenerationRequest.no_repeat_ngram` and the local engine, so both engines decode alike.
n-gram blocking as in Paulus et al., "A Deep Reinforced Model for Abstractive Summarization", ICLR 2018.

The rule itself, `banned`, lives beside this file in `ngram_rule.py` (plain Python): the transformers,
onnxruntime-genai and echo engines import it from there without importing vLLM, so the four engines cannot
drift apart.
"""
from __future__ import annotations

try:  # as loradex.vllm_plugin.loradex_ngram (loradex's tests), or as loradex_ngram with this folder on the path
    from .ngram_rule import banned
except ImportError:
    from ngram_rule import banned  # type: ignore[no-redef]

try:
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
except ImportError:  # imported outside vLLM (loradex's tests): the class is then a plain object
    AdapterLogitsProcessor = object

__all__ = ["KEY", "NoRepeatNgram", "banned"]

KEY = "no_repeat_ngram"


class NoRepeatNgram(AdapterLogitsProcessor):
    """vLLM v1 logits processor: per request, `extra_args["no_repeat_ngram"]` (0 or absent: off; n >= 2)."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        n = (sampling_params.extra_args or {}).get(KEY, 0)
        if not isinstance(n, int) or n == 1 or n < 0:
            raise ValueError(f"vllm_xargs.{KEY} must be 0 (off) or an integer of at least 2, not {n!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def new_req_logits_processor(self, params):
        n = (params.extra_args or {}).get(KEY, 0)
        if not n:
            return None

        def block(output_ids: list[int], logits):
            import torch  # vLLM's; loradex's own engines import this module without needing it

            ban = banned(output_ids, n)
            if ban:
                logits[torch.tensor(ban, dtype=torch.long, device=logits.device)] = -float("inf")
            return logits

        return block
