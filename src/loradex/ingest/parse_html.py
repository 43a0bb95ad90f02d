"""HTML: the page parsed as a browser parses it, its content read as blocks, its furniture left out and named.

The tree comes from selectolax's Lexbor engine, which implements the WHATWG HTML parsing algorithm, so omitted
end tags, misnested markup and tables nested in cells give the tree a browser builds. The walk reads headings,
paragraphs, list items, `pre` blocks and tables in document order. Left out of the text: `head` (its `title`
and keywords become metadata), scripts, styles, templates, embedded objects and form controls; elements
marked `hidden` or `aria-hidden`; and page furniture (navigation, a page's own header and footer, top-level
asides, cookie and consent banners; see `_furniture`), which `unread` reports with its word count.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from ..errors import ParseError
from ..types import ParsedDocument
from .blocks import Piece, assemble
from .normalize import HARD_BREAK

__all__ = ["parse_html"]

_SKIP = {"script", "style", "noscript", "template", "head", "svg", "math", "canvas", "iframe", "object", "embed",
         "button", "select", "textarea", "datalist", "-comment"}
_BLOCK = {"p", "div", "section", "article", "main", "blockquote", "dd", "dt", "dl", "ul", "ol", "figure",
          "figcaption", "address", "details", "summary", "fieldset", "legend", "form", "hr", "body", "center",
          "caption", "header", "footer", "aside", "nav"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_SECTIONING = {"article", "aside", "main", "nav", "section"}
_ROLES = {"banner": "page header", "contentinfo": "page footer", "navigation": "navigation",
          "complementary": "aside", "search": "search form"}
_BANNER_WORDS = {"cookie": "cookie banner", "cookies": "cookie banner", "consent": "cookie banner",
                 "gdpr": "cookie banner", "breadcrumb": "navigation", "breadcrumbs": "navigation"}


def _furniture(node: Any, ancestors: tuple[str, ...]) -> str | None:
    """What kind of page furniture `node` is, or None for content. Furniture is what HTML-AAM maps to the
    banner, contentinfo, navigation and complementary landmarks: `nav`; `header` and `footer` outside
    sectioning content and `main`; `aside` outside `article` and `section`; any element with such a `role`.
    An element whose id or class names a cookie or consent banner, or breadcrumbs, counts too."""
    tag, attrs = node.tag, node.attributes
    role = (attrs.get("role") or "").strip().lower()
    if role in _ROLES:
        return _ROLES[role]
    if tag == "nav":
        return "navigation"
    if tag in ("header", "footer") and not _SECTIONING.intersection(ancestors):
        return "page header" if tag == "header" else "page footer"
    if tag == "aside" and not {"article", "section"}.intersection(ancestors):
        return "aside"
    words = " ".join(filter(None, (attrs.get("id"), attrs.get("class")))).lower().replace("-", " ").replace("_", " ")
    return next((_BANNER_WORDS[w] for w in words.split() if w in _BANNER_WORDS), None)


def _hidden(node: Any) -> bool:
    attrs = node.attributes
    return "hidden" in attrs or (attrs.get("aria-hidden") or "").strip().lower() == "true"


def _words(node: Any) -> int:
    return len((node.text(deep=True, separator=" ") or "").split())


class _Walker:
    """Depth-first walk of the body that emits pieces; `left_out` counts words of furniture by kind."""

    def __init__(self):
        self.pieces: list[Piece] = []
        self.buf: list[str] = []
        self.left_out: Counter[str] = Counter()
        self.in_item = 0

    def flush(self, kind: str = "paragraph", level: int = 0) -> None:
        text = "".join(self.buf)
        self.buf = []
        if text.strip():
            self.pieces.append(Piece("list_item" if kind == "paragraph" and self.in_item else kind, text, level=level))

    def visit(self, node: Any, ancestors: tuple[str, ...] = ()) -> None:
        for child in node.iter(include_text=True):
            tag = child.tag
            if tag == "-text":
                self.buf.append(child.text_content or "")
            elif tag in _SKIP:
                continue
            elif _hidden(child):
                self.left_out["hidden elements"] += _words(child)
            elif (kind := _furniture(child, ancestors)) is not None:
                self.left_out[kind] += _words(child)
            elif tag == "br":
                self.buf.append(HARD_BREAK)
            elif tag in _HEADINGS:
                self.flush()
                self.visit(child, ancestors + (tag,))
                self.flush("heading", int(tag[1]))
            elif tag == "table":
                self.flush()
                self.table(child, ancestors)
            elif tag == "li":
                self.flush()
                self.in_item += 1
                self.visit(child, ancestors + (tag,))
                self.flush("list_item")
                self.in_item -= 1
            elif tag == "pre":
                self.flush()
                self.pieces.append(Piece("code", child.text(deep=True) or ""))
            elif tag in _BLOCK:
                self.flush()
                self.visit(child, ancestors + (tag,))
                self.flush()
            else:
                self.visit(child, ancestors + (tag,))

    def table(self, table: Any, ancestors: tuple[str, ...]) -> None:
        """A table as rows of `| cell | cell |`; a table with one column is layout and is walked as content."""
        caption = next((c for c in table.iter() if c.tag == "caption"), None)
        if caption is not None:
            self.pieces.append(Piece("paragraph", caption.text(deep=True, separator=" ") or ""))
        rows = [[_cell_text(c) for c in _cells(r)] for r in _rows(table)]
        if all(len(r) <= 1 for r in rows):
            for row in _rows(table):
                for cell in _cells(row):
                    self.visit(cell, ancestors + ("table",))
                    self.flush()
            return
        lines = ["| " + " | ".join(r) + " |" for r in rows if any(r)]
        if lines:
            self.pieces.append(Piece("table", "\n".join(lines)))


def _rows(table: Any) -> list[Any]:
    """The rows of this table, not of tables nested in its cells (the parser puts every row in a section)."""
    out = []
    for child in table.iter():
        if child.tag == "tr":
            out.append(child)
        elif child.tag in ("thead", "tbody", "tfoot"):
            out.extend(r for r in child.iter() if r.tag == "tr")
    return out


def _cells(row: Any) -> list[Any]:
    return [c for c in row.iter() if c.tag in ("td", "th")]


def _cell_text(cell: Any) -> str:
    """A cell's text on one line; a table nested in it reads `a, b; c, d` (cells by commas, rows by semicolons)."""
    parts: list[str] = []
    for child in cell.iter(include_text=True):
        if child.tag == "-text":
            parts.append(child.text_content or "")
        elif child.tag == "table":
            rows = (", ".join(t for t in (_cell_text(c) for c in _cells(r)) if t) for r in _rows(child))
            parts.append(" " + "; ".join(r for r in rows if r) + " ")
        elif child.tag not in _SKIP and not _hidden(child):
            parts.append(" " + _cell_text(child) + " " if child.tag not in ("a", "b", "i", "em", "strong", "span",
                                                                            "code", "sup", "sub") else
                         _cell_text(child))
    return " ".join("".join(parts).split()).replace("|", "\\|")


