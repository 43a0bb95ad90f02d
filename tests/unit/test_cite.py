import pytest
from hypothesis import given
from hypothesis import strategies as st

from loradex.cite import parse_citations, support, verify

P1 = "Theft must be reported to the police within 24 hours and to Harbor Mutual within 7 days."
P2 = "Monthly premiums are collected by direct debit. The grace period for a missed payment is 14 days."


def test_parse_citation_forms():
    assert parse_citations("A [2]. B [1, 3]. C [1][4]. D [12]") == [2, 1, 3, 4, 12]
    assert parse_citations("no citations, [a] or [] or [2024] or [24 hours] or (1)") == []


def test_supported_sentence_is_verified_with_quote():
    v = verify("Report a theft to the police within 24 hours [1].", [P1, P2])
    assert [(c.n, c.verified) for c in v.checks] == [(1, True)]
    assert "police within 24 hours" in v.checks[0].quote
    assert v.flagged == [] and v.removed == []


def test_fabricated_number_fails():
    v = verify("Theft must be reported to the police within 48 hours [1].", [P1, P2])
    assert not v.checks[0].verified
    assert "number 48" in v.checks[0].reason
    assert v.flagged[0]["cited"] == [1]


def test_wrong_source_index_is_flagged_and_the_right_one_named():
    v = verify("The grace period for a missed payment is 14 days [1].", [P1, P2])
    assert not v.checks[0].verified
    assert v.flagged == [{"sentence": "The grace period for a missed payment is 14 days.", "cited": [1],
                          "supported_by": [2]}]


def test_quote_from_another_passage_is_not_verified():
    v = verify("Monthly premiums are collected by direct debit [1].", [P1, P2])
    assert not v.checks[0].verified and v.flagged[0]["supported_by"] == [2]


def test_citation_to_missing_source_is_removed():
    v = verify("Report theft within 7 days [1][5]. Pay by direct debit [9].", [P1, P2])
    assert v.removed == [5, 9]
    assert "[5]" not in v.text and "[9]" not in v.text and "[1]" in v.text
    assert v.cited == [1]


def test_paraphrase_passes_lexical_check_unrelated_claim_fails():
    assert support("Harbor Mutual must hear about a theft within 7 days", P1).ok
    s = support("Windscreen replacement is free at partner garages", P1)
    assert not s.ok and "lexical" in s.reason


def test_uncited_sentences_are_not_checked():
    v = verify("Hello. Report theft within 7 days [1].", [P1])
    assert len(v.checks) == 1 and v.checks[0].sentence == "Report theft within 7 days."


@given(st.text(max_size=200), st.lists(st.text(max_size=80), max_size=4))
def test_verification_never_keeps_a_citation_to_a_missing_source(answer, passages):
    v = verify(answer, passages)
    assert all(1 <= n <= len(passages) for n in parse_citations(v.text))
    assert all(1 <= c.n <= len(passages) for c in v.checks)


def test_attribution_adds_verified_citations_to_uncited_supported_sentences():
    answer = "The grace period for a missed payment is 14 days. Hello. Windscreens are free everywhere."
    v = verify(answer, [P1, P2], attribute=True)
    assert v.text == ("The grace period for a missed payment is 14 days. [2] Hello. "
                      "Windscreens are free everywhere.")
    assert [(c.n, c.verified, c.added) for c in v.checks] == [(2, True, True)]
    assert v.flagged == []
    # a model-made citation to a source that does not support the sentence is re-cited to the one that does,
    # marked as loradex's, the reason naming the model's number; without attribution it is only flagged
    v = verify("The grace period for a missed payment is 14 days [1].", [P1, P2], attribute=True)
    assert [(c.n, c.verified, c.added) for c in v.checks] == [(2, True, True)] and v.flagged == []
    assert v.text == "The grace period for a missed payment is 14 days. [2]"
    assert v.checks[0].reason.startswith("re-cited by loradex: [1] does not support it; ")
    v = verify("The grace period for a missed payment is 14 days [1].", [P1, P2])
    assert [(c.n, c.verified, c.added) for c in v.checks] == [(1, False, False)]
    assert v.flagged[0]["supported_by"] == [2]
    # a right citation stays the model's; a sentence no source supports keeps its number and is flagged
    v = verify("The grace period for a missed payment is 14 days [2]. Cats fly to Mars daily [1].", [P1, P2],
               attribute=True)
    assert [(c.n, c.verified, c.added) for c in v.checks] == [(2, True, False), (1, False, False)]
    assert v.flagged[0]["sentence"] == "Cats fly to Mars daily."


