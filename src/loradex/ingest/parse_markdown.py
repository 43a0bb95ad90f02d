"""Markdown: front matter as metadata, and blocks found by a CommonMark parser (markdown-it-py), with spans.

The document's text is the file's text after the front matter, normalised (`loradex.ingest.normalize`): spans
index it, so a citation quotes what was indexed. Every CommonMark heading form is a heading (ATX with or
without closing #s, setext `===` and `---`, up to three spaces of indent); GitHub tables are tables; a top-level
list item (with its nested lists) is one block; a block quote is one paragraph. Headings inside list items
or quotes stay part of them. Link reference definitions and thematic breaks carry no text and make no block.
"""
from __future__ import annotations

import datetime
import re
import tomllib
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from ..types import ParsedDocument
from .blocks import BlockBuilder
from .normalize import HARD_BREAK, dehyphenate, normalize, vocabulary

__all__ = ["front_matter", "parse_markdown"]

_FENCES = {"---": ("---", "..."), "+++": ("+++",)}  # YAML (Jekyll, Hugo, Pandoc) and TOML (Hugo) front matter
_MAX_FRONT_MATTER_LINES = 200
_PARSER = MarkdownIt("commonmark").enable("table")


def _plain(value: Any) -> Any:
    """A front-matter value as JSON can hold it (dates become ISO strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _tags(value: Any) -> list[str]:
    """`tags: [a, b]`, `tags: a, b` or `tags: a` as a list of tag strings."""
    items = value if isinstance(value, list) else re.split(r"[,;]", str(value)) if value is not None else []
    return [t for t in (" ".join(str(v).split()) for v in items) if t]


def front_matter(text: str) -> tuple[dict, str, list[str]]:
    """(metadata, body, notes) of a Markdown text. Front matter is a first line `---` (YAML) or `+++` (TOML)
    closed by the same line (or `...` for YAML) within 200 lines; it must hold a mapping. `metadata` keeps every
    key (values made JSON-safe), with `title` a string and `tags` a list of strings when present. Front matter
    that does not parse is left out and `notes` says so; a block that parses to something other than a mapping
    (`---`, prose, `---`: thematic breaks) stays in the body."""
    lines = text.split("\n")
    closers = _FENCES.get(lines[0].strip()) if lines else None
    if not closers:
        return {}, text, []
    end = next((i for i, line in enumerate(lines[1:_MAX_FRONT_MATTER_LINES], start=1) if line.strip() in closers),
               None)
    if end is None:
        return {}, text, []
    raw = "\n".join(lines[1:end])
    try:
        data = yaml.safe_load(raw) if closers[0] == "---" else tomllib.loads(raw)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, RecursionError) as e:
        body = "\n".join(lines[end + 1:])
        return {}, body, [f"front matter (lines 1-{end + 1}) does not parse ({type(e).__name__}): not read; fix it"]
    if not isinstance(data, dict):
        return {}, text, []  # `---` then prose then `---`: thematic breaks, not front matter
    meta = _plain(data)
    if "title" in meta:
        meta["title"] = " ".join(str(meta["title"]).split())
    if "tags" in meta:
        meta["tags"] = _tags(meta["tags"])
    return meta, "\n".join(lines[end + 1:]), []


def _inline_text(token: Token) -> str:
    parts = [c.content if c.type in ("text", "code_inline") else " " if c.type.endswith("break") else ""
             for c in token.children or ()]
    return " ".join("".join(parts).split())


class _Spans:
    """Character spans of line ranges of a text."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.offsets = [0]
        for line in lines:
            self.offsets.append(self.offsets[-1] + len(line) + 1)

    def __call__(self, a: int, b: int) -> tuple[int, int]:
        """Lines [a, b) without their trailing blank lines, from the first line's first non-blank character."""
        while b > a + 1 and not self.lines[b - 1].strip():
            b -= 1
        first = self.lines[a]
        return self.offsets[a] + len(first) - len(first.lstrip()), self.offsets[b - 1] + len(self.lines[b - 1].rstrip())


def _blocks(tokens: list[Token], lines: list[str]) -> BlockBuilder:
    span = _Spans(lines)
    out = BlockBuilder()
    container = 0  # depth inside a top-level list item or block quote: its parts belong to its block
    for i, tok in enumerate(tokens):
        if tok.type in ("list_item_close", "blockquote_close"):
            container -= 1
            continue
        if tok.map is None or tok.type.endswith("_close"):
            continue
        opens = tok.type in ("list_item_open", "blockquote_open")
        if container:
            container += opens
            continue
        a, b = tok.map
        if tok.type == "heading_open":
            out.heading(int(tok.tag[1]), _inline_text(tokens[i + 1]), *span(a, b))
        elif opens:
            out.add("list_item" if tok.type == "list_item_open" else "paragraph", *span(a, b))
            container = 1
        elif tok.type == "paragraph_open":
            table = all(line.lstrip().startswith("|") for line in lines[a:b] if line.strip())
            out.add("table" if table else "paragraph", *span(a, b))
        elif tok.type in ("fence", "code_block"):
            out.add("code", *span(a, b))
        elif tok.type == "table_open":
            out.add("table", *span(a, b))
        elif tok.type == "html_block" and not tok.content.lstrip().startswith("<!--"):
            out.add("paragraph", *span(a, b))
    return out


LONGEST_LINE = 4000  # characters: a longer line is cut into paragraphs before parsing (see `cut_long_lines`)


def cut_long_lines(body: str, longest: int = LONGEST_LINE) -> tuple[str, list[str]]:
    """`body` with every line over `longest` characters cut into paragraphs (blank lines between) of at most
    `longest`, at the last whitespace before the bound where there is one, and a note for the document's
    `unread` when any was cut. markdown-it's inline parser takes time superlinear in a paragraph's length on
    runs of `[`, `<` or `#` (a 1 MB line of `<` took 40 s, one of `[` over 2 minutes); a line that long is no
    prose anyway."""
    if all(len(line) <= longest for line in body.split("\n")):
        return body, []
    out, cut = [], []
    for line in body.split("\n"):
        if len(line) > longest:
            cut.append(len(line))
            pieces = []
            while len(line) > longest:
                at = line.rfind(" ", longest // 2, longest)
                at = longest if at < 0 else at
                pieces.append(line[:at])
                line = line[at:].lstrip(" ")
            line = "\n\n".join([*pieces, line])
        out.append(line)
    note = (f"{len(cut)} line(s) over {longest:,} characters (the longest {max(cut):,}): cut into paragraphs of at "
            f"most {longest:,} characters to parse them")
    return "\n".join(out), [note]


def parse_markdown(raw: str) -> ParsedDocument:
    """A Markdown file's decoded text as a document (see the module docstring); hyphen-broken words inside
    paragraphs are joined, code and tables are left as written, lines over `LONGEST_LINE` are cut
    (`cut_long_lines`)."""
    meta, body, notes = front_matter(normalize(raw).replace(HARD_BREAK, "\n"))
    body, cut = cut_long_lines(body)
    notes = [*notes, *cut]
    lines = body.split("\n")
    paragraphs = [range(*t.map) for t in _PARSER.parse(body) if t.type == "paragraph_open" and t.map]
    fixed = dehyphenate(lines, paragraphs, vocabulary(lines))
    if fixed != lines:
        lines, body = fixed, "\n".join(fixed)
    builder = _blocks(_PARSER.parse(body), lines)
    return ParsedDocument(body, tuple(builder.blocks), "markdown", None, meta, tuple(notes))
