"""The starter `loradex.yaml` that `loradex init` writes: every field with its default and a comment."""
from __future__ import annotations

from .config import NO_REPEAT_NGRAM, WINDOW

__all__ = ["STARTER", "starter_text"]

STARTER = """\
# loradex project file. Every field is optional; the values shown are the defaults.
name: {name}

# Embedder: 'all-minilm-l6-v2' (packaged, offline), 'hashing' (tests), or a local Hugging Face folder.
embedder: all-minilm-l6-v2

# Base model: 'smollm2-135m' (packaged, offline), a local Hugging Face folder, or a .gguf file.
model: smollm2-135m

# What `loradex ingest` reads when given no path (folders are walked; .md .txt .html .pdf .docx).
sources: [docs]

chunking:
  max_tokens: 220          # chunk upper bound in embedder tokens; tables and list items are never cut

retrieval:
  k: 5                     # hits returned
  mode: hybrid             # hybrid | dense | bm25
  candidates: 50           # hits each retriever contributes before fusion
  rrf_k: 60                # reciprocal rank fusion: weight / (rrf_k + rank)
  dense_weight: 1.0
  bm25_weight: 1.0

answer:
  k: 4                     # passages given to the model as numbered sources
  window: {window}                # neighbouring chunks added on each side of a retrieved one
  passage_chars: 1600      # longest passage given to the model
  max_new_tokens: 160
  temperature: 0.0         # greedy
  no_repeat_ngram: {no_repeat}      # no n tokens in a row twice in an answer (0: off)
  attribute: true          # cite uncited sentences that a source supports (marked 'added')
  search_support: 3        # search the documents for up to 3 sentences no prompt source supports (0: off)
  min_dense_score: 0.3     # abstain when no passage is at least this similar to the question
  unsupported: flag        # a sentence no source supports: flag (shown, marked) or drop (removed from the answer)

store:
  backend: lancedb         # embedded, no server

# Domains: each document belongs to the first domain whose paths match it.
domains: {{}}
#  claims:
#    description: Reporting and settling claims
#    paths: ["docs/claims/**"]
#    groups: []            # access groups; empty = everyone
#    examples: ["My car was stolen last night, what do I do?"]   # queries the router learns from
#    examples_file: routing/claims.txt                          # or one query a line

# The router: picks a domain (its adapter and its sources) per query, or abstains to the base model.
routing:
  method: linear+nearest   # linear+nearest | linear | centroid | nearest
  target_recall: 0.95      # example queries (scored leave-one-out) that must pass the out-of-scope threshold
  min_probability: 0.0     # abstain as ambiguous under this calibrated probability (0: never)
  negatives: true          # loradex's general off-topic queries help tell off-topic queries apart
#  negatives_file: routing/off-topic.txt   # and your own, one a line
  documents: true          # the domains' passages and descriptions widen what counts as in scope

adapters:
  max_loaded: 4            # adapters kept on the base model at once (least recently used unloaded)

# Extra tags and access groups by path glob.
metadata: []
#  - paths: ["docs/**/*motor*"]
#    tags: [motor]
"""


def starter_text(name: str) -> str:
    return STARTER.format(name=name, no_repeat=NO_REPEAT_NGRAM, window=WINDOW)