def test_drop_repeats_keeps_the_first_occurrence_and_the_layout():
    from loradex.cite import drop_repeats

    text = "Covered: YES\nWhy: Pipes are covered [1].\n- Why: pipes are covered [2].\nLimits: none.\nSee: [1]"
    assert drop_repeats(text) == ("Covered: YES\nWhy: Pipes are covered [1].\nLimits: none.\nSee: [1]",
                                  ["- Why: pipes are covered [2]."])
    assert drop_repeats("Call us. Call us. Yes. Yes. Done.") == ("Call us. Yes. Yes. Done.", ["Call us."])
    assert drop_repeats("No repeats here. None at all.") == ("No repeats here. None at all.", [])


def test_a_repeated_list_item_goes_with_its_number():
    from loradex.cite import drop_repeats

    text = "Yes, it is free. [1]\n1. Change it twice a year. [1]\n2. Change it twice a year. [1]\n3. Pick a day. [1]"
    assert drop_repeats(text)[0] == "Yes, it is free. [1]\n1. Change it twice a year. [1]\n3. Pick a day. [1]"


def test_a_stream_never_shows_a_repeated_line():
    from loradex.cite import RepeatFilter

    text = ("Yes, it is free. [1]\n1. Change it twice a year. [1]\n2. Change it twice a year. [1]\n\n"
            "3. Pick a day.\nFee: none")
    f = RepeatFilter()
    shown = "".join(f.feed(text[i:i + 5]) for i in range(0, len(text), 5)) + f.finish()
    assert shown == "Yes, it is free. [1]\n1. Change it twice a year. [1]\n\n3. Pick a day.\nFee: none"
    g = RepeatFilter()
    assert g.feed("Call us now.\nCall us") == "Call us now.\n" and g.finish() == "Call us"  # two words: not a repeat
    h = RepeatFilter()
    assert h.feed("Call us now.\n") and h.feed("Call us now.") == "" and h.finish() == ""


# The demo's policy answer (SmolLM2-135M with the policy adapter) said its Why line again as its Limits line,
# one "the" apart: a repeat is the same content, whatever its field label, list mark or filler words.
DEMO_POLICY = ("Covered: YES\n"
               "Why: Buildings cover includes the escape of water and oil, and theft and attempted theft, so it is "
               "not just about the pipe leak. [3]\n"
               "Limits: Buildings cover includes escape of water and oil, and theft and attempted theft, so it is "
               "not just about the pipe leak. [3]\n"
               "See: Home Policy: What Is Covered - Buildings cover [4]")


def test_a_line_said_again_under_another_label_is_a_repeat():
    from loradex.cite import RepeatFilter, drop_repeats
    from loradex.evaluate.metrics import repeats

    text, removed = drop_repeats(DEMO_POLICY)
    assert text.splitlines() == [DEMO_POLICY.splitlines()[i] for i in (0, 1, 3)]
    assert removed == [DEMO_POLICY.splitlines()[2]]
    assert repeats(DEMO_POLICY, times=2) and not repeats(text, times=2)
    f = RepeatFilter()  # streamed, by lines: the same lines are shown
    assert "".join(f.feed(DEMO_POLICY[i:i + 7]) for i in range(0, len(DEMO_POLICY), 7)) + f.finish() == text


@pytest.mark.parametrize("first,second,same", [
    ("1. Keep the receipts for the stolen bike and its lock. [1]",
     "3. Keep the receipts for your stolen bike and the lock. [2]", True),  # list mark, filler, citation
    ("Next steps: call the police within 24 hours and get a crime number.",
     "Summary: call the police within 24 hours and get a crime reference number.", False),  # labelled: words differ
    ("Call the police within 24 hours and get a crime number.",
     "Call the police within 24 hours and get a crime reference number.", True),  # one word added
    ("The excess is EUR 250 for storm claims.", "The excess is EUR 500 for storm claims.", False),  # numbers count
    ("Call the police within 24 hours.", "Call the insurer within 7 days.", False),
    ("Escape of water is covered.", "Escape of water is not covered.", False),  # a negation is a different claim
])
def test_near_repeats_by_content_words(first, second, same):
    from loradex.cite import drop_repeats

    text, removed = drop_repeats(f"{first}\n{second}")
    assert (text == first) is same and bool(removed) is same


