"""DOCX: every text-bearing part of the document body read in document order, and what is not read named.

python-docx opens the package and resolves style names; the body's XML is walked here, because python-docx's
paragraph and table lists see only the body's direct children. Read, in order: paragraphs (headings by style
or outline level, list items by numbering or a List style), tables (a table nested in a cell is read into
the cell), content controls (`w:sdt`), custom XML and smart tags, tracked insertions, text boxes (after the
paragraph that anchors them; a text box that Word stores twice, as DrawingML and as a VML fallback, is read
once), then footnotes and endnotes under their own heading. Not indexed, and reported in `unread`: page headers
and footers (kept as metadata `header` and `footer`), comments, text formatted as hidden, embedded documents
(`w:altChunk`), and the number of pictures and charts (their text, if any, is not read). Tracked deletions and
field codes are not document text and are skipped.
"""
from __future__ import annotations

import io
import re
import zipfile
from collections import Counter
from typing import Any

from ..errors import ParseError
from ..types import ParsedDocument
from .blocks import Piece, assemble
from .normalize import HARD_BREAK

__all__ = ["MAX_PARTS", "MAX_UNZIPPED_BYTES", "parse_docx"]

# python-docx inflates every part of the package into memory: a 4.7 MB DOCX that inflated to 1.5 GB took 9.8 GB.
# The sizes the zip directory declares are checked first (Python's zipfile never inflates a member past its
# declared size, so the declared sizes bound what is read).
MAX_UNZIPPED_BYTES = 512 * 2**20  # all parts together, inflated
MAX_PARTS = 10_000

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_CONTAINERS = {"sdt", "sdtContent", "customXml", "smartTag", "ins", "moveTo", "hyperlink", "fldSimple", "r",
               "txbxContent", "Choice", "Fallback", "body"}
_NOT_TEXT = {"del", "moveFrom", "instrText", "delText", "pPr", "rPr", "sdtPr", "tblPr", "trPr", "tcPr",
             "commentReference", "footnoteReference", "endnoteReference"}
_PICTURE = {"pic", "imagedata"}
_SKIPPED = {"altchunk": "{n} embedded document(s) (w:altChunk): not read; save them into the DOCX itself",
            "hidden": "{n} word(s) formatted as hidden text: not indexed",
            "pictures": "{n} picture(s) or chart(s): images are not read (no OCR)"}


def _local(el: Any) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _hidden_run(run: Any) -> bool:
    vanish = run.find(f"{W}rPr/{W}vanish")
    return vanish is not None and vanish.get(f"{W}val", "true") not in ("false", "0", "off")


