"""Removing sentences from a laid-out answer, line by line, keeping its layout.

Training with served sources (`loradex.adapters.context.trim_to_sources`) removes the reference sentences its
sources do not support, and serving with `answer.unsupported: drop` removes the sentences of a generated
answer the citation check could not support (`loradex.pipeline.complete`). Both go through `remove_sentences`,
so the layout rules are one: a labelled line ("Limits: ...") left empty reads "Limits: none stated.", any
other empty line goes, and numbered steps are numbered 1, 2, ... again.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from .cite import CITATION, sentences

__all__ = ["NONE_STATED", "Trimmed", "remove_sentences"]

NONE_STATED = "none stated."
_LINE_HEAD = re.compile(r"^(\s*(?:[A-Z][A-Za-z]*(?: [A-Za-z]+){0,2}:|\d+\.)\s*)(.*)$")  # "Limits: ", "2. "
_STEP = re.compile(r"^(\s*)\d+\.(\s)")


class Trimmed(NamedTuple):
    text: str
    removed: list[str]  # the claims taken out
    kept: list[str]  # the claims left, outside the lines `keep` protects
    first_emptied: bool  # the first line lost all its sentences


def remove_sentences(text: str, drop: Callable[[str], bool], keep: str | None = None) -> Trimmed:
    """`text` without the sentences for which `drop(claim)` is true (`claim`: the sentence without its
    citation markers and its line's label), with the claims removed and kept, and whether the first line lost
    all its sentences. Lines matching the regular expression `keep` (a format's label line) are never touched."""
    lines: list[str] = []
    removed: list[str] = []
    kept_claims: list[str] = []
    first_emptied = False
    for i, line in enumerate(text.splitlines()):
        m = _LINE_HEAD.match(line)
        head, body = (m.group(1), m.group(2)) if m else ("", line)
        if keep and re.search(keep, line) or not body.strip():
            lines.append(line)
            continue
        kept = []
        for sent in sentences(body):
            claim = CITATION.sub("", sent).strip()
            if drop(claim):
                removed.append(claim)
            else:
                kept.append(sent)
                kept_claims.append(claim)
        first_emptied |= i == 0 and not kept
        if kept or head.rstrip().endswith(":"):
            lines.append(head + (" ".join(kept) if kept else NONE_STATED))
    return Trimmed(_renumbered(lines), removed, kept_claims, first_emptied)


def _renumbered(lines: list[str]) -> str:
    """The lines with each run of numbered steps numbered 1, 2, ... again."""
    out, n = [], 0
    for line in lines:
        m = _STEP.match(line)
        n = n + 1 if m else 0
        out.append(f"{m.group(1)}{n}.{line[m.end(1):].split('.', 1)[1]}" if m else line)
    return "\n".join(out)