# The demo's policy answer: a sentence assembled from an exclusions list ("cover is suspended: escape of water
# and oil; theft and attempted theft") was re-cited by loradex to that list, as 77% of its words were somewhere
# in the passage. A citation loradex adds must rest on one place in the source.
UNOCCUPIED = ("If your home is unoccupied for more than 60 consecutive days, the following cover is suspended from "
              "day 61 until someone is living there again:\n- escape of water and oil;\n- theft and attempted theft;\n"
              "- vandalism and malicious damage.\n\n## Buildings-only exclusions\n\n- Storm or flood damage to fences."
              "\n- The cost of repairing or replacing the pipe, tank or appliance that leaked (we cover the resulting "
              "damage, not the faulty item).")
BUILDINGS = ("Buildings means the structure of your home, its permanent fixtures and fittings. Buildings cover also "
             "includes:\n- Trace and access to find the source of a leak, up to EUR 5,000 per claim.")
MUDDLE = ("Buildings cover includes the escape of water and oil, and theft and attempted theft, so it is not just "
          "about the pipe leak. [2]")


def test_loradex_never_cites_words_scattered_over_a_passage():
    from loradex.cite import local_support

    claim = MUDDLE.removesuffix(" [2]")
    assert not local_support(claim, UNOCCUPIED).ok  # 77% of its words are in the passage, but not in one place
    v = verify(MUDDLE, [UNOCCUPIED, BUILDINGS], attribute=True)
    assert [(c.n, c.verified, c.added) for c in v.checks] == [(2, False, False)]  # kept as the model wrote it
    assert v.flagged and v.flagged[0]["cited"] == [2] and v.flagged[0]["supported_by"] == []
    # one place that says it is still found, and cited
    v = verify("We cover the resulting damage, not the faulty item.", [BUILDINGS, UNOCCUPIED], attribute=True)
    assert [(c.n, c.verified, c.added) for c in v.checks] == [(2, True, True)]


def test_a_labelled_field_may_restate_an_earlier_sentence_in_other_words():
    from loradex.cite import drop_repeats

    claims = ("Summary: Report the theft to the police within 24 hours and to Harbor Mutual within 7 days. [1]\n"
              "Steps:\n1. Call the claims line. [1]\n"
              "Deadline: Police within 24 hours; Harbor Mutual within 7 days. [1]")
    assert drop_repeats(claims) == (claims, [])  # the layout's Deadline field, not a loop
    twice = claims.replace("Deadline: Police within 24 hours; Harbor Mutual within 7 days.",
                           "Deadline: Report the theft to the police within 24 hours and to Harbor Mutual "
                           "within 7 days.")
    assert drop_repeats(twice)[1] == [twice.splitlines()[-1]]  # the same words under another label: a repeat


# The demo's policy answer said "Escape of water claims carry no excess." where the policy says EUR 500: every
# content word is in the source, the negation is the whole difference. Polarity is checked for its whole kind:
# a negated claim against a plain source, and a plain claim against a negated clause.
EXCESS = ("## Excess\n\nThe standard excess for home claims is EUR 250. Escape of water claims carry an excess of "
          "EUR 500 and subsidence claims EUR 1,000.")
LEVELS = ("Theft of the car itself is covered under Third Party, Fire and Theft and Comprehensive motor policies. "
          "Third Party Only policies do not cover theft.")


