"""Fakes and helpers that ship with the package, so tests (the project's and its users') need no weights.

- `build_tiny_llama(folder)`: a randomly initialised two-layer Llama (never emitting special tokens) with a
  small byte-level BPE tokenizer and a ChatML chat template; it loads through the same path as a real model
  (LocalEngine, PEFT training and adapters) in a second.
- `build_random_adapter(model_dir, out)`: a random PEFT LoRA adapter for such a model, strong enough to
  change what it generates.
- `MemoryStore`: a Store in plain numpy (cosine and BM25), the reference backend of the Store contract suite.
- `ThreadedServer(app)`: an ASGI app served by uvicorn on a background thread, on a free loopback port.

The hashing embedder lives in `loradex.embed`, the echo engine in `loradex.engine.echo`.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Report a claim within 7 days. Theft must be reported to the police within 24 hours.",
    "Monthly premiums are paid by direct debit; the grace period is 14 days.",
    "You are a careful assistant. Answer the question using only the numbered sources [1] [2].",
    "Sources: <source 1 file=\"docs/a.md\"> text </source 1> Question: what is covered?",
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_llama(folder: str | Path, seed: int = 0) -> Path:
    """A random Llama (2 layers, hidden 64) and its tokenizer saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # never emit special tokens, so generations are visible text of the full budget
        model.lm_head.weight[tokenizer.all_special_ids] = 0.0
        model.lm_head.weight.mul_(20.0)  # sharp logits: greedy choices do not flip on float noise
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_random_adapter(model_dir: str | Path, out: str | Path, *, seed: int = 0, rank: int = 4,
                         scale: float = 50.0, target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A random LoRA adapter for `model_dir` in PEFT's format; `scale` makes it strong enough to change
    greedy output, so tests can tell adapters apart by what they generate."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)),
                           LoraConfig(r=rank, target_modules=list(target_modules), init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    model.save_pretrained(str(out))
    return Path(out)


class ThreadedServer:
    """`app` served by uvicorn on a background thread (tests, benchmarks, a notebook). Port 0 picks a free one;
    `url` is set once the server accepts connections; `stop()` shuts it down."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