class _Reader:
    """Walks WordprocessingML block content, emitting pieces; `skipped` counts what is left out by kind."""

    def __init__(self, styles: Any):
        self.styles = styles
        self.pieces: list[Piece] = []
        self.skipped: Counter[str] = Counter()

    def blocks(self, parent: Any) -> None:
        """Block-level content of a body, cell, text box, content control or note, in order."""
        for el in parent:
            tag = _local(el)
            if tag == "p":
                self.paragraph(el)
            elif tag == "tbl":
                rows = self.table(el)
                if rows:
                    self.pieces.append(Piece("table", "\n".join("| " + " | ".join(r) + " |" for r in rows)))
            elif tag == "altChunk":
                self.skipped["altchunk"] += 1
            elif tag == "AlternateContent":
                self.blocks(next(iter(el), el))
            elif tag in _CONTAINERS:
                self.blocks(el)

    def inline(self, el: Any, text: list[str], boxes: list[Any]) -> None:
        """The text of a paragraph's runs into `text`; text boxes met on the way go to `boxes`."""
        for child in el:
            tag = _local(child)
            if tag in _NOT_TEXT:
                continue
            if tag == "t":
                text.append(child.text or "")
            elif tag in ("tab", "ptab"):
                text.append("\t")
            elif tag in ("br", "cr"):
                text.append(" " if child.get(f"{W}type") in ("page", "column") else HARD_BREAK)
            elif tag == "noBreakHyphen":
                text.append("-")
            elif tag == "txbxContent":
                boxes.append(child)
            elif tag == "AlternateContent":  # mc:Choice first; its mc:Fallback repeats the same content
                self.inline(next(iter(child), child), text, boxes)
            elif tag == "r" and _hidden_run(child):
                self.skipped["hidden"] += len("".join(t.text or "" for t in child.iter(f"{W}t")).split())
            else:
                if tag in _PICTURE or tag == "chart":
                    self.skipped["pictures"] += 1
                self.inline(child, text, boxes)

    def paragraph(self, p: Any) -> None:
        text: list[str] = []
        boxes: list[Any] = []
        self.inline(p, text, boxes)
        kind, level = self.kind(p)
        self.pieces.append(Piece(kind, "".join(text), level=level))
        for box in boxes:
            self.blocks(box)

    def kind(self, p: Any) -> tuple[str, int]:
        """(kind, heading level) of a paragraph from its style name, outline level and numbering."""
        ppr = p.find(f"{W}pPr")
        style_id = ppr.find(f"{W}pStyle").get(f"{W}val") if ppr is not None and ppr.find(f"{W}pStyle") is not None \
            else None
        name, style_outline = self.styles.get(style_id, (style_id or "", None))
        if m := re.fullmatch(r"[Hh]eading ?(\d)", name):
            return "heading", int(m.group(1))
        if name == "Title":
            return "heading", 1
        outline = _outline(ppr) if ppr is not None else None
        if (level := outline if outline is not None else style_outline) is not None:
            return "heading", level
        if name.startswith("List") or (ppr is not None and ppr.find(f"{W}numPr") is not None):
            return "list_item", 0
        return "paragraph", 0

    def table(self, tbl: Any) -> list[list[str]]:
        """Rows of cell texts; a table nested in a cell is read into the cell as `a, b; c, d`."""
        rows = []
        for tr in (el for el in tbl.iter(f"{W}tr") if _owner(el, "tbl") is tbl):
            cells = [self.cell(tc) for tc in tr.iter(f"{W}tc") if _owner(tc, "tr") is tr]
            if any(cells):
                rows.append(cells)
        return rows

    def cell(self, tc: Any) -> str:
        inner = _Reader(self.styles)
        for el in tc:
            if _local(el) == "tbl":
                nested = inner.table(el)
                inner.pieces.append(Piece("paragraph", "; ".join(", ".join(c for c in r if c) for r in nested)))
            else:
                inner.blocks([el])
        self.skipped.update(inner.skipped)
        text = " ".join(p.text for p in inner.pieces)
        return " ".join(text.replace(HARD_BREAK, " ").split()).replace("|", "\\|")


def _outline(ppr: Any) -> int | None:
    """The heading level (1-9) a `w:pPr` gives by its outline level, None for body text."""
    outline = ppr.find(f"{W}outlineLvl")
    value = outline.get(f"{W}val", "9") if outline is not None else "9"
    return int(value) + 1 if value.isdigit() and int(value) < 9 else None


def _styles(document: Any) -> dict[str, tuple[str, int | None]]:
    """Paragraph style id -> (name, heading level from the style's own outline level)."""
    out = {}
    for style in document.styles:
        if style.style_id and style.name:
            ppr = style.element.find(f"{W}pPr")
            out[style.style_id] = (style.name, _outline(ppr) if ppr is not None else None)
    return out


def _owner(el: Any, tag: str) -> Any:
    """The nearest ancestor of `el` with local name `tag`."""
    parent = el.getparent()
    while parent is not None and _local(parent) != tag:
        parent = parent.getparent()
    return parent


def _part_text(element: Any, styles: dict) -> str:
    reader = _Reader(styles)
    reader.blocks(element)
    return " ".join(" ".join(p.text.replace(HARD_BREAK, " ").split()) for p in reader.pieces if p.text.strip())


