"""Training examples from JSONL: OpenAI chat `messages`, alpaca (`instruction`/`input`/`output`) or
`prompt`/`completion`, all normalised to chat messages ending with one assistant answer.

A malformed record stops the load with an error naming the file, the line and the field; nothing is
silently dropped (duplicates are reported back so the caller can say how many it removed).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

__all__ = ["DataError", "Example", "data_sha256", "encode_example", "encode_examples", "load_examples", "parse_record"]


@dataclass(frozen=True)
class Example:
    """One training example: chat turns ending with the assistant's answer, and its line in the source file."""

    messages: tuple[dict, ...]  # system/user/assistant turns; the last one is the assistant answer
    line: int

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


def _text(record: dict, field: str, where: str, *, required: bool = True) -> str:
    value = record.get(field, "" if not required else None)
    if value is None:
        raise DataError(f"{where}: missing field '{field}'")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, not {type(value).__name__}")
    return value


def _from_messages(record: dict, where: str) -> tuple[dict, ...]:
    msgs = record["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: messages[{i}].role must be system, user or assistant")
        out.append({"role": m["role"], "content": _text(m, "content", f"{where}: messages[{i}]")})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer")
    if not any(m["role"] == "user" for m in out):
        raise DataError(f"{where}: messages need a user turn")
    return tuple(out)


def parse_record(record: object, where: str) -> tuple[dict, ...]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    if "messages" in record:
        msgs = _from_messages(record, where)
    elif "instruction" in record:
        user = _text(record, "instruction", where)
        extra = _text(record, "input", where, required=False)
        msgs = ({"role": "user", "content": f"{user}\n\n{extra}" if extra.strip() else user},
                {"role": "assistant", "content": _text(record, "output", where)})
    elif "prompt" in record:
        msgs = ({"role": "user", "content": _text(record, "prompt", where)},
                {"role": "assistant", "content": _text(record, "completion", where)})
    else:
        raise DataError(f"{where}: unknown record format: expected 'messages', 'instruction'/'output' "
                        "or 'prompt'/'completion'")
    if not msgs[-1]["content"].strip():
        raise DataError(f"{where}: the answer is empty")
    return msgs


def load_examples(path: Path) -> tuple[list[Example], int]:
    """Examples from a JSONL file and how many exact duplicates were dropped."""
    if not path.is_file():
        raise DataError(f"{path}: training data not found")
    examples, seen, dupes = [], set(), 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        msgs = parse_record(record, where)
        key = json.dumps(msgs, sort_keys=True)
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        examples.append(Example(msgs, n))
    if not examples:
        raise DataError(f"{path}: no examples: the file is empty (one JSON object a line, each with `messages` "
                        "ending in the assistant's answer)")
    if len(examples) < 2:
        raise DataError(f"{path}: need at least 2 distinct examples (one is held out for evaluation)")
    return examples, dupes


def data_sha256(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.messages, sort_keys=True).encode())
    return h.hexdigest()


def encode_example(tokenizer, messages: tuple[dict, ...], system: str) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt, the answer's ids elsewhere) for one example, rendered with the
    serving chat template; `system` is used when the example has no system message of its own.
    Raises DataError when the template does not render the prompt as a prefix of the conversation."""
    msgs = list(messages) if messages[0]["role"] == "system" else [{"role": "system", "content": system}, *messages]
    prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise DataError("the base model's chat template does not render the prompt as a prefix of the full "
                        "conversation, so answer tokens cannot be told apart: use another base model")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt):].rstrip("\n"), add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def encode_examples(tokenizer, examples: list[Example], system: str, max_len: int) -> list[tuple[list[int], list[int]]]:
    """`encode_example` for each of `examples`. An example is never cut to fit: a prompt missing its system
    message or its first sources is not the prompt the adapter will be served (the adapters shipped before
    this check learned from such prompts and stopped reading source 1). Raises DataError naming the examples
    longer than `max_len` tokens, the longest, and what to change."""
    rows = [encode_example(tokenizer, e.messages, system) for e in examples]
    over = sorted(((len(ids), e.line) for (ids, _), e in zip(rows, examples) if len(ids) > max_len), reverse=True)
    if over:
        lines = ", ".join(str(line) for _, line in sorted(over, key=lambda x: x[1])[:10])
        raise DataError(f"{len(over)} of {len(examples)} training examples are longer than max_seq_len={max_len} "
                        f"tokens (the longest has {over[0][0]}; lines {lines}{', ...' if len(over) > 10 else ''}): "
                        f"raise --max-seq-len to at least {over[0][0]}, or shorten the prompts "
                        "(--context-k, answer.passage_chars) or the answers")
    return rows

