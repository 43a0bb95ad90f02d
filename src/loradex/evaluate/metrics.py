"""Per-answer metrics of `loradex eval`, each a plain function of one answer and its references.

- Correctness: exact match and token F1 after SQuAD's answer normalisation (Rajpurkar et al., "SQuAD", EMNLP
  2016, and its official evaluation script: lower case, punctuation and the articles a/an/the removed,
  whitespace collapsed), the best over several acceptable references; and content-word recall, the share of a
  reference's content words found in the answer (`contains_reference` at 0.5), so a long answer that states the
  fact is not punished for its length the way exact match and F1 punish it. Citation markers (`[1]`) are
  removed before any of these (`strip_citations`), as ALCE scores correctness on the answer without them.
- Citations, as ALCE defines them (Gao et al., "Enabling Large Language Models to Generate Text with
  Citations", EMNLP 2023), with loradex's lexical support check (`loradex.cite.support`) where ALCE uses an NLI
  model: citation recall is the share of answer sentences whose cited passages, together, support them;
  citation precision is the share of citations that are not irrelevant, a citation being irrelevant when its
  passage alone does not support the sentence and the sentence's other citations support it without it.
- Form: whether an answer follows a format check (section headers in order, a line matching a pattern, a
  length bound) and whether it degenerates into repetition (a sentence three times or more).
- Retrieval: hit@k and reciprocal rank of the first gold document, and whether the reference is in the sources
  given to the model at all (`answer_in_sources`: `contains_reference` over their joined text).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..cite import CITATION, content_words, parse_citations, repeat_key, same_sentence, sentences, support

__all__ = ["CitationScores", "citation_scores", "contains_reference", "content_recall", "exact_match",
           "format_failures", "hit_at_k", "normalize_answer", "reciprocal_rank", "repeats", "strip_citations",
           "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def strip_citations(text: str) -> str:
    """`text` without its citation markers (`[1]`, `[1, 3]`), for scoring correctness."""
    return CITATION.sub("", text)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0 (0.0 with no reference)."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(r) for r in references))


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 in [0, 1]: the harmonic mean of token precision and recall, best over the references."""
    return max((_f1(prediction, r) for r in references), default=0.0)


def content_recall(prediction: str, reference: str) -> float:
    """Share (0..1) of the reference's distinct content words (stop words out, light stemming) in the prediction;
    1.0 for a reference without content words."""
    ref = set(content_words(reference))
    if not ref:
        return 1.0
    return len(ref & set(content_words(prediction))) / len(ref)


def contains_reference(prediction: str, references: Sequence[str], threshold: float = 0.5) -> bool:
    """Whether the prediction holds at least `threshold` of some reference's content words."""
    return any(content_recall(prediction, r) >= threshold for r in references)


@dataclass(frozen=True)
class CitationScores:
    """ALCE citation recall and precision of one answer (None when the answer has no sentence, or no
    citation, to score), with the counts behind them."""

    recall: float | None
    precision: float | None
    sentences: int
    citations: int


def _supported(claim: str, passages: Sequence[str], cited: Sequence[int]) -> bool:
    """Whether the cited passages, joined, support the claim (ALCE's concatenation of cited passages)."""
    if not cited:
        return False
    return support(claim, "\n".join(passages[n - 1] for n in cited)).ok


def citation_scores(answer: str, passages: Sequence[str]) -> CitationScores:
    """ALCE citation recall and precision of `answer` against `passages` (source n is passages[n-1]); a
    citation of a number with no passage counts as unsupported."""
    recalled, precise, n_sentences, n_citations = 0, 0, 0, 0
    for sent in sentences(answer):
        claim = CITATION.sub("", sent).strip()
        if not claim:
            continue
        n_sentences += 1
        cited = [n for n in parse_citations(sent)]
        valid = [n for n in cited if 1 <= n <= len(passages)]
        whole = _supported(claim, passages, valid)
        recalled += whole
        for n in cited:
            n_citations += 1
            if n not in valid:
                continue
            alone = support(claim, passages[n - 1]).ok
            others = [m for m in valid if m != n]
            precise += alone or (whole and not _supported(claim, passages, others))
    return CitationScores(recalled / n_sentences if n_sentences else None,
                          precise / n_citations if n_citations else None, n_sentences, n_citations)


def repeats(text: str, times: int = 3) -> bool:
    """Degenerate repetition: some sentence (or line) is said `times` times or more: the same content words, or
    nearly, citations, list marks and field labels aside (`loradex.cite.same_sentence`)."""
    keys = [repeat_key(s) for s in sentences(text)]
    return any(1 + sum(same_sentence(k, e) for e in keys[:i]) >= times for i, k in enumerate(keys))


def format_failures(text: str, *, sections: Sequence[str] = (), pattern: str | None = None,
                    max_chars: int | None = None) -> list[str]:
    """What the answer misses of a format check, [] when it passes: each of `sections` must start a line, in
    this order; some line must match `pattern` (a regular expression, `re.MULTILINE`); the answer must be at
    most `max_chars` characters."""
    failures, pos = [], 0
    for header in sections:
        m = re.search(rf"(?m)^\s*{re.escape(header)}", text[pos:])
        if m is None:
            failures.append(f"section {header!r} missing or out of order")
        else:
            pos += m.end()
    if pattern is not None and re.search(pattern, text, re.MULTILINE) is None:
        failures.append(f"no line matches {pattern!r}")
    if max_chars is not None and len(text) > max_chars:
        failures.append(f"{len(text)} characters, over {max_chars}")
    return failures


def answer_label(text: str, label: str | None = None) -> str | None:
    """The answer's label, normalised as SQuAD normalises answers (`normalize_answer`): the first group of the
    regular expression `label` (`re.MULTILINE`) at its first match, else the answer's first word; None when
    `label` matches nothing or the answer is empty."""
    if label is not None:
        m = re.search(label, text, re.MULTILINE)
        return normalize_answer(m.group(1)) if m else None
    words = normalize_answer(text).split()
    return words[0] if words else None


def label_correct(text: str, reference: str, label: str | None = None) -> bool:
    """Whether the answer's label (`answer_label`) is the reference label: the whole normalised reference when
    `label` is given, else its first word."""
    ref = normalize_answer(reference)
    return answer_label(text, label) == (ref if label is not None else (ref.split() or [""])[0])


def hit_at_k(retrieved: Sequence[str], gold: Sequence[str], k: int) -> float:
    """1.0 when one of the first `k` retrieved ids is gold."""
    return float(any(r in set(gold) for r in retrieved[:k]))


def reciprocal_rank(retrieved: Sequence[str], gold: Sequence[str]) -> float:
    """1 / rank of the first gold id among the retrieved (1-based), 0.0 when none is retrieved."""
    golden = set(gold)
    return next((1.0 / i for i, r in enumerate(retrieved, start=1) if r in golden), 0.0)
