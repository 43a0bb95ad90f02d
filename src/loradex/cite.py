"""Citation parsing and verification: does each cited passage support the sentence that cites it?

A citation `[n]` is kept only if source n exists; it is *verified* when the cited passage supports the
sentence: every number in the sentence appears in the passage, either a run of words is quoted from it or
most of the sentence's content words occur in it, and the two agree in polarity (a sentence that says "not"
where the passage's matching sentence does not, or the reverse, is unsupported). A cited sentence no cited passage
supports is flagged, with the other sources that would support it, if any. Lexical checks only: this
module does no entailment and says so in each reason.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache
from typing import NamedTuple

# One citation grammar for every form a model writes: brackets [1], [1, 2], [1; 7], [1-3], [Source 7],
# [Sources 1 and 2], [^1]; full-width ［1］ and 【1】; parentheses with a word, (Source 7), (see passages 2-3);
# footnote superscripts after punctuation or a word of three letters or more (hours¹, "m²" is a unit, not a
# citation). Numbers have 1-3 digits, so [2024] is not a citation.
_WORDS = r"(?:sources?|src|docs?|documents?|passages?|refs?|references?|citations?|contexts?|excerpts?)"
_ITEM = rf"(?:{_WORDS}\s*[:#]?\s*)?#?\d{{1,3}}(?:\s*(?:-|\u2013|\u2014|to)\s*(?:{_WORDS}\s*)?#?\d{{1,3}})?"
_LIST = rf"{_ITEM}(?:\s*(?:,|;|&|\band\b)\s*{_ITEM})*"
_SEE = r"(?:(?:see|cf\.?)\s+)?"
_SUPERSCRIPT = "\u00b9\u00b2\u00b3\u2070\u2074-\u2079"
_SUP_DIGITS = str.maketrans("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079", "0123456789")
CITATION = re.compile(
    rf"\s?(?:\[\^?{_SEE}{_LIST}\]|\uff3b{_SEE}{_LIST}\uff3d|\u3010{_SEE}{_LIST}\u3011"
    rf"|\({_SEE}{_WORDS}\s*[:#]?\s*{_LIST}\)"
    rf"|(?:(?<=[.,;:)\]])|(?<=[^\W\d_]{{3}}))[{_SUPERSCRIPT}]+(?:[,\u02d2][{_SUPERSCRIPT}]+)*)",
    re.IGNORECASE)
_CITATION_RUN = re.compile(rf"(?:{CITATION.pattern})+", re.IGNORECASE)  # [1][2] is one citation, [1, 2]
_CITED_NUMBER = re.compile(r"(\d{1,3})(?:\s*(?:-|\u2013|\u2014|to)\s*[a-z]*\s*#?(\d{1,3}))?", re.IGNORECASE)
MAX_RANGE = 20  # [1-300] is not read as 300 citations: a wider range counts its two ends only
# A full stop that does not end a sentence: with no space after it ("1.3", "theatlantic.com", "e.g."), ending a
# letters' abbreviation before more of the sentence ("U.S. Department"), after a title ("Dr. Lee"), before a
# number ("Fig. 2"); but a word that mostly opens sentences after it starts one ("in the U.S. The UK is not").
_OPENER = r"(?-i:(?:The|This|That|These|It|We|You|Your|Our|They|There|He|She|If|In|For|But|So)\b)"
_NOT_END = (rf"\.(?=[a-z0-9@_-])|(?<=[a-z]\.)[a-z]\.(?=[ \t]+(?!{_OPENER})[^\s\[])"  # 1.5, theatlantic.com
            rf"|\b(?-i:Mr|Mrs|Ms|Dr|Prof|St|vs|cf|approx)\.(?=[ \t]+(?!{_OPENER})[^\s\[])"
            r"|\b(?:fig|figs|no|vol|pp?|sec|art)\.(?=[ \t]+\d)")  # Fig. 2, No. 5, p. 3
_SENTENCE = re.compile(rf"(?:{_NOT_END}|[^.!?\n])+(?:[.!?]+[\"'”’)]*|\n|$)(?:{CITATION.pattern})*", re.IGNORECASE)
_BULLET_ONLY = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])?\s*$")
_LIST_MARK = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z0-9]+")
STOP = frozenset("""a an and are as at be been but by can could did do does for from had has have how i if in
into is it its may might must no not of on or our should so such than that the their them then there these
they this to was we were what when where which while who will with within would you your yes also any all
each per""".split())
MIN_QUOTE_WORDS = 6
MIN_OVERLAP = 0.6


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str
    quote: str = ""
    strength: float = 0.0  # share of the sentence's words quoted or found in the source


@dataclass(frozen=True)
class CitationCheck:
    n: int
    sentence: str
    verified: bool
    reason: str
    quote: str
    added: bool = False  # attributed (or re-cited) by loradex, not written by the model


@dataclass
class Verification:
    text: str  # the answer with citations to missing sources removed
    checks: list[CitationCheck] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)  # cited numbers with no such source
    flagged: list[dict] = field(default_factory=list)  # cited sentences no cited passage supports

    @property
    def cited(self) -> list[int]:
        return list(dict.fromkeys(c.n for c in self.checks))


def cited_numbers(citation: str) -> list[int]:
    """The source numbers one citation (a `CITATION` match) names, in order, ranges expanded: "[Sources 2-4]" ->
    [2, 3, 4], "¹˒²" -> [1, 2]."""
    nums: list[int] = []
    for m in _CITED_NUMBER.finditer(citation.translate(_SUP_DIGITS)):
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        nums.extend(range(lo, hi + 1) if 0 <= hi - lo <= MAX_RANGE else (lo, hi))
    return list(dict.fromkeys(nums))


def parse_citations(text: str) -> list[int]:
    """Cited source numbers in order of first appearance, whatever the form (`CITATION`): `[1, 2]`, `[1][2]`,
    `[1; 2]`, `[1-2]`, `[Source 1, 2]`, `(Sources 1 and 2)`, `【1】`, `hours¹˒²` all give [1, 2]."""
    return list(dict.fromkeys(n for m in CITATION.finditer(text) for n in cited_numbers(m.group())))


def canonical_citations(text: str, drop: Collection[int] = ()) -> str:
    """`text` with every citation, whatever its form, written ` [1, 2]`, and the numbers in `drop` removed (a
    citation left with no number goes)."""
    def rewrite(m: re.Match) -> str:
        run = CITATION.finditer(text, m.start(), m.end())  # from the text: a superscript's look-behind sees it
        nums = [n for n in dict.fromkeys(n for c in run for n in cited_numbers(c.group())) if n not in drop]
        space = " " if m.start() > 0 else ""
        return f"{space}[{', '.join(map(str, nums))}]" if nums else ""
    return _CITATION_RUN.sub(rewrite, text)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


_FIELD_LABEL = re.compile(r"^\s*[A-Z][A-Za-z]*(?: [A-Za-z]+){0,2}:\s+")  # "Why: ", "Next steps: "
_NEGATIONS = frozenset({"no", "not", "never", "nor"})  # "covered" and "not covered" are two claims
_CLAUSE = re.compile(r"[,;:]|\b(?:and|but|or|while|whereas|unless|except)\b", re.IGNORECASE)
_SUBJECT = r"(?:we|you|they|it|he|she|this|that|there|i)\b"  # not possessives: "or its subsidiaries"
# a clause with a subject of its own: "If we cannot make the changes, | we will update the policy"
_SUBCLAUSE = re.compile(rf";|,\s*(?={_SUBJECT})|\b(?:and|or)\s+(?={_SUBJECT})|\b(?:but|while|whereas)\b", re.I)
_EXCLUDES = re.compile(r"\bexclu(?:ded|des|de|sions?)\b|\bnot covered\b", re.IGNORECASE)
_HEADINGS = re.compile(r"^#{1,6}\s+(.+)$", re.MULTILINE)
_NEGATION = re.compile(r"\b(?:no(?!-)|not|never|nor|cannot)\b|n't\b|n’t\b", re.IGNORECASE)
NEAR_REPEAT = 0.85  # content-word similarity (difflib ratio) at which two sentences count as one repeated
NEAR_MIN_WORDS = 5  # below this many content words only an exact repeat counts


class RepeatKey(NamedTuple):
    words: tuple[str, ...]  # content words, stemmed, numbers and negations kept
    labelled: bool  # the line starts with a field label ("Deadline:")


def repeat_key(sentence: str) -> RepeatKey:
    """What two sentences are compared on for repetition: their content words (stemmed, numbers and negations
    kept, other stop words dropped) without citations, a list mark or a leading field label ("Why:",
    "Limits:"), so "Why: X." and "Limits: the X." are one sentence said twice; and whether it had a label."""
    text = _LIST_MARK.sub("", CITATION.sub("", sentence))
    plain = _FIELD_LABEL.sub("", text)
    words = tuple(_stem(w) for w in _WORD.findall(plain.lower()) if w not in STOP or w in _NEGATIONS)
    return RepeatKey(words, plain != text)


def same_sentence(a: RepeatKey, b: RepeatKey) -> bool:
    """Whether two `repeat_key`s say the same thing: the same content words (two or more), or, for sentences
    without a field label and from `NEAR_MIN_WORDS` content words each, at least `NEAR_REPEAT` similar (a word
    or two changed, as small models loop). A labelled field that restates an earlier sentence in other words
    ("Summary: report it to the police within 24 hours" then "Deadline: police within 24 hours") is what a
    layout asks for, so only the same words make a labelled line a repeat."""
    if len(a.words) < 2 or len(b.words) < 2:
        return False
    if a.words == b.words:
        return True
    return (not a.labelled and not b.labelled and min(len(a.words), len(b.words)) >= NEAR_MIN_WORDS
            and SequenceMatcher(None, a.words, b.words, autojunk=False).ratio() >= NEAR_REPEAT)


class _Seen:
    """The sentences said so far; `repeats(sentence)` is True for one that says an earlier one again
    (`same_sentence`)."""

    def __init__(self) -> None:
        self.keys: list[RepeatKey] = []

    def repeats(self, sentence: str) -> bool:
        key = repeat_key(sentence)
        if any(same_sentence(k, key) for k in self.keys):
            return True
        self.keys.append(key)
        return False


def drop_repeats(text: str) -> tuple[str, list[str]]:
    """`text` without the second and later occurrences of any sentence or line that says an earlier one again
    (`_Seen`: the same content words, or nearly, field labels aside), and the sentences removed, in order. The
    rest of the text, line breaks included, is kept as it was; a removed line takes its line break with it."""
    seen = _Seen()
    kept, removed, pos = [], [], 0
    for m in _SENTENCE.finditer(text):
        if seen.repeats(m.group()):
            start = m.start()
            line_start = text.rfind("\n", 0, start) + 1
            if _BULLET_ONLY.match(text[line_start:start]):  # "2. <repeat>": the list item goes with it
                start = line_start
            kept.append(text[pos:start])
            removed.append(m.group().strip())
            pos = m.end()
            if text[:start].endswith("\n") and text[pos:pos + 1] == "\n":
                pos += 1
    if not removed:
        return text, []
    kept.append(text[pos:])
    return "".join(kept).strip(), removed


class RepeatFilter:
    """`drop_repeats` for a stream, by lines: `feed` a piece of text, get back what may be shown now; a line is
    held back until it ends, and a line that says an earlier one again (`_Seen`) is never shown. `finish`
    returns the last, unfinished line."""

    def __init__(self) -> None:
        self.seen = _Seen()
        self.line = ""

    def _keep(self, line: str) -> bool:
        return not line.strip() or not self.seen.repeats(line)

    def feed(self, piece: str) -> str:
        *done, self.line = (self.line + piece).split("\n")
        return "".join(line + "\n" for line in done if self._keep(line))

    def finish(self) -> str:
        rest, self.line = self.line, ""
        return rest if self._keep(rest) else ""


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP and not w.isdigit()]


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _longest_run(claim: list[str], passage: list[str]) -> tuple[int, int]:
    """Length and passage end index of the longest common run of words (the earliest in the claim on ties)."""
    m = SequenceMatcher(None, claim, passage, autojunk=False).find_longest_match()
    return m.size, m.b + m.size


def _region(claim_words: set[str], passage: str) -> str:
    """The sentence of `passage` sharing the most content words with the claim (the first on ties)."""
    scored = [(len(claim_words & set(content_words(s))), -i, s) for i, s in enumerate(sentences(passage))]
    return max(scored, default=(0, 0, passage[:200]))[2]


def negated(text: str) -> bool:
    """Whether `text` says no, not, never, nor, cannot or n't (`no-claims` is a name, not a negation)."""
    return bool(_NEGATION.search(text))


