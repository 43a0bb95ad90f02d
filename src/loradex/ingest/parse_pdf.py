"""PDF: text lines with their layout (pdfminer.six), grouped into paragraphs and headings by font size, line
pitch and line width, with running headers, footers and page numbers left out and named.

pdfminer.six gives each text line its bounding box and each glyph its font and size; pypdf's `extract_text`
gives lines without their extent, so it cannot tell a wrapped line from a short one. The rules, in order:
- Pieces of one line that pdfminer split (justified text with wide word spaces, a hanging list marker) are
  joined (`_joins`).
- The two outermost lines at the top or bottom of a page (in its outer tenth) that repeat on half the pages or
  more of a document of three pages or more (digits ignored), and page numbers there, are page furniture: left
  out, and reported; unless they are all the page holds.
- A line starts a new paragraph when the page, font size or weight changes, when it is not below the previous
  line in the same column, when the gap from the previous line's baseline is more than the document's usual line
  pitch (`_pitch`, in font sizes) plus a quarter of the font size, or more
  than 2.2 font sizes; when it is a list item; or when the previous line ended a sentence and stopped a fifth of
  the paragraph's width short of its right edge, or this line is indented.
- A paragraph of at most three lines and 200 characters is a heading when its font is at least 15% larger than
  the body's (the most common size), or when it is one line that reads as a title (`heading_like`) alone on its
  baseline; never when the next paragraph goes on in lower case. Larger sizes are higher levels; body-size
  headings sit below them.
- Wrapped lines of a paragraph are joined (`loradex.ingest.normalize.join_lines`, which joins hyphen-broken
  words); a line that ends well short of the paragraph's right edge keeps its line break.
Pages without extractable text (only images, or blank) and glyphs without a Unicode mapping are reported in
`unread`. Not read: text in images (no OCR), annotations and form fields, and table structure (a table's rows
come out as lines of text).
"""
from __future__ import annotations

import io
import logging
import re
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ParseError
from ..types import ParsedDocument
from .blocks import LIST_ITEM, Piece, assemble, heading_like
from .normalize import HARD_BREAK

__all__ = ["parse_pdf"]

_CID = re.compile(r"\(cid:\d+\)")
_BOLD = re.compile(r"bold|black|heavy|semibold|demi", re.I)
_PAGE_NUMBER = re.compile(r"^(?:page\s*)?[-\u2013(]?\s*#\s*[-\u2013)]?(?:\s*(?:of|/)\s*#)?$", re.I)
_MARKER = re.compile(r"^(?:[-*+\u2022\u2023\u2043\u25aa\u25cf\u25e6\u2013\u2014]|\(?(?:\d{1,3}|[a-z]|[ivx]{1,4})[.)])$")
_MARGIN = 0.1  # top and bottom tenth of a page: where running headers and footers sit


@dataclass(frozen=True)
class Line:
    """One text line: its text, bounding box in PDF points (y grows upwards), median glyph size, weight, page;
    `box` numbers pdfminer's text box on the page, `shared` says another line of the page is on its baseline."""

    text: str
    x0: float
    x1: float
    y0: float
    y1: float
    size: float
    bold: bool
    page: int
    box: int = 0
    shared: bool = False


@dataclass
class _Page:
    number: int
    height: float
    lines: list[Line]
    images: bool
    lost_glyphs: int
    boxes: int = 0


def _walk(item: Any, page: _Page, classes: dict) -> None:
    """Collect the text lines and note the images of a page's layout tree, in pdfminer's reading order."""
    if isinstance(item, classes["line"]):
        chars = [c for c in item if isinstance(c, classes["char"])]
        raw = item.get_text().replace("\n", " ")
        text = _CID.sub("", raw)
        page.lost_glyphs += len(_CID.findall(raw))
        if chars and text.strip():
            bold = sum(bool(_BOLD.search(c.fontname)) for c in chars) * 2 > len(chars)
            page.lines.append(Line(" ".join(text.split()), item.x0, item.x1, item.y0, item.y1,
                                   statistics.median(c.size for c in chars), bold, page.number, page.boxes))
    elif isinstance(item, classes["image"]):
        page.images = True
    elif isinstance(item, classes["container"]):
        page.boxes += isinstance(item, classes["box"])
        for child in item:
            _walk(child, page, classes)


