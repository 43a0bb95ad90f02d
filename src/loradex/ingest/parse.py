"""Parsers: one file's bytes -> ParsedDocument (normalised text, blocks with heading path and page, metadata, and
what was not read).

Each format has its module (`parse_markdown`, `parse_html`, `parse_pdf`, `parse_docx`; plain text is here);
all share one normalisation step (`loradex.ingest.normalize`), so a document's text is its normalised text and
every span indexes it. Markdown and plain text keep the file's lines; HTML, PDF and DOCX join their extracted
blocks with blank lines. What a parser leaves out (an image-only page, a page header, page furniture) is listed in
`ParsedDocument.unread`, never dropped silently. A file that cannot be read raises ParseError with a reason a
person can act on; the caller reports it and goes on.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ParseError
from ..types import ParsedDocument
from .blocks import scan
from .normalize import HARD_BREAK, dehyphenate, normalize, vocabulary
from .parse_markdown import parse_markdown

__all__ = ["FORMATS", "ParseError", "decode", "detect_format", "parse_bytes", "parse_file"]

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text",
           ".html": "html", ".htm": "html", ".pdf": "pdf", ".docx": "docx"}


def detect_format(path: Path) -> str | None:
    """The format name of a file by its suffix (`FORMATS`), None when loradex does not read it."""
    return FORMATS.get(path.suffix.lower())


def decode(data: bytes) -> str:
    """A text file's bytes as text (UTF-8, a BOM allowed). Raises ParseError for NUL bytes or invalid UTF-8."""
    if b"\x00" in data[:8192]:
        raise ParseError("binary content (NUL bytes) in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParseError(f"not valid UTF-8 (byte {e.start}): convert the file to UTF-8") from None


def parse_text(raw: str) -> ParsedDocument:
    """Plain text: normalised, hyphen-broken words inside a paragraph (lines between blank lines) joined, then
    scanned into blocks (`loradex.ingest.blocks.scan`)."""
    lines = normalize(raw).replace(HARD_BREAK, "\n").split("\n")
    paragraphs, start = [], 0
    for i, line in enumerate(lines + [""]):
        if not line.strip():
            if i > start:
                paragraphs.append(range(start, i))
            start = i + 1
    text = "\n".join(dehyphenate(lines, paragraphs, vocabulary(lines)))
    return ParsedDocument(text, tuple(scan(text)), "text")


def parse_bytes(data: bytes, fmt: str) -> ParsedDocument:
    """Parse one file's bytes as `fmt` (a value of `FORMATS`). Raises ParseError with the reason when the file
    is empty, undecodable, corrupt, encrypted, yields no text, or needs an extra that is not installed; the
    reason for no text names what was not read (for instance pages that hold only images)."""
    if not data.strip():
        raise ParseError("empty file")
    if fmt == "markdown":
        doc = parse_markdown(decode(data))
    elif fmt == "text":
        doc = parse_text(decode(data))
    elif fmt == "html":
        from .parse_html import parse_html

        doc = parse_html(decode(data))
    elif fmt == "pdf":
        from .parse_pdf import parse_pdf

        doc = parse_pdf(data)
    elif fmt == "docx":
        from .parse_docx import parse_docx

        doc = parse_docx(data)
    else:
        raise ParseError(f"unknown format {fmt!r}: use one of {', '.join(sorted(set(FORMATS.values())))}")
    if not doc.blocks:
        raise ParseError("no text could be extracted" + (f" ({'; '.join(doc.unread)})" if doc.unread else ""))
    return doc


def parse_file(path: Path) -> ParsedDocument:
    """Parse the file at `path` by its suffix. Raises ParseError as `parse_bytes` does, and for an unsupported
    suffix."""
    fmt = detect_format(path)
    if fmt is None:
        raise ParseError(f"unsupported format {path.suffix or '(no extension)'}: use .md .txt .html .pdf .docx")
    return parse_bytes(path.read_bytes(), fmt)
