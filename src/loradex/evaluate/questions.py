"""Evaluation questions from JSONL, validated before any model runs.

One JSON object a line: `question` (required), and any of `id`, `answer` (a reference text or span) or
`answers` (several acceptable), `label` (for classification-style answers), `gold_docs` / `gold_chunks`
(document and chunk ids that answer it), `domain`, `answerable` (false: the documents do not answer it, and
"not covered" is the right answer), `format` (the name of a format check in loradex.yaml). Every malformed line
is reported as `file:line: field: problem`, all of them at once.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import DataError

__all__ = ["Question", "draw", "load_questions"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    question: str = Field(..., min_length=1)
    answer: str | None = None
    answers: list[str] = Field(default_factory=list)
    label: str | None = None
    gold_docs: list[str] = Field(default_factory=list)
    gold_chunks: list[str] = Field(default_factory=list)
    domain: str | None = None
    answerable: bool = True
    format: str | None = None


@dataclass(frozen=True)
class Question:
    """One evaluation question; `answers` holds every acceptable reference (`answer` and `answers` together)."""

    id: str
    question: str
    answers: tuple[str, ...] = ()
    label: str | None = None
    gold_docs: tuple[str, ...] = ()
    gold_chunks: tuple[str, ...] = ()
    domain: str | None = None
    answerable: bool = True
    format: str | None = None


def _question(record: _Record, line: int) -> Question:
    answers = tuple(dict.fromkeys(([record.answer] if record.answer else []) + record.answers))
    return Question(record.id or f"line{line}", record.question.strip(), answers, record.label,
                    tuple(record.gold_docs), tuple(record.gold_chunks), record.domain, record.answerable,
                    record.format)


def load_questions(path: Path, *, domains: set[str] | None = None, formats: set[str] | None = None) -> list[Question]:
    """The questions of a JSONL file, in order. `domains` and `formats`, when given, are the names a question
    may use. Raises DataError listing every bad line as `file:line: field: problem`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file of evaluation questions")
    out, problems, ids = [], [], set()
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            q = _question(_Record.model_validate(json.loads(raw)), n)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        except ValidationError as e:
            problems += [f"{where}: {'.'.join(map(str, err['loc'])) or 'line'}: {err['msg']}" for err in e.errors()]
            continue
        if domains is not None and q.domain is not None and q.domain not in domains:
            problems.append(f"{where}: domain: {q.domain!r} is not a domain of the project")
        if formats is not None and q.format is not None and q.format not in formats:
            problems.append(f"{where}: format: no format check named {q.format!r} in loradex.yaml")
        if q.id in ids:
            problems.append(f"{where}: id: {q.id!r} is used twice")
        ids.add(q.id)
        out.append(q)
    if problems:
        raise DataError("malformed evaluation questions:\n" + "\n".join(problems))
    if not out:
        raise DataError(f"{path}: no questions")
    return out


def draw(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    """`limit` of `questions` drawn with `seed`, in file order; all of them when `limit` is None or not smaller."""
    if limit is None or limit >= len(questions):
        return questions
    keep = set(random.Random(seed).sample(range(len(questions)), limit))
    return [q for i, q in enumerate(questions) if i in keep]
