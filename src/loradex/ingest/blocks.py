"""Line-oriented block scanning for Markdown and plain text, with character offsets into the raw text.

A block is a heading, a paragraph, one list item (with its continuation lines), a whole table or a
whole fenced code block. Spans index the file's own text, so a citation can quote the file exactly.
"""
from __future__ import annotations

import re

from ..types import Block

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST = re.compile(r"^\s{0,3}(?:[-*+]|\d{1,3}[.)])\s+\S")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_TABLE = re.compile(r"^\s*\|")


def _lines(text: str) -> list[tuple[int, int, str]]:
    """(start, end, line) for each line; end excludes the newline."""
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        out.append((pos, pos + len(body), body))
        pos += len(line)
    return out


def _plain_heading(line: str, alone: bool) -> bool:
    """A plain-text line reads as a heading: short, alone in its paragraph, no closing punctuation."""
    s = line.strip()
    return alone and 0 < len(s) <= 70 and s[-1] not in ".,;:!?)" and not _LIST.match(line) and len(s.split()) <= 10


class _Builder:
    def __init__(self, page: int | None):
        self.blocks: list[Block] = []
        self.path: list[tuple[int, str]] = []
        self.page = page

    def heading(self, level: int, title: str, start: int, end: int) -> None:
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, title)]
        self.add("heading", start, end, level)

    def add(self, kind: str, start: int, end: int, level: int = 0) -> None:
        if end > start:
            self.blocks.append(Block(kind, start, end, tuple(t for _, t in self.path), self.page, level))


def scan(text: str, *, markdown: bool, offset: int = 0, page: int | None = None,
         builder: _Builder | None = None) -> list[Block]:
    """Blocks of `text`; offsets are shifted by `offset` (for texts embedded in a larger document)."""
    b = builder or _Builder(page)
    b.page = page
    lines = _lines(text)
    i = 0
    while i < len(lines):
        s, e, line = lines[i]
        if not line.strip():
            i += 1
            continue
        if markdown and _FENCE.match(line):
            fence = _FENCE.match(line).group(1)
            j = i + 1
            while j < len(lines) and not lines[j][2].lstrip().startswith(fence):
                j += 1
            j = min(j, len(lines) - 1)
            b.add("code", offset + s, offset + lines[j][1])
            i = j + 1
            continue
        m = _HEADING.match(line) if markdown else None
        if m:
            b.heading(len(m.group(1)), m.group(2), offset + s, offset + e)
            i += 1
            continue
        if _TABLE.match(line):
            j = i
            while j + 1 < len(lines) and _TABLE.match(lines[j + 1][2]):
                j += 1
            b.add("table", offset + s, offset + lines[j][1])
            i = j + 1
            continue
        if _LIST.match(line):
            j = i
            while j + 1 < len(lines):
                nxt = lines[j + 1][2]
                if not nxt.strip() or _LIST.match(nxt) or _TABLE.match(nxt) or (markdown and _HEADING.match(nxt)):
                    break
                j += 1
            b.add("list_item", offset + s, offset + lines[j][1])
            i = j + 1
            continue
        j = i
        while j + 1 < len(lines):
            nxt = lines[j + 1][2]
            if not nxt.strip() or _LIST.match(nxt) or _TABLE.match(nxt) or (markdown and (_HEADING.match(nxt) or _FENCE.match(nxt))):
                break
            j += 1
        if not markdown and j == i and _plain_heading(line, alone=True):
            b.heading(1, line.strip(), offset + s + (len(line) - len(line.lstrip())), offset + e)
        else:
            b.add("paragraph", offset + s + (len(line) - len(line.lstrip())), offset + lines[j][1])
        i = j + 1
    return b.blocks