def _metadata(tree: Any) -> dict:
    meta: dict = {}
    title = tree.css_first("head > title") or tree.css_first("title")
    if title is not None and (text := " ".join((title.text() or "").split())):
        meta["title"] = text
    keywords = tree.css_first('meta[name="keywords"]')
    if keywords is not None and (content := keywords.attributes.get("content")):
        meta["tags"] = [t.strip() for t in content.split(",") if t.strip()]
    return meta


def parse_html(raw: str) -> ParsedDocument:
    """A decoded HTML page as a document (see the module docstring). Raises ParseError when selectolax (the
    `docs` extra) is not installed or the page nests elements past Python's recursion limit."""
    try:
        from selectolax.lexbor import LexborHTMLParser
    except ImportError:
        raise ParseError("HTML support is not installed: pip install 'loradex[docs]'") from None
    tree = LexborHTMLParser(raw)
    walker = _Walker()
    if tree.body is not None:
        try:
            walker.visit(tree.body)
        except RecursionError:  # the walk is recursive: Python's limit, about 1,000 levels less the caller's
            raise ParseError("HTML nested too deeply to read (elements inside elements past about 900 levels; "
                             "real pages nest a few dozen): fix or flatten the page") from None
        walker.flush()
    unread = [f"page furniture left out: {', '.join(f'{kind} ({n} words)' for kind, n in walker.left_out.items())}"
              ] if walker.left_out else []
    return assemble(walker.pieces, "html", metadata=_metadata(tree), unread=unread)
