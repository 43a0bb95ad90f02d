"""Structure-aware chunking: blocks -> token-bounded spans of the document text.

Rules: a heading starts a new chunk (the chunk begins with its heading); blocks are packed whole
while the token bound holds; a chunk does not cross a page. A table or list item is never cut;
only a single block that alone exceeds the bound is split, a table between rows, prose between
sentences (and a sentence longer than the bound between words, a word longer than it between characters).
Every chunk is a contiguous span: `chunk.text == document.text[start:end]`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..types import Block, ParsedDocument

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CHARS_PER_TOKEN = 10  # a text counts as at least len/10 tokens, whatever the tokenizer says


@dataclass(frozen=True)
class Span:
    """A chunk as a character span of the document's text, with the heading path and page it starts under."""

    start: int
    end: int
    heading_path: tuple[str, ...]
    page: int | None


def _pieces(text: str, start: int, end: int, kind: str) -> list[tuple[int, int]]:
    """Split points of one oversized block: table rows, sentences, or words."""
    body = text[start:end]
    if kind == "table":
        pattern = re.compile(r"\n")
    else:
        pattern = _SENTENCE_END
    cuts, pos = [], 0
    for m in pattern.finditer(body):
        cuts.append((start + pos, start + m.start()))
        pos = m.end()
    cuts.append((start + pos, end))
    return [(s, e) for s, e in cuts if e > s]


def _words(text: str, start: int, end: int, count: Callable[[str], int], limit: int) -> list[tuple[int, int]]:
    """The words of `text[start:end]`; a word over `limit` tokens (a long line with no whitespace) is cut into
    pieces within it."""
    out: list[tuple[int, int]] = []
    for m in re.finditer(r"\S+", text[start:end]):
        s, e = start + m.start(), start + m.end()
        out.extend([(s, e)] if count(text[s:e]) <= limit else _cut(text, s, e, count, limit))
    return out


def _cut(text: str, start: int, end: int, count: Callable[[str], int], limit: int) -> list[tuple[int, int]]:
    """Cut one whitespace-free run into consecutive pieces within `limit` tokens: first by characters, then
    halving any piece the tokenizer still counts over the bound."""
    step = limit * CHARS_PER_TOKEN
    todo = [(s, min(s + step, end)) for s in range(start, end, step)][::-1]
    out: list[tuple[int, int]] = []
    while todo:
        s, e = todo.pop()
        if e - s > 1 and count(text[s:e]) > limit:
            mid = (s + e) // 2
            todo += [(mid, e), (s, mid)]
        else:
            out.append((s, e))
    return out


def _split_block(text: str, block: Block, count: Callable[[str], int], limit: int) -> list[tuple[int, int]]:
    """An oversized block -> consecutive spans each within `limit` tokens."""
    out: list[tuple[int, int]] = []
    for s, e in _pieces(text, block.start, block.end, block.kind):
        if count(text[s:e]) <= limit:
            out.append((s, e))
        else:
            out.extend(_pack(text, _words(text, s, e, count, limit), count, limit))
    return _pack(text, out, count, limit)


def _bounded(count: Callable[[str], int]) -> Callable[[str], int]:
    """`count`, but never under len/CHARS_PER_TOKEN: a tokenizer that maps a 50 MB word to one unknown token
    (WordPiece does, past 100 characters) or counts words must not let it into one chunk."""
    return lambda t: max(count(t), -(-len(t) // CHARS_PER_TOKEN))


def _pack(text: str, spans: list[tuple[int, int]], count: Callable[[str], int], limit: int) -> list[tuple[int, int]]:
    """Greedily merge consecutive spans while the merged text stays within `limit` tokens and, whitespace
    between them included, `limit * CHARS_PER_TOKEN` characters (300 nested list levels are mostly indent)."""
    out: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    cur_tokens = 0
    for s, e in spans:
        n = count(text[s:e])
        if cur is not None and cur_tokens + n <= limit and e - cur[0] <= limit * CHARS_PER_TOKEN:
            cur, cur_tokens = (cur[0], e), cur_tokens + n
        else:
            if cur is not None:
                out.append(cur)
            cur, cur_tokens = (s, e), n
    if cur is not None:
        out.append(cur)
    return out


def chunk_document(doc: ParsedDocument, count: Callable[[str], int], max_tokens: int) -> list[Span]:
    """The document's chunks as spans of `doc.text`, in order, by the rules of the module docstring.

    `max_tokens` bounds a chunk as counted by `count` (the embedder's token counter, additive over
    whitespace-joined pieces), and a chunk holds at most `max_tokens * CHARS_PER_TOKEN` characters: text with
    no whitespace is cut between characters."""
    count = _bounded(count)
    spans: list[Span] = []
    group: list[Block] = []
    tokens = 0

    def flush() -> None:
        nonlocal group, tokens
        if group:
            first = group[0]
            spans.append(Span(first.start, group[-1].end, first.heading_path, first.page))
        group, tokens = [], 0

    for block in doc.blocks:
        n = count(doc.text[block.start : block.end])
        if block.kind == "heading" or (group and block.page != group[0].page):
            flush()
        if n > max_tokens:
            flush()
            for s, e in _split_block(doc.text, block, count, max_tokens):
                spans.append(Span(s, e, block.heading_path, block.page))
            continue
        if group and (tokens + n > max_tokens or block.end - group[0].start > max_tokens * CHARS_PER_TOKEN):
            flush()  # over the token bound, or a span over the character bound (text between blocks that no
            # block holds, such as a 1 MB thematic break of `*`, is still inside the span)
        group.append(block)
        tokens += n
    flush()
    return spans