def _read(data: bytes) -> tuple[list[_Page], dict]:
    """The pages of a PDF with their lines, and its metadata (title, tags). Raises ParseError."""
    try:
        from pdfminer.converter import PDFPageAggregator
        from pdfminer.layout import LAParams, LTChar, LTContainer, LTImage, LTTextBox, LTTextLine
        from pdfminer.pdfdocument import PDFDocument, PDFEncryptionError, PDFPasswordIncorrect
        from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
        from pdfminer.pdfpage import PDFPage
        from pdfminer.pdfparser import PDFParser
    except ImportError:
        raise ParseError("PDF support is not installed: pip install 'loradex[docs]'") from None
    logging.getLogger("pdfminer").setLevel(logging.ERROR)  # broken files are reported once, by us
    classes = {"line": LTTextLine, "char": LTChar, "image": LTImage, "container": LTContainer, "box": LTTextBox}
    try:
        document = PDFDocument(PDFParser(io.BytesIO(data)), password="")
        manager = PDFResourceManager()
        device = PDFPageAggregator(manager, laparams=LAParams(all_texts=True))
        interpreter = PDFPageInterpreter(manager, device)
        pages = []
        for n, page in enumerate(PDFPage.create_pages(document), start=1):
            interpreter.process_page(page)
            layout = device.get_result()
            out = _Page(n, layout.height, [], False, 0)
            _walk(layout, out, classes)
            out.lines = _rejoin(out.lines)
            pages.append(out)
        return pages, _metadata(document)
    except (PDFPasswordIncorrect, PDFEncryptionError):
        raise ParseError("encrypted PDF: remove the password and ingest again") from None
    except ParseError:
        raise
    except Exception as e:  # pdfminer raises many kinds on broken files; a bad file must not stop the run
        raise ParseError(f"corrupt or unreadable PDF ({type(e).__name__}: {e})") from None


def _joins(run: list[Line], line: Line, starts: Counter) -> bool:
    """Whether `line` continues `run` (pieces of one line, left to right): same baseline (within a fifth of the
    font size) and size, and a gap of at most three font sizes inside one pdfminer text box or after a list
    marker alone ("-", "2.", "a)"), or of two across boxes unless `line` starts where other lines of the page
    start (a column's left edge: a gutter, not a word space)."""
    last = run[-1]
    if abs(last.y0 - line.y0) >= 0.2 * line.size or abs(last.size - line.size) > 0.5:
        return False
    gap = line.x0 - last.x1
    if any(piece.box == line.box for piece in run) or (len(run) == 1 and _MARKER.match(last.text)):
        return -0.5 * line.size <= gap <= 3 * line.size  # one box, or a list item's hanging marker
    return -0.5 * line.size <= gap <= 2 * line.size and starts[round(line.x0)] < 3


def _rejoin(lines: list[Line]) -> list[Line]:
    """One page's lines with the pieces of a line that pdfminer split (wide justified word spaces, text drawn out
    of order) joined (`_joins`); each joined line takes the place in reading order of its leftmost piece that is
    not a list marker, and is marked `shared` when another line still sits on its baseline (a table row, a second
    column)."""
    order = {id(line): i for i, line in enumerate(lines)}
    starts = Counter(round(line.x0) for line in lines)
    starts.update(round(line.x0) + d for line in lines for d in (-1, 1))
    runs: list[list[Line]] = []
    for line in sorted(lines, key=lambda ln: ln.x0):
        run = next((r for r in runs if _joins(r, line, starts)), None)
        if run is None:
            runs.append([line])
        else:
            run.append(line)
    joined = [(order[id(next((p for p in run if not _MARKER.match(p.text)), run[0]))],
               Line(" ".join(p.text for p in run), run[0].x0, run[-1].x1, min(p.y0 for p in run),
                    max(p.y1 for p in run), run[0].size, run[0].bold, run[0].page, run[0].box)) for run in runs]
    out = [line for _, line in sorted(joined, key=lambda pair: pair[0])]
    return [replace(line, shared=any(o is not line and abs(o.y0 - line.y0) < 0.2 * line.size for o in out))
            for line in out]


