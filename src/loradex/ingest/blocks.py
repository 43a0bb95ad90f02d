"""Blocks with character offsets: the heading-path bookkeeping every parser shares, plain text's line scanner,
and `assemble`, which turns the pieces an HTML, PDF or DOCX parser extracted into one normalised document text.

A block is a heading, a paragraph, one list item (with its continuation lines), a whole table or a whole code
block; its span indexes the document's text, which is the normalised text (`loradex.ingest.normalize`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..types import Block, ParsedDocument
from .normalize import join_lines, normalize, vocabulary

LIST_ITEM = re.compile(r"^\s{0,3}(?:[-*+\u2022]|\d{1,3}[.)])\s+\S")
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
    """A line that reads as a title: at most 70 characters and 10 words, no closing punctuation, not a list
    item. Applied to a block that stands alone (a one-line paragraph), never to the lines of a paragraph."""
    s = line.strip()
    return 0 < len(s) <= 70 and len(s.split()) <= 10 and s[-1] not in ".,;:!?)" and not LIST_ITEM.match(s)


class BlockBuilder:
    """Collects blocks in reading order and keeps the heading path above each."""

    def __init__(self, page: int | None = None):
        self.blocks: list[Block] = []
        self.path: list[tuple[int, str]] = []
        self.page = page

    def plain_level(self, line: str) -> int:
        """The level of a heading found in text that marks none: the document's first heading and any line in
        capitals are titles (1), the rest sections (2), so a section keeps its document's title in its path."""
        return 1 if not self.path or line.isupper() else 2

    def heading(self, level: int, title: str, start: int, end: int) -> None:
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, title)]
        self.add("heading", start, end, level)

    def add(self, kind: str, start: int, end: int, level: int = 0) -> None:
        if end > start:
            self.blocks.append(Block(kind, start, end, tuple(t for _, t in self.path), self.page, level))


def scan(text: str) -> list[Block]:
    """Blocks of plain text: blank lines separate blocks; a line starting with `|` starts a table, a bullet or
    number a list item; a block of one line that reads as a title (`heading_like`) is a heading."""
    blocks = BlockBuilder()
    lines = _lines(text)
    i = 0
    while i < len(lines):
        s, e, line = lines[i]
        if not line.strip():
            i += 1
            continue
        if _TABLE.match(line) or LIST_ITEM.match(line):
            table = bool(_TABLE.match(line))
            j = i
            while j + 1 < len(lines):
                nxt = lines[j + 1][2]
                if not nxt.strip() or (bool(_TABLE.match(nxt)) != table) or (not table and LIST_ITEM.match(nxt)):
                    break
                j += 1
            blocks.add("table" if table else "list_item", s, lines[j][1])
            i = j + 1
            continue
        j = i
        while j + 1 < len(lines):
            nxt = lines[j + 1][2]
            if not nxt.strip() or LIST_ITEM.match(nxt) or _TABLE.match(nxt):
                break
            j += 1
        indent = len(line) - len(line.lstrip())
        if j == i and heading_like(line):
            blocks.heading(blocks.plain_level(line), line.strip(), s + indent, e)
        else:
            blocks.add("paragraph", s + indent, lines[j][1])
        i = j + 1
    return blocks.blocks


@dataclass(frozen=True)
class Piece:
    """A unit a parser extracted, before normalisation. Prose (heading, paragraph, list_item): newlines are
    soft wraps and `HARD_BREAK` marks the author's line breaks; table and code: every newline is kept.
    `level` is a heading's level (1 = top)."""

    kind: str
    text: str
    page: int | None = None
    level: int = 0


def _render(piece: Piece, vocab: set[str]) -> str:
    if piece.kind in ("table", "code"):
        lines = normalize(piece.text).split("\n")
        if piece.kind == "table":
            lines = [" ".join(line.split()) for line in lines]
        return "\n".join(line for line in lines if line.strip()).strip("\n")
    text = join_lines(normalize(piece.text), vocab)
    return " ".join(text.split()) if piece.kind == "heading" else text


def assemble(pieces: Iterable[Piece], fmt: str, *, pages: int | None = None, metadata: dict | None = None,
             unread: Iterable[str] = ()) -> ParsedDocument:
    """One document from extracted pieces: each normalised (`loradex.ingest.normalize`; the words the document
    writes whole decide its hyphen-broken ones), empty ones dropped, the rest joined by blank lines, each a
    block whose span indexes the joined text."""
    pieces = list(pieces)
    vocab = vocabulary(normalize(p.text) for p in pieces)
    builder = BlockBuilder()
    parts: list[str] = []
    pos = 0
    for piece in pieces:
        text = _render(piece, vocab)
        if not text:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(text)
        builder.page = piece.page
        if piece.kind == "heading":
            builder.heading(piece.level, text, pos, pos + len(text))
        else:
            builder.add(piece.kind, pos, pos + len(text))
        pos += len(text)
    return ParsedDocument("".join(parts), tuple(builder.blocks), fmt, pages, dict(metadata or {}), tuple(unread))
