"""Evaluation metrics on hand-made cases whose values are worked out by hand (in the comments)."""
import pytest

from loradex.evaluate.metrics import (
    answer_label,
    citation_scores,
    contains_reference,
    content_recall,
    exact_match,
    format_failures,
    hit_at_k,
    label_correct,
    normalize_answer,
    reciprocal_rank,
    repeats,
    strip_citations,
    token_f1,
)
from loradex.evaluate.stats import Interval, bootstrap, paired_bootstrap


def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the Eiffel Tower.", ["Paris", "Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower"]) == 0.0 and exact_match("x", []) == 0.0
    # prediction tokens: within 7 days of theft (5); reference: 7 days (2); common 2 -> P 2/5, R 1 -> F1 4/7
    assert token_f1("within 7 days of the theft", ["7 days"]) == pytest.approx(4 / 7)
    assert token_f1("7 days", ["seven days", "7 days"]) == 1.0
    assert token_f1("", ["x"]) == 0.0 and token_f1("", [""]) == 1.0 and token_f1("a", []) == 0.0


def test_content_recall_does_not_punish_long_answers():
    # reference content words: report, day ("within" is a stop word, "7" a number): both in the long answer
    long = "You should report it to us, at the latest within 7 days, by phone or online."
    assert content_recall(long, "Report within 7 days") == 1.0
    assert token_f1(long, ["Report within 7 days"]) < 0.5
    # reference content words: police, hour -> only "police" present
    assert content_recall("Call the police.", "police within 24 hours") == 0.5
    assert contains_reference("Call the police.", ["police within 24 hours"])
    assert not contains_reference("Call us.", ["police within 24 hours"])


PASSAGES = ["Theft must be reported to the police within 24 hours.", "Premiums are paid monthly by direct debit."]


def test_alce_citation_recall_and_precision():
    answer = ("Report the theft to the police within 24 hours [1]. "
              "Premiums are paid monthly by direct debit [1][2]. The sky is green [2].")
    s = citation_scores(answer, PASSAGES)
    # sentence 1: [1] supports it; sentence 2: [1]+[2] support it; sentence 3: [2] does not -> recall 2/3
    # citations: s1 [1] precise; s2 [1] irrelevant (alone no, [2] suffices without it), [2] precise; s3 [2] not
    assert (s.sentences, s.citations) == (3, 4)
    assert s.recall == pytest.approx(2 / 3) and s.precision == pytest.approx(2 / 4)


def test_citations_of_missing_sources_and_uncited_answers():
    s = citation_scores("Report the theft to the police within 24 hours [3].", PASSAGES)
    assert (s.recall, s.precision) == (0.0, 0.0)
    s = citation_scores("Report the theft to the police within 24 hours.", PASSAGES)
    assert (s.recall, s.precision, s.citations) == (0.0, None, 0)
    assert citation_scores("", PASSAGES).recall is None


def test_format_checks_and_repetition():
    claims = "Summary: report it\nSteps:\n1. call us\nDeadline: 7 days\nEscalation: NO - routine"
    layout = ("Summary:", "Steps:", "Deadline:", "Escalation:")
    assert format_failures(claims, sections=layout, pattern=r"^Escalation: (YES|NO) - ", max_chars=200) == []
    swapped = "Steps:\n1. call us\nSummary: report it\nDeadline: 7 days"
    # Summary: is found on line 3; Steps: does not come after it; Deadline: does
    assert format_failures(swapped, sections=layout[:3]) == ["section 'Steps:' missing or out of order"]
    assert format_failures(claims, pattern=r"^Escalation: YES") == ["no line matches '^Escalation: YES'"]
    assert format_failures(claims, max_chars=10) == [f"{len(claims)} characters, over 10"]
    twice = "- The pipe is not covered. [3]\n- The pipe is not covered. [3]\n"
    assert not repeats(twice) and repeats(twice + "- The pipe is NOT covered.\n")


def test_labels_from_a_layout_line_or_the_first_word():
    claims = "Summary: report it [1]\nSteps:\n1. call us\nEscalation: YES - injury"
    escalation = r"^Escalation: (YES|NO)\b"
    assert answer_label(claims, escalation) == "yes" and label_correct(claims, "YES", escalation)
    assert not label_correct(claims, "NO", escalation)
    assert answer_label("Summary: no escalation line", escalation) is None  # the layout's line is missing: wrong
    assert not label_correct("Summary: no escalation line", "NO", escalation)
    assert answer_label("Yes, it is covered.") == "yes" and label_correct("Yes, it is covered.", "yes it is")
    assert answer_label("") is None


def test_a_label_pattern_needs_a_group():
    from pydantic import ValidationError

    from loradex.config import FormatCheck

    assert FormatCheck(label=r"^Covered: (YES|NO|PARTLY)").label
    with pytest.raises(ValidationError, match="needs a group"):
        FormatCheck(label=r"^Covered: YES")


def test_retrieval_hit_and_reciprocal_rank():
    assert hit_at_k(["a", "b", "c"], ["c"], 2) == 0.0 and hit_at_k(["a", "b", "c"], ["c"], 3) == 1.0
    assert reciprocal_rank(["a", "b", "c"], ["c", "b"]) == 0.5 and reciprocal_rank(["a"], ["z"]) == 0.0


def test_bootstrap_interval():
    assert bootstrap([1.0, 1.0, 1.0]) == Interval(1.0, 1.0, 1.0, 3)
    assert bootstrap([None, None]) is None
    coin = [float(i % 2) for i in range(400)]  # mean 0.5; standard error 0.025 -> a 95% interval about +-0.049
    ci = bootstrap(coin, seed=1)
    assert ci.low < 0.5 < ci.high and ci.high - ci.low == pytest.approx(0.098, abs=0.015)
    assert bootstrap(coin, seed=1) == ci  # deterministic
    assert bootstrap([1.0, None, 0.0]).n == 2


def test_paired_bootstrap_cancels_what_the_modes_share():
    base = [float(i % 5) / 4 for i in range(200)]
    assert paired_bootstrap(base, base) == Interval(0.0, 0.0, 0.0, 200)
    better = [v + 0.1 for v in base]  # the same questions, each 0.1 better: no uncertainty left in the difference
    d = paired_bootstrap(better, base)
    assert d.value == pytest.approx(0.1) and d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1)
    assert paired_bootstrap([1.0, None], [None, 0.0]) is None
    assert paired_bootstrap([1.0, 1.0, None], [0.0, 1.0, 0.0]).n == 2


def test_citation_markers_are_removed_before_correctness_is_scored():
    text = "Within 7 days [1]. Police within 24 hours [1, 3]."
    assert strip_citations(text) == "Within 7 days. Police within 24 hours."
    assert exact_match(strip_citations("7 days [2]"), ["7 days"]) == 1.0
    assert token_f1("7 days [2]", ["7 days"]) < 1.0  # the marker's digit counts against F1 unless stripped
