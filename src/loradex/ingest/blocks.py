"""Line-oriented block scanning for Markdown and plain text, with character offsets into the raw text.

A block is a heading, a paragraph, one list item (with its continuation lines), a whole table or a
whole fenced code block. Spans index the file's own text, so a citation can quote the file exactly.
"""
from __future__ import annotations

import re

from ..types import Block

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LIST_ITEM = re.compile(r"^\s{0,3}(?:[-*+\u2022]|\d{1,3}[.)])\s+\S")
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


def heading_like(line: str) -> bool:
    """A line of plain or extracted text reads as a title: at most 70 characters and 10 words, no closing
    punctuation, not a list item. The one rule for text, PDF and HTML-less formats."""
    s = line.strip()
    return 0 < len(s) <= 70 and len(s.split()) <= 10 and s[-1] not in ".,;:!?)" and not LIST_ITEM.match(s)


class BlockBuilder:
    def __init__(self, page: int | None):
        self.blocks: list[Block] = []
        self.path: list[tuple[int, str]] = []
        self.page = page

    def plain_level(self, line: str) -> int:
        """The level of a heading found in plain text, which marks none: the document's first heading and any
        line in capitals are titles (1), the rest sections (2), so a section keeps its document's title in
        its heading path."""
        return 1 if not self.path or line.isupper() else 2

    def heading(self, level: int, title: str, start: int, end: int) -> None:
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, title)]
        self.add("heading", start, end, level)

    def add(self, kind: str, start: int, end: int, level: int = 0) -> None:
        if end > start:
            self.blocks.append(Block(kind, start, end, tuple(t for _, t in self.path), self.page, level))


def scan(text: str, *, markdown: bool, offset: int = 0, page: int | None = None,
         builder: BlockBuilder | None = None) -> list[Block]:
    """Blocks of `text`; offsets are shifted by `offset` (for texts embedded in a larger document)."""
    blocks = builder or BlockBuilder(page)
    blocks.page = page
    lines = _lines(text)
    i = 0
    while i < len(lines):
        s, e, line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence_match = _FENCE.match(line) if markdown else None
        if fence_match:
            fence = fence_match.group(1)
            j = i + 1
            while j < len(lines) and not lines[j][2].lstrip().startswith(fence):
                j += 1
            j = min(j, len(lines) - 1)
            blocks.add("code", offset + s, offset + lines[j][1])
            i = j + 1
            continue
        m = _HEADING.match(line) if markdown else None
        if m:
            blocks.heading(len(m.group(1)), m.group(2), offset + s, offset + e)
            i += 1
            continue
        if _TABLE.match(line):
            j = i
            while j + 1 < len(lines) and _TABLE.match(lines[j + 1][2]):
                j += 1
            blocks.add("table", offset + s, offset + lines[j][1])
            i = j + 1
            continue
        if LIST_ITEM.match(line):
            j = i
            while j + 1 < len(lines):
                nxt = lines[j + 1][2]
                if not nxt.strip() or LIST_ITEM.match(nxt) or _TABLE.match(nxt) or (markdown and _HEADING.match(nxt)):
                    break
                j += 1
            blocks.add("list_item", offset + s, offset + lines[j][1])
            i = j + 1
            continue
        j = i
        while j + 1 < len(lines):
            nxt = lines[j + 1][2]
            if (not nxt.strip() or LIST_ITEM.match(nxt) or _TABLE.match(nxt)
                    or (markdown and (_HEADING.match(nxt) or _FENCE.match(nxt)))):
                break
            j += 1
        if not markdown and j == i and heading_like(line):
            blocks.heading(blocks.plain_level(line), line.strip(), offset + s + (len(line) - len(line.lstrip())),
                           offset + e)
        else:
            blocks.add("paragraph", offset + s + (len(line) - len(line.lstrip())), offset + lines[j][1])
        i = j + 1
    return blocks.blocks
