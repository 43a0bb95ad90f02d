"""One citation grammar (issue 19, kind 4): every form a model writes goes through `CITATION` into the same checks,
and a citation to a missing source is removed whatever its form."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loradex.cite import canonical_citations, parse_citations, repeat_key, sentences, verify
from loradex.evaluate.metrics import citation_scores

PASSAGES = ["Report a theft to the police within 24 hours and keep the crime reference number.",
            "Tell Harbor Mutual within 7 days of discovering the loss."]


@pytest.mark.parametrize("form", ["[Source 7]", "(Source 7)", "[7]", "[source: 7]", "【7】", "［7］", "[^7]",
                                  "(see passage 7)", "[Doc #7]"])
def test_a_citation_to_a_missing_source_is_removed_whatever_its_form(form):
    # the handed case: "... within 24 hours [Source 7]." with two sources was neither checked nor removed
    v = verify(f"Report a theft to the police within 24 hours {form}.", PASSAGES)
    assert v.removed == [7]
    assert v.text == "Report a theft to the police within 24 hours."
    assert v.checks == []


def test_a_list_keeps_its_existing_sources_and_loses_the_missing_one():
    v = verify("Report a theft to the police within 24 hours [1; 7].", PASSAGES)
    assert v.removed == [7]
    assert v.text == "Report a theft to the police within 24 hours [1]."
    assert [(c.n, c.verified) for c in v.checks] == [(1, True)]


@pytest.mark.parametrize("form, numbers", [
    ("[Source 1]", [1]), ("(Sources 1 and 2)", [1, 2]), ("[1; 2]", [1, 2]), ("[1-2]", [1, 2]),
    ("[1\u20132]", [1, 2]), ("[Sources 1 to 2]", [1, 2]), ("\u30101\u3011\uff3b2\uff3d", [1, 2]),
    ("[Source 1, Source 2]", [1, 2]), ("[^1][^2]", [1, 2]), ("[Passages 1 & 2]", [1, 2])])
def test_every_form_reaches_the_same_checks(form, numbers):
    v = verify(f"Report a theft to the police within 24 hours {form}.", PASSAGES)
    assert v.removed == []
    assert [c.n for c in v.checks] == numbers
    assert v.checks[0].verified is True  # source 1 quotes the sentence
    assert v.text.endswith(f"[{', '.join(map(str, numbers))}].")


def test_footnote_superscripts_cite_but_units_do_not():
    assert parse_citations("Report it within 24 hours.\u00b9 Then tell Harbor Mutual\u00b2\u02d2\u00b3") == [1, 2, 3]
    assert parse_citations("A floor of 12 m\u00b2 or 3 km\u00b2 of land") == []
    v = verify("Tell Harbor Mutual within 7 days of discovering the loss.\u00b2", PASSAGES)
    assert [(c.n, c.verified) for c in v.checks] == [(2, True)]


def test_a_wide_range_counts_its_ends_only():
    assert parse_citations("[1-300]") == [1, 300]
    assert parse_citations("[3-1]") == [3, 1]


def test_bracketed_text_that_is_not_a_citation_is_left_alone():
    text = "Pay [2024 rates] by [24 hours] or see [Section 4] and [a]."
    assert parse_citations(text) == []
    assert canonical_citations(text) == text


def test_a_trailing_citation_of_any_form_stays_with_its_sentence():
    assert sentences("Report it now. (Source 1) Then call.\u00b9 Done.") == [
        "Report it now. (Source 1)", "Then call.\u00b9", "Done."]


def test_repeats_are_the_same_sentence_whatever_their_citation_form():
    assert repeat_key("Call the police [Source 1].") == repeat_key("Call the police [1].")


def test_citation_metrics_read_every_form():
    with_words = citation_scores("Report a theft to the police within 24 hours [Source 1].", PASSAGES)
    plain = citation_scores("Report a theft to the police within 24 hours [1].", PASSAGES)
    assert with_words == plain
    assert with_words.recall == 1.0 and with_words.precision == 1.0


FORMS = [lambda ns: "".join(f"[{n}]" for n in ns), lambda ns: f"[{', '.join(map(str, ns))}]",
         lambda ns: f"[{'; '.join(map(str, ns))}]", lambda ns: f"(Sources {' and '.join(map(str, ns))})",
         lambda ns: f"[Source {', Source '.join(map(str, ns))}]", lambda ns: "".join(f"\u3010{n}\u3011" for n in ns)]


@given(st.lists(st.integers(1, 999), min_size=1, max_size=5, unique=True), st.sampled_from(FORMS))
def test_every_form_parses_back_to_its_numbers(numbers, form):
    text = f"A sentence {form(numbers)}."
    assert parse_citations(text) == numbers
    assert canonical_citations(text) == f"A sentence [{', '.join(map(str, numbers))}]."