def _polarity(claim: str, claim_words: set[str], passage: str) -> str | None:
    """Why the claim and the place in `passage` that it matches disagree in polarity, or None: a negated claim
    whose best-matching sentence has no negation ("carry no excess" against "carry an excess of EUR 500"), nor
    says "excluded", nor sits under a markdown heading that does ("## Exclusions"), or a
    claim without one whose best-matching clause of that sentence is negated ("cover theft" against "do not
    cover theft"). A lexical stand-in for the contradiction an entailment model would catch."""
    region = _region(claim_words, passage)
    if negated(claim):  # the negation must sit in the part of the sentence it matches, not in another clause
        at = passage.find(region)
        heading = _HEADINGS.findall(passage[: max(at, 0)])
        parts = [c for c in _SUBCLAUSE.split(region) if c.strip()] or [region]
        score = [len(claim_words & set(content_words(c))) for c in parts]  # ties: any best part may carry it
        if any(negated(c) for c, n in zip(parts, score) if n == max(score)) or _EXCLUDES.search(region) \
                or (heading and _EXCLUDES.search(heading[-1])):
            return None  # "not covered" against an item of a list headed "Exclusions"
    else:  # the clause it matches: "you pay no excess and your no-claims discount is protected" supports the latter
        clauses = [c for c in _CLAUSE.split(region) if c.strip()] or [region]
        matched = max(clauses, key=lambda c: len(claim_words & set(content_words(c))))
        if not negated(matched):
            return None
    said, unsaid = ("the sentence", "its source") if negated(claim) else ("its source", "the sentence")
    return f"{said} is negated where {unsaid} is not: {region[:160]!r}"


