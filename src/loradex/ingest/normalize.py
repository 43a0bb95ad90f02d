"""Text normalisation shared by every parser: Unicode compatibility forms, invisible characters, line ends, and
words broken by a hyphen at the end of a line.

Every format's text goes through here before it becomes a document's text, so spans, embeddings, BM25 and the
citation checks all see one form of it: `normalize` works on characters, `join_lines` and `dehyphenate` on the
lines of one paragraph. Deciding what is a paragraph or a heading is the parsers' work, not this module's.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["HARD_BREAK", "dehyphenate", "join_lines", "normalize", "vocabulary"]

HARD_BREAK = "\u2028"
"""LINE SEPARATOR: a parser marks a line break the author made (`<br>`, Word's line break, a short PDF line) with
it; a plain newline inside a paragraph is a soft wrap, which `join_lines` joins."""

_LINE_ENDS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2029]")
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"), None)  # soft hyphen, zero widths, BOM
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+(?=\n|\u2028|$)")
_WORD = re.compile(r"\w+(?:-\w+)*")
_BROKEN_HEAD = re.compile(r"([^\W\d_][^\W_]*)-$")  # the word before a line-end hyphen: starts with a letter
_LONGEST_WORD = 100  # a hyphen-broken "word" longer than this is no word: its end only is looked at (linear time)
_TAIL = re.compile(r"\w+")
_CLOSING = ".,;:!?)]}'\"’”"  # punctuation that stays with the word it follows


def normalize(text: str) -> str:
    """`text` in one canonical form: Unicode NFKC (ligatures such as U+FB01 become their letters, full-width
    forms ASCII, no-break and other spaces a plain space; Unicode Standard Annex #15), soft hyphens, zero-width
    spaces and byte-order marks removed, other control characters dropped, every line end (CR LF, CR, form feed,
    paragraph separator) a newline, and no spaces before a line end. Line structure is kept: the same number of
    newlines come out as went in, plus one for each CR LF counted once."""
    text = _LINE_ENDS.sub("\n", text)
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    return _TRAILING.sub("", _CONTROL.sub("", text))


def vocabulary(texts: Iterable[str]) -> set[str]:
    """The lower-cased words and hyphenated compounds written whole on one line somewhere in `texts`: the
    evidence `join_lines` uses to tell a typesetter's hyphen from a compound's."""
    return {w for t in texts for w in _WORD.findall(t.lower())}


def _join_broken(left: str, right: str, vocab: set[str]) -> tuple[str, str] | None:
    """(left, rest of right) with a word hyphen-broken across them made whole on the left, or None when the break
    is no hyphenation: `left` must end in a letter and a hyphen, and `right` start with a letter or digit. Before a
    lower-case
    letter the hyphen is the typesetter's and goes, unless the hyphenated form is written elsewhere in the document
    and the joined one is not (a compound such as "self-service"); before a capital or a digit it is a compound's
    hyphen ("Anglo-Saxon", "COVID-19") and stays."""
    if not left.endswith("-"):
        return None
    head = _BROKEN_HEAD.search(left, max(len(left) - _LONGEST_WORD - 1, 0))  # from the start: quadratic in a long line
    right = right.lstrip()
    tail = _TAIL.match(right)
    if head is None or tail is None or not right[:1].isalpha() and not right[:1].isdigit():
        return None
    word = tail.group()
    token_end = len(right) - len(right[tail.end():].lstrip("".join(_CLOSING)))  # "dent," moves up with its comma
    hyphenated = f"{head.group(1)}-{word}"
    if right[0].islower() and not (hyphenated.lower() in vocab and (head.group(1) + word).lower() not in vocab):
        joined = head.group(1) + word
    else:
        joined = hyphenated
    return left[: head.start()] + joined + right[tail.end():token_end], right[token_end:]


def join_lines(text: str, vocab: set[str]) -> str:
    """One paragraph's soft-wrapped lines (newline-separated) as one line: a hyphen-broken word is joined
    (see `_join_broken`), other lines are joined with a space; runs of spaces and tabs become one space. Hard
    breaks (`HARD_BREAK`) come out as newlines."""
    out: list[str] = []
    for segment in text.split(HARD_BREAK):
        line = ""
        for piece in segment.split("\n"):
            piece = " ".join(piece.split())
            if not piece:
                continue
            joined = _join_broken(line, piece, vocab) if line else None
            if joined is not None:
                line = joined[0] + joined[1]
            else:
                line = f"{line} {piece}" if line else piece
        if line:
            out.append(line)
    return "\n".join(out)


def dehyphenate(lines: list[str], paragraphs: Sequence[range], vocab: set[str]) -> list[str]:
    """`lines` with each word hyphen-broken between two lines of one paragraph (line indices in `paragraphs`)
    made whole on the first line and taken off the next; a line left empty is dropped, so the result can be
    shorter. For formats whose text keeps its own lines (Markdown, plain text); code and tables are not in
    `paragraphs` and are left alone."""
    lines = list(lines)
    drop: set[int] = set()
    for para in paragraphs:
        prev = None
        for i in para:
            if prev is not None and i < len(lines):
                joined = _join_broken(lines[prev], lines[i], vocab)
                if joined is not None:
                    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                    lines[prev], rest = joined[0], joined[1].lstrip()
                    lines[i] = indent + rest if rest else ""
                    if not rest:
                        drop.add(i)
                        continue  # the word ended the line: the next line continues `prev`
            prev = i
    return [line for i, line in enumerate(lines) if i not in drop]
