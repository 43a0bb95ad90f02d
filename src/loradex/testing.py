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

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .types import Chunk, Filters

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


_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    """Lower-cased word tokens (`\\w+`, unicode): what MemoryStore keyword-indexes and matches."""
    return _WORD.findall(text.lower())


def _visible(c: Chunk, f: Filters) -> bool:
    """`f` applied to one chunk, as `loradex.store.lancedb.where_clause` applies it in SQL."""
    m = c.meta
    return ((f.domain is None or m.domain == f.domain)
            and (not f.tags or bool(set(f.tags) & set(m.tags)))
            and (f.groups is None or not m.groups or bool(set(f.groups) & set(m.groups)))
            and (not f.doc_ids or c.doc_id in f.doc_ids)
            and (f.title is None or f.title.lower() in (m.title or "").lower()))


class MemoryStore:
    """A `loradex.store.Store` in plain Python and numpy, held in memory only: the reference backend of the
    Store contract suite (`tests/contract/test_store.py`) and a fast store for tests.

    `uri` is ignored and nothing persists (`persistent = False`), so `reset` has nothing to drop. Vectors are
    float32 of shape (n, `dim`); `search_vector` scores by cosine similarity in [-1, 1] (a zero vector scores
    0). `search_text` scores Okapi BM25 (k1=1.2, b=0.75) over the lower-cased `\\w+` words of
    `Chunk.search_text()`, each distinct query word counted once, with the Robertson/Sparck Jones IDF plus one
    inside the log as Lucene computes it, idf = ln(1 + (N - n + 0.5) / (n + 0.5)), over all N stored chunks
    (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", FnTIR 3(4), 2009;
    Lucene's `org.apache.lucene.search.similarities.BM25Similarity`), so scores are >= 0. Every method takes
    one lock: `replace` swaps all chunks of its documents at once, and readers search a consistent snapshot.
    Raises StoreError when vectors have another dimension than `dim` (or another count than the chunks).
    """

    persistent = False
    K1, B = 1.2, 0.75

    def __init__(self, uri: str | Path | None = None, dim: int = 256, *, reset: bool = False):
        self.dim = dim
        self._docs: dict[str, list[tuple[Chunk, np.ndarray, Counter]]] = {}  # doc_id -> rows, ordinal order
        self._lock = threading.Lock()

    def _rows(self) -> list[tuple[Chunk, np.ndarray, Counter]]:
        with self._lock:
            return [row for rows in self._docs.values() for row in rows]

    def replace(self, doc_ids: Sequence[str], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):
            raise StoreError(f"expected vectors of shape ({len(chunks)}, {self.dim}), got {vectors.shape}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.where(norms == 0, 1, norms)
        new: dict[str, list] = {}
        for c, v in zip(chunks, unit):
            new.setdefault(c.doc_id, []).append((c, v, Counter(_words(c.search_text()))))
        with self._lock:
            for d in doc_ids:
                self._docs.pop(d, None)
            for d, rows in new.items():
                self._docs[d] = sorted(rows, key=lambda r: r[0].ordinal)

    def delete(self, doc_ids: Sequence[str]) -> None:
        with self._lock:
            for d in doc_ids:
                self._docs.pop(d, None)

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise StoreError(f"the query vector has {q.shape[0]} dimensions, the index {self.dim}")
        q = q / (np.linalg.norm(q) or 1.0)
        rows = [r for r in self._rows() if _visible(r[0], filters)]
        scored = [(c, float(np.clip(v @ q, -1.0, 1.0))) for c, v, _ in rows]
        return sorted(scored, key=lambda p: (-p[1], p[0].chunk_id))[:k]

    def search_text(self, text: str, k: int, filters: Filters = Filters()) -> list[tuple[Chunk, float]]:
        terms, rows = set(_words(text)), self._rows()
        if not terms or not rows:
            return []
        n_docs = len(rows)
        avgdl = sum(sum(tf.values()) for _, _, tf in rows) / n_docs or 1.0
        idf = {t: math.log(1 + (n_docs - n + 0.5) / (n + 0.5))
               for t in terms for n in [sum(1 for _, _, tf in rows if t in tf)]}
        scored = []
        for c, _, tf in rows:
            if not _visible(c, filters) or not terms & tf.keys():
                continue
            norm = self.K1 * (1 - self.B + self.B * sum(tf.values()) / avgdl)
            scored.append((c, sum(idf[t] * tf[t] * (self.K1 + 1) / (tf[t] + norm) for t in terms if t in tf)))
        return sorted(scored, key=lambda p: (-p[1], p[0].chunk_id))[:k]

    def chunks(self, doc_id: str) -> list[Chunk]:
        with self._lock:
            return [c for c, _, _ in self._docs.get(doc_id, [])]

    def export(self, doc_id: str) -> tuple[list[Chunk], np.ndarray]:
        with self._lock:
            rows = list(self._docs.get(doc_id, []))
        vectors = np.stack([v for _, v, _ in rows]) if rows else np.zeros((0, self.dim), np.float32)
        return [c for c, _, _ in rows], vectors.astype(np.float32)

    def count(self) -> int:
        with self._lock:
            return sum(len(rows) for rows in self._docs.values())

    def build_indexes(self) -> None:
        """Nothing to build: every search scans the chunks."""


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