@lru_cache(maxsize=4096)
def support(claim: str, passage: str) -> Support:
    """Whether `passage` supports `claim` (a sentence with its citation markers removed). Cached: attribution
    and the check after it ask the same questions."""
    missing = _numbers(claim) - _numbers(passage)
    if missing:
        return Support(False, f"number {sorted(missing)[0]} does not appear in the source")
    claim_tokens = _WORD.findall(claim.lower())
    passage_tokens = _WORD.findall(passage.lower())
    words = set(content_words(claim))
    run, end = _longest_run(claim_tokens, passage_tokens)
    quoted = run >= min(MIN_QUOTE_WORDS, len(claim_tokens)) and run > 0
    overlap = len(words & set(content_words(passage))) / len(words) if words else 0.0
    if (quoted or overlap >= MIN_OVERLAP) and (contrary := _polarity(claim, words, passage)):
        return Support(False, contrary, strength=0.0)
    if quoted:
        return Support(True, f"quotes {run} words of the source", " ".join(passage_tokens[end - run : end]),
                       run / len(claim_tokens))
    if not words:
        return Support(False, "the sentence has no content words to check")
    if overlap >= MIN_OVERLAP:
        return Support(True, f"{overlap:.0%} of its content words are in the source",
                       _region(words, passage)[:240], overlap)
    return Support(False, f"only {overlap:.0%} of its content words are in the source (lexical check)",
                   strength=overlap)