def _metadata(document: Any) -> dict:
    from pdfminer.pdftypes import resolve1
    from pdfminer.utils import decode_text

    info: dict = {}
    for entry in document.info or ():
        info.update(resolve1(entry) or {})

    def text(key: str) -> str:
        value = resolve1(info.get(key))
        value = decode_text(value) if isinstance(value, bytes) else value if isinstance(value, str) else ""
        return " ".join(value.split())

    meta: dict = {}
    if title := text("Title"):
        meta["title"] = title
    if keywords := [k.strip() for k in re.split(r"[,;]", text("Keywords")) if k.strip()]:
        meta["tags"] = keywords
    return meta


def _furniture(pages: list[_Page]) -> tuple[set[tuple[int, int]], list[str]]:
    """(page, line index) of running headers, footers and page numbers, and what `unread` says of them."""
    def marginal(p: _Page) -> list[tuple[int, str]]:
        """The two outermost lines at the top and at the bottom of the page, where they lie in its margin."""
        by_height = sorted(range(len(p.lines)), key=lambda i: p.lines[i].y0)
        ends = [i for i in by_height[:2] if p.lines[i].y1 < p.height * _MARGIN] + \
               [i for i in by_height[-2:] if p.lines[i].y0 > p.height * (1 - _MARGIN)]
        return [(i, re.sub(r"\d+", "#", p.lines[i].text.lower())) for i in dict.fromkeys(ends)]

    keyed = {p.number: marginal(p) for p in pages}
    seen = Counter(key for rows in keyed.values() for key in {k for _, k in rows})
    repeated = {k for k, n in seen.items() if len(pages) >= 3 and n >= len(pages) / 2}
    drop = {(number, i) for number, rows in keyed.items() for i, k in rows
            if k in repeated or _PAGE_NUMBER.match(k)}
    emptied = {p.number for p in pages if p.lines and all((p.number, i) in drop for i in range(len(p.lines)))}
    drop = {(n, i) for n, i in drop if n not in emptied}  # a page of nothing but such lines holds its content
    if not drop:
        return drop, []
    examples = list(dict.fromkeys(pages[n - 1].lines[i].text for n, i in sorted(drop)))[:3]
    return drop, [f"running headers, footers and page numbers left out on {len({n for n, _ in drop})} page(s): "
                  + "; ".join(repr(e) for e in examples)]


def _pitch(lines: list[Line]) -> float | None:
    """The usual baseline-to-baseline distance of consecutive lines of one paragraph, in font sizes: the smallest
    of the pitches that make up at least a fifth of those up to 2.2 sizes; None when no lines sit that close."""
    ratios = Counter(round((a.y0 - b.y0) / a.size, 1) for a, b in zip(lines, lines[1:])
                     if a.page == b.page and abs(a.size - b.size) <= 0.5 and 0 < a.y0 - b.y0 <= 2.2 * a.size
                     and b.x0 < a.x1 and b.x1 > a.x0)
    total = sum(ratios.values())
    return min((r for r, n in ratios.items() if n >= 0.2 * total), default=None)


def _new_paragraph(prev: Line, cur: Line, para: list[Line], pitch: float | None) -> bool:
    if cur.page != prev.page or abs(cur.size - prev.size) > 0.5 or cur.bold != prev.bold:
        return True
    size, dy = max(prev.size, cur.size), prev.y0 - cur.y0
    if dy <= 0 or cur.x0 >= prev.x1 or cur.x1 <= prev.x0 or dy > 2.2 * size:
        return True  # above the previous line, another column, or a gap of more than double spacing
    if (pitch is not None and dy > (pitch + 0.25) * size) or LIST_ITEM.match(cur.text):
        return True
    if prev.text[-1:] not in ".!?:":
        return False
    left, right = min(line.x0 for line in para), max([line.x1 for line in para] + [cur.x1])
    return cur.x0 > left + 0.8 * size or prev.x1 < right - 0.2 * (right - left)