def _parts(document: Any, styles: dict, reader: _Reader) -> tuple[dict, list[str]]:
    """Headers, footers, comments, footnotes and endnotes: notes read into `reader`, the rest as metadata."""
    meta: dict[str, list[str]] = {"header": [], "footer": []}
    unread: list[str] = []
    notes: dict[str, list[Any]] = {"footnotes": [], "endnotes": []}
    for part in document.part.package.iter_parts():
        name = str(part.partname)
        kind = next((k for k in ("header", "footer", "comments", "footnotes", "endnotes") if f"/word/{k}" in name),
                    None)
        if kind is None:
            continue
        from lxml import etree

        root = etree.fromstring(part.blob)
        if kind in meta:
            if (text := _part_text(root, styles)) and text not in meta[kind]:
                meta[kind].append(text)
        elif kind == "comments":
            if count := len(root.findall(f"{W}comment")):
                unread.append(f"{count} comment(s): review comments are not document text")
        else:
            notes[kind] += [n for n in root if n.get(f"{W}type") not in ("separator", "continuationSeparator",
                                                                         "continuationNotice")]
    for kind, items in notes.items():
        if items:
            reader.pieces.append(Piece("heading", kind.capitalize(), level=1))
            for note in items:
                reader.blocks(note)
    for kind in ("header", "footer"):
        if meta[kind]:
            preview = "; ".join(meta[kind])
            unread.append(f"page {kind} ({preview[:80]!r}{'...' if len(preview) > 80 else ''}): "
                          "kept as metadata, not indexed")
    return {k: " / ".join(v) for k, v in meta.items() if v}, unread


def _check_bounds(data: bytes) -> None:
    """Raises ParseError when the package holds more than MAX_PARTS parts or inflates past MAX_UNZIPPED_BYTES
    (a zip bomb, or a document too big to read in memory), before anything is inflated."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
    if len(infos) > MAX_PARTS:
        raise ParseError(f"DOCX holds {len(infos):,} parts, over the bound of {MAX_PARTS:,} (a zip bomb?)")
    inflated = sum(i.file_size for i in infos)
    if inflated > MAX_UNZIPPED_BYTES:
        raise ParseError(f"DOCX inflates to {inflated / 2**20:,.0f} MiB from {len(data) / 2**20:,.1f} MiB, over the "
                         f"bound of {MAX_UNZIPPED_BYTES / 2**20:,.0f} MiB (a zip bomb?); split the document, or save "
                         "its images smaller")


def parse_docx(data: bytes) -> ParsedDocument:
    """A DOCX file's bytes as a document (see the module docstring). Raises ParseError when the file is not a
    readable DOCX, inflates past MAX_UNZIPPED_BYTES or holds over MAX_PARTS parts, or python-docx (the `docs`
    extra) is not installed."""
    try:
        import docx
    except ImportError:
        raise ParseError("DOCX support is not installed: pip install 'loradex[docs]'") from None
    try:
        _check_bounds(data)
        document = docx.Document(io.BytesIO(data))
    except ParseError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ParseError(f"corrupt DOCX ({type(e).__name__}: {e})") from None
    except Exception as e:
        raise ParseError(f"unreadable DOCX ({type(e).__name__}: {e})") from None
    styles = _styles(document)
    reader = _Reader(styles)
    reader.blocks(document.element.body)
    meta, unread = _parts(document, styles, reader)
    props = document.core_properties
    if props.title and props.title.strip():
        meta["title"] = " ".join(props.title.split())
    if tags := [t.strip() for t in re.split(r"[,;]", props.keywords or "") if t.strip()]:
        meta["tags"] = tags
    unread += [_SKIPPED[what].format(n=n) for what, n in reader.skipped.items() if n]
    return assemble(reader.pieces, "docx", metadata=meta, unread=unread)