def verify(answer: str, passages: list[str], *, attribute: bool = False) -> Verification:
    """Check every citation of `answer` against `passages` (source n is passages[n-1]).

    With `attribute=True`, a sentence the model left uncited gets the source that best supports it, and a
    sentence whose cited sources do not support it is re-cited to the source that does (a small model often
    cites the wrong number: the shipped adapters cite their last source most); both are marked `added`, so
    model-made and loradex-made citations stay distinguishable."""
    removed = [n for n in parse_citations(answer) if not 1 <= n <= len(passages)]
    text = canonical_citations(answer, set(removed))
    added: dict = {}
    if attribute:
        text, added = _attribute(text, passages)
    result = Verification(text, removed=removed)
    for sent in sentences(text):
        cited = parse_citations(sent)
        if not cited:
            continue
        if sent in added:
            n, s = added[sent]
            result.checks.append(CitationCheck(n, CITATION.sub("", sent).strip(), True, s.reason, s.quote, True))
            continue
        claim = CITATION.sub("", sent).strip()
        supported = False
        for n in cited:
            s = support(claim, passages[n - 1])
            result.checks.append(CitationCheck(n, claim, s.ok, s.reason, s.quote))
            supported |= s.ok
        if not supported:
            others = [i for i, p in enumerate(passages, start=1) if i not in cited and local_support(claim, p).ok]
            result.flagged.append({"sentence": claim, "cited": cited, "supported_by": others})
    return result


