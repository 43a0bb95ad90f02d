"""Parsers: one file's bytes -> ParsedDocument (text + blocks with heading path and page).

Markdown and plain text keep the file's own text, so spans quote the file exactly; HTML, PDF and
DOCX spans index the extracted text (blocks joined by blank lines). A file that cannot be read
raises ParseError with a reason a person can act on; the caller reports it and goes on.
"""
from __future__ import annotations

import io
import logging
import zipfile
from html.parser import HTMLParser
from pathlib import Path

from ..errors import ParseError
from ..types import ParsedDocument
from .blocks import LIST_ITEM, BlockBuilder, heading_like, scan

__all__ = ["FORMATS", "ParseError", "detect_format", "parse_bytes", "parse_file", "pdf_paragraphs"]

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text",
           ".html": "html", ".htm": "html", ".pdf": "pdf", ".docx": "docx"}


def detect_format(path: Path) -> str | None:
    """The format name of a file by its suffix (`FORMATS`), None when loradex does not read it."""
    return FORMATS.get(path.suffix.lower())


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise ParseError("binary content (NUL bytes) in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParseError(f"not valid UTF-8 (byte {e.start}): convert the file to UTF-8") from None


def parse_bytes(data: bytes, fmt: str) -> ParsedDocument:
    """Parse one file's bytes as `fmt` (a value of `FORMATS`). Raises ParseError with the reason when the file
    is empty, undecodable, corrupt, encrypted, yields no text, or needs an extra that is not installed."""
    if not data.strip():
        raise ParseError("empty file")
    parser = {"markdown": _parse_markdown, "text": _parse_text, "html": _parse_html,
              "pdf": _parse_pdf, "docx": _parse_docx}[fmt]
    doc = parser(data)
    if not doc.blocks:
        raise ParseError("no text could be extracted")
    return doc


def _parse_markdown(data: bytes) -> ParsedDocument:
    text = _decode(data)
    return ParsedDocument(text, tuple(scan(text, markdown=True)), "markdown")


def _parse_text(data: bytes) -> ParsedDocument:
    text = _decode(data)
    return ParsedDocument(text, tuple(scan(text, markdown=False)), "text")


class _ExtractedText:
    """Builds a document text from extracted pieces, recording each piece's span."""

    def __init__(self):
        self.parts: list[str] = []
        self.pos = 0
        self.builder = BlockBuilder(None)

    def _append(self, text: str) -> int:
        """Append a piece after a blank line; returns where it starts in the document text."""
        if self.parts:
            self.parts.append("\n\n")
            self.pos += 2
        start = self.pos
        self.parts.append(text)
        self.pos += len(text)
        return start

    def add(self, kind: str, text: str, page: int | None = None, level: int = 0) -> None:
        text = text.strip()
        if not text:
            return
        start = self._append(text)
        self.builder.page = page
        if kind == "heading":
            self.builder.heading(level, " ".join(text.split()), start, start + len(text))
        else:
            self.builder.add(kind, start, start + len(text))

    def add_scanned(self, text: str, page: int | None) -> None:
        """Plain text (a PDF page): scanned into paragraphs and headings in place."""
        text = text.strip()
        if text:
            scan(text, markdown=False, offset=self._append(text), page=page, builder=self.builder)

    def done(self, fmt: str, pages: int | None = None) -> ParsedDocument:
        return ParsedDocument("".join(self.parts), tuple(self.builder.blocks), fmt, pages)


class _HTMLBlocks(HTMLParser):
    _BLOCK = {"p", "li", "pre", "blockquote", "dd", "dt", "caption", "div", "section", "article", "td", "th", "tr"}
    _SKIP = {"script", "style", "noscript", "template", "head", "nav", "svg"}

    def __init__(self, joiner: _ExtractedText):
        super().__init__(convert_charrefs=True)
        self.out = joiner
        self.buf: list[str] = []
        self.skip = 0
        self.heading = 0
        self.table: list[list[str]] | None = None
        self.row: list[str] | None = None
        self.in_li = 0

    def _flush(self, kind: str = "paragraph") -> None:
        text = " ".join("".join(self.buf).split())
        self.buf = []
        if text:
            self.out.add(kind, text, level=self.heading)

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skip += 1
        elif self.skip:
            return
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._flush()
            self.heading = int(tag[1])
        elif tag == "table":
            self._flush()
            self.table = []
        elif tag == "tr" and self.table is not None:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.buf = []
        elif tag == "br":
            self.buf.append(" ")
        elif tag in self._BLOCK and self.table is None:
            self._flush("list_item" if self.in_li else "paragraph")
            self.in_li += tag == "li"

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif self.skip:
            return
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6") and self.heading:
            self._flush("heading")
            self.heading = 0
        elif tag in ("td", "th") and self.row is not None:
            self.row.append(" ".join("".join(self.buf).split()))
            self.buf = []
        elif tag == "tr" and self.table is not None and self.row is not None:
            if any(self.row):
                self.table.append(self.row)
            self.row = None
        elif tag == "table" and self.table is not None:
            rows, self.table = self.table, None
            self.out.add("table", "\n".join("| " + " | ".join(r) + " |" for r in rows))
        elif tag in self._BLOCK and self.table is None:
            self._flush("list_item" if tag == "li" else "paragraph")
            if tag == "li":
                self.in_li = max(0, self.in_li - 1)

    def handle_data(self, data):
        if not self.skip:
            self.buf.append(data)

    def close(self):
        super().close()
        self._flush()


def _parse_html(data: bytes) -> ParsedDocument:
    text = _decode(data)
    out = _ExtractedText()
    p = _HTMLBlocks(out)
    p.feed(text)
    p.close()
    return out.done("html")


def pdf_paragraphs(text: str) -> str:
    """PDF text comes as wrapped lines with no blank lines: put a blank line where a paragraph,
    a list item or a heading begins, so the block scanner sees the page's structure."""
    out: list[str] = []
    prev = ""
    for line in (ln.rstrip() for ln in text.splitlines()):
        if not line.strip():
            continue
        if out:
            ended = prev.rstrip()[-1:] in ".!?:"
            starts = line.lstrip()[:1]
            if (heading_like(prev) and ended is False and not prev.rstrip().endswith(",")) \
                    or LIST_ITEM.match(line.lstrip()) \
                    or (ended and (starts.isupper() or starts.isdigit())):
                out.append("")
        out.append(line)
        prev = line
    return "\n".join(out)


def _parse_pdf(data: bytes) -> ParsedDocument:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        logging.getLogger("pypdf").setLevel(logging.ERROR)  # broken files are reported once, by us
    except ImportError:
        raise ParseError("PDF support is not installed: pip install 'loradex[docs]'") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("encrypted PDF: remove the password and ingest again")
        out = _ExtractedText()
        for n, page in enumerate(reader.pages, start=1):
            out.add_scanned(pdf_paragraphs(page.extract_text() or ""), page=n)
        return out.done("pdf", pages=len(reader.pages))
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as e:
        raise ParseError(f"corrupt PDF ({type(e).__name__}: {e})") from None
    except Exception as e:  # pypdf raises many kinds on broken files; a bad file must not stop the run
        raise ParseError(f"unreadable PDF ({type(e).__name__}: {e})") from None


def _parse_docx(data: bytes) -> ParsedDocument:
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph
    except ImportError:
        raise ParseError("DOCX support is not installed: pip install 'loradex[docs]'") from None
    try:
        d = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ParseError(f"corrupt DOCX ({type(e).__name__}: {e})") from None
    except Exception as e:
        raise ParseError(f"unreadable DOCX ({type(e).__name__}: {e})") from None
    out = _ExtractedText()
    for el in d.element.body.iterchildren():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(el, d)
            style = (para.style.name if para.style is not None else "") or ""
            if style.startswith("Heading") and style[7:].strip().isdigit():
                out.add("heading", para.text, level=int(style[7:].strip()))
            elif style == "Title":
                out.add("heading", para.text, level=1)
            elif style.startswith("List") or el.pPr is not None and el.pPr.numPr is not None:
                out.add("list_item", para.text)
            else:
                out.add("paragraph", para.text)
        elif tag == "tbl":
            rows = ["| " + " | ".join(c.text.strip() for c in row.cells) + " |" for row in Table(el, d).rows]
            out.add("table", "\n".join(rows))
    return out.done("docx")


def parse_file(path: Path) -> ParsedDocument:
    """Parse the file at `path` by its suffix. Raises ParseError as `parse_bytes` does, and for an unsupported
    suffix."""
    fmt = detect_format(path)
    if fmt is None:
        raise ParseError(f"unsupported format {path.suffix or '(no extension)'}: use .md .txt .html .pdf .docx")
    return parse_bytes(path.read_bytes(), fmt)