@pytest.mark.parametrize(("claim", "passage", "ok"), [
    ("Escape of water claims carry no excess.", EXCESS, False),
    ("Escape of water claims carry an excess of EUR 500.", EXCESS, True),
    ("Escape of water claims don't carry an excess.", EXCESS, False),
    ("Third Party Only policies cover theft.", LEVELS, False),
    ("Third Party Only policies do not cover theft.", LEVELS, True),
    ("Third Party Only policies never cover theft.", LEVELS, True),
    # a negation elsewhere in the sentence is not the claim's: the clause it matches decides
    ("Your no-claims discount is protected.", "You pay no excess and your no-claims discount is protected.", True),
    # an item of a list under an exclusions heading says "not covered" without the word
    ("Storm damage to fences is not covered.", "## Buildings-only exclusions\n\n- Storm or flood damage to fences.",
     True),
    ("Storm damage to fences is not covered.", "## Buildings cover\n\n- Storm or flood damage to fences.", False),
    # a negation in another clause of the sentence is not the claim's (a new user's "The Privacy Policy is not
    # updated." had been verified against a sentence whose "cannot" was about something else)
    ("The privacy policy is not updated.",
     "If we cannot make the changes you want, we will update the privacy policy.", False),
    ("We cannot make the changes you want.",
     "If we cannot make the changes you want, we will update the privacy policy.", True),
    ("Contents does not cover drones.", "Contents does not cover motor vehicles, caravans, trailers, boats, drones.",
     True),
    # a condition first, the negation after it: the claim shares as many words with each part
    ("We do not pay for stolen car keys.", "If your car is stolen, we do not pay for the keys.", True),
    # a possessive is not a new clause's subject: an exact quote of a negated source stays verified
    ("not part of The Atlantic or its subsidiaries or related entities",
     "We will not disclose it to any organizations not part of The Atlantic or its subsidiaries or related entities.",
     True),
])
def test_a_citation_is_not_verified_when_the_claim_and_its_source_disagree_in_polarity(claim, passage, ok):
    s = support(claim, passage)
    assert s.ok is ok, s.reason
    if not ok:
        assert "negated" in s.reason
    v = verify(f"{claim} [1]", [passage])
    assert bool(v.flagged) is not ok


@pytest.mark.parametrize("text, expected", [
    # a new user saw "…subject to the U. [4]S. Department of Commerce…": loradex cited half an abbreviation
    ("The policy follows the U.S. Department of Commerce principles. It applies to apps.",
     ["The policy follows the U.S. Department of Commerce principles.", "It applies to apps."]),
    ("The privacy policy of Live N.T. applies here. See the site.",
     ["The privacy policy of Live N.T. applies here.", "See the site."]),
    ("Pay by e.g. a bank transfer, i.e. not cash. Fine.", ["Pay by e.g. a bank transfer, i.e. not cash.", "Fine."]),
    ("The excess is EUR 1.5 thousand. Dr. Lee agreed.", ["The excess is EUR 1.5 thousand.", "Dr. Lee agreed."]),
    ("It is covered in the U.S. [1] Not elsewhere. [2]", ["It is covered in the U.S. [1]", "Not elsewhere. [2]"]),
    ("Is it covered? No. We pay EUR 2,500.", ["Is it covered?", "No.", "We pay EUR 2,500."]),
    # an abbreviation or title that ends a sentence, before a word that opens one
    ("It is covered in the U.S. The UK is not.", ["It is covered in the U.S.", "The UK is not."]),
    ("Our office is on Main St. We open at 9.", ["Our office is on Main St.", "We open at 9."]),
    ("Ask Dr. Theo Lee. Fine.", ["Ask Dr. Theo Lee.", "Fine."]),
    # a second new user saw "The privacy policy of theatlantic. [4]com is designed..."
    ("Visit theatlantic.com for details. Fine.", ["Visit theatlantic.com for details.", "Fine."]),
    ("Write to help@example.co.uk or www.site.com. Then wait.",
     ["Write to help@example.co.uk or www.site.com.", "Then wait."]),
    ("See Fig. 2 and No. 5 for it. No. We pay.", ["See Fig. 2 and No. 5 for it.", "No.", "We pay."]),
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),  # the quote stays with its sentence
])
def test_sentences_do_not_end_inside_abbreviations_or_numbers(text, expected):
    from loradex.cite import sentences

    assert sentences(text) == expected


def test_attribution_cites_a_sentence_with_an_abbreviation_after_it_not_inside():
    passage = "Transfers follow the U.S. Department of Commerce Safe Harbor principles of notice and choice."
    v = verify("Transfers follow the U.S. Department of Commerce Safe Harbor principles.", [passage], attribute=True)
    assert v.text == "Transfers follow the U.S. Department of Commerce Safe Harbor principles. [1]"