def _paragraphs(lines: list[Line]) -> list[list[Line]]:
    pitch = _pitch(lines)
    out: list[list[Line]] = []
    for line in lines:
        if out and not _new_paragraph(out[-1][-1], line, out[-1], pitch):
            out[-1].append(line)
        else:
            out.append([line])
    return out


def _text(para: list[Line]) -> str:
    """The paragraph's lines, soft-wrapped except after a line that ends well short of the right edge."""
    left, right = min(line.x0 for line in para), max(line.x1 for line in para)
    parts = []
    for line in para[:-1]:
        short = line.x1 < right - 0.35 * (right - left) and not line.text.endswith("-")
        parts.append(line.text + (HARD_BREAK if short else "\n"))
    return "".join(parts) + para[-1].text


def _pieces(paragraphs: list[list[Line]]) -> list[Piece]:
    chars: Counter[float] = Counter()
    for para in paragraphs:
        for line in para:
            chars[round(line.size * 2) / 2] += len(line.text)
    body = chars.most_common(1)[0][0] if chars else 0.0
    big = sorted({round(max(line.size for line in p) * 2) / 2 for p in paragraphs
                  if max(line.size for line in p) >= 1.15 * body}, reverse=True)
    pieces: list[Piece] = []
    first_heading = True
    for i, para in enumerate(paragraphs):
        text = _text(para)
        size = round(max(line.size for line in para) * 2) / 2
        nxt = paragraphs[i + 1][0].text if i + 1 < len(paragraphs) else ""
        goes_on = nxt[:1].islower()
        short = len(para) <= 3 and len(text) <= 200
        if short and size in big and not goes_on:
            pieces.append(Piece("heading", text, para[0].page, big.index(size) + 1))
        elif len(para) == 1 and heading_like(text) and not goes_on and not para[0].shared:
            level = len(big) + 1 if big else 1 if first_heading or text.isupper() else 2
            pieces.append(Piece("heading", text, para[0].page, level))
        else:
            kind = "list_item" if LIST_ITEM.match(para[0].text) else "paragraph"
            pieces.append(Piece(kind, text, para[0].page))
            continue
        first_heading = False
    return pieces


def _empty_pages(pages: list[_Page]) -> list[str]:
    notes = []
    scanned = [p.number for p in pages if not p.lines and p.images]
    blank = [p.number for p in pages if not p.lines and not p.images]
    if scanned:
        notes.append(f"page(s) {', '.join(map(str, scanned))}: no extractable text, only images "
                     "(scanned pages need OCR first, for instance with ocrmypdf)")
    if blank:
        notes.append(f"page(s) {', '.join(map(str, blank))}: blank, no text")
    if lost := [p for p in pages if p.lost_glyphs]:
        notes.append(f"page(s) {', '.join(str(p.number) for p in lost)}: {sum(p.lost_glyphs for p in lost)} "
                     "glyph(s) in fonts without a Unicode mapping not read (OCR the file to recover them)")
    return notes


def parse_pdf(data: bytes) -> ParsedDocument:
    """A PDF's bytes as a document (see the module docstring). Raises ParseError when the file is corrupt or
    encrypted with a password, or pdfminer.six (the `docs` extra) is not installed."""
    pages, meta = _read(data)
    drop, furniture = _furniture(pages)
    lines = [line for p in pages for i, line in enumerate(p.lines) if (p.number, i) not in drop]
    unread = _empty_pages(pages) + furniture
    return assemble(_pieces(_paragraphs(lines)), "pdf", pages=len(pages), metadata=meta, unread=unread)