def without_label(sentence: str) -> str:
    """`sentence` without a leading field label ("Limits: "), stripped: as `unsupported` lists it."""
    return _FIELD_LABEL.sub("", sentence).strip()


def unsupported(verification: Verification) -> list[str]:
    """The claims of a verified answer no source supports (citations, field labels removed): the flagged ones, then
    the `uncited` ones (with attribution on, a sentence stays uncited only when no source supports it)."""
    flagged = [c for c in (without_label(f["sentence"]) for f in verification.flagged) if len(content_words(c)) >= 3]
    return list(dict.fromkeys([*flagged, *(c for _, c in uncited(verification.text))]))


def uncited(text: str) -> list[tuple[str, str]]:
    """(sentence, claim: no citations or field label) of each uncited sentence with 3 content words or more."""
    claims = [(s, without_label(CITATION.sub("", s).strip())) for s in sentences(text) if not parse_citations(s)]
    return [(s, c) for s, c in claims if len(content_words(c)) >= 3]


def local_support(claim: str, passage: str) -> Support:
    """Whether one place in `passage` supports `claim`: `support` against each sentence or line of the passage
    and each pair of neighbouring ones, the strongest kept. Stricter than `support` on the whole passage, which
    a sentence assembled from words scattered over a long passage can pass (an exclusions list read as cover)."""
    parts = sentences(passage)
    windows = parts + [f"{a} {b}" for a, b in zip(parts, parts[1:])]
    checked = [support(claim, w) for w in windows]
    ok = [c for c in checked if c.ok]
    if ok:
        return max(ok, key=lambda c: c.strength)
    return max(checked, key=lambda c: c.strength, default=Support(False, "the source has no text"))


def _best_support(claim: str, passages: list[str]) -> tuple[int, Support] | None:
    """The source loradex cites for `claim`: the one with the strongest `local_support` (the lowest number on
    ties). A citation loradex adds must rest on one place in the source, not on words spread over it."""
    if len(content_words(claim)) < 3:
        return None  # too short to attribute ("Yes.", "Hello.")
    scored = [(n, local_support(claim, p)) for n, p in enumerate(passages, start=1)]
    ok = [(n, s) for n, s in scored if s.ok]
    return max(ok, key=lambda x: (x[1].strength, -x[0])) if ok else None


def _attribute(text: str, passages: list[str]) -> tuple[str, dict[str, tuple[int, Support]]]:
    """Append `[n]` to each uncited sentence that source n supports, and re-cite a sentence whose cited sources
    do not support it to the one that does (the model's numbers replaced, the reason saying so); also returns
    what was added."""
    out, pos, added = [], 0, {}
    for m in _SENTENCE.finditer(text):
        sent = m.group(0)
        body = sent.rstrip()
        out.append(text[pos : m.start()])
        cited = parse_citations(body)
        claim = CITATION.sub("", body).rstrip()
        wrong = bool(cited) and not any(support(claim.strip(), passages[n - 1]).ok for n in cited)
        best = _best_support(claim, passages) if body.strip() and (wrong or not cited) else None
        if best and wrong:
            numbers = ", ".join(map(str, cited))
            best = (best[0], Support(True, f"re-cited by loradex: [{numbers}] does not support it; {best[1].reason}",
                                     best[1].quote, best[1].strength))
        if best:
            body = f"{claim} [{best[0]}]"
            added[body.strip()] = best
        out.append(body + sent[len(sent.rstrip()):])
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), added
