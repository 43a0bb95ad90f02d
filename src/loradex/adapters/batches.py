"""Training batches and their loss: padded tensors of encoded examples, the held-out loss, and the weighted loss
that makes an answer's label count more than its other tokens.

Why weight the label. A domain layout often carries a judgement in one token (`Covered: YES|NO|PARTLY`,
`Escalation: YES|NO`) among about 80 answer tokens that are mostly copied from the sources. With every token
weighted the same, the shipped policy adapter learned the layout and the copying but not the verdict: scored on
its own 87 training examples it gave NO (P 0.5 to 0.77) to every one, 33 of which are YES. `label_weight` w
multiplies the loss of the label's tokens (the first group of the domain format's `label` regular expression);
the loss is the weighted mean, sum(w_t * CE_t) / sum(w_t) over the answer tokens, so w = 1 is the usual mean
cross-entropy. Held-out loss stays unweighted, so runs with different w compare.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Row", "batches", "eval_loss", "label_token_weights", "weighted_loss"]

Row = tuple  # (ids, labels) or (ids, labels, weights): token ids, labels (-100 on the prompt), loss weights


def label_token_weights(tokenizer, ids: Sequence[int], labels: Sequence[int], pattern: str,
                        weight: float) -> list[float]:
    """Loss weights for one encoded example (`loradex.adapters.data.encode_example`): 0 on the prompt, `weight`
    on the answer tokens that overlap the first group of `pattern` (`re.MULTILINE`, searched in the answer's
    text) and 1 on the other answer tokens. All 1 on the answer when `pattern` does not match it."""
    start = next((i for i, y in enumerate(labels) if y != -100), len(labels))
    answer_ids = list(ids[start:])
    text = tokenizer.decode(answer_ids)
    m = re.search(pattern, text, re.MULTILINE)
    out = [0.0] * start + [1.0] * len(answer_ids)
    if m is None or m.lastindex is None:
        return out
    lo, hi = m.span(1)
    pos = 0
    for i in range(len(answer_ids)):  # each token's span in the decoded text: between two prefixes' lengths
        end = len(tokenizer.decode(answer_ids[: i + 1]))
        if pos < hi and end > lo:
            out[start + i] = weight
        pos = end
    return out


def batches(rows: Sequence[Row], size: int, pad: int, torch, device: Any = "cpu") -> Iterator[tuple]:
    """(ids, labels, attention mask, weights or None) tensors of `size` rows at a time, right-padded."""
    for s in range(0, len(rows), size):
        chunk = rows[s : s + size]
        width = max(len(r[0]) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        weighted = all(len(r) == 3 for r in chunk)
        weights = torch.zeros((len(chunk), width), dtype=torch.float32) if weighted else None
        for i, r in enumerate(chunk):
            x, y = r[0], r[1]
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
            if weights is not None:
                weights[i, : len(r[2])] = torch.tensor(r[2])
        yield ids.to(device), labels.to(device), mask.to(device), None if weights is None else weights.to(device)


def weighted_loss(logits, labels, weights, torch):
    """sum(w_t * CE_t) / sum(w_t) over the labelled positions; `logits` (batch, length, vocabulary) predict
    `labels` (batch, length) shifted by one, as transformers' causal LM loss does. Equals that loss when every
    weight is 1."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    w = weights[:, 1:] * (shift_labels != -100)
    ce = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                           shift_labels.reshape(-1), ignore_index=-100, reduction="none")
    return (ce * w.reshape(-1)).sum() / w.sum().clamp(min=1e-8)


def eval_loss(model, rows: Sequence[Row], batch_size: int, pad: int, torch) -> float:
    """Mean cross-entropy per answer token over `rows` (unweighted, whatever their weights)."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ids, labels, mask, _ in batches(rows, batch_size, pad, torch, next(model.parameters()).device):
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)
