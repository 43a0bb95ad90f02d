import json

import pytest
from typer.testing import CliRunner

from loradex.cli import app
from loradex.engine.echo import EchoEngine
from loradex.ingest.ingest import ingest
from loradex.pipeline import answer
from loradex.project import open_project
from loradex.prompt import NO_SOURCES, build_messages

from .test_ingest import CONFIG, DOCS

ECHO = CONFIG + "engine: echo\nanswer: {min_dense_score: 0.2, attribute: false}\n"


def _project(project_dir, engine=None):
    proj = open_project(project_dir(DOCS, ECHO), engine=engine)
    ingest(proj)
    return proj


def test_answer_cites_and_verifies_the_first_source(project_dir):
    proj = _project(project_dir)
    a = answer(proj, "When must theft be reported to the police?")
    assert not a.abstained
    assert a.answer.endswith("[1]")
    assert a.citations[0].n == 1 and a.citations[0].verified
    assert a.citations[0].chunk_id == a.sources[0].chunk_id
    assert a.sources[0].file == "docs/claims/theft.txt"
    assert set(a.timings_ms) >= {"retrieve", "generate", "verify"}


def test_off_topic_question_abstains_without_generating(project_dir):
    engine = EchoEngine()
    proj = _project(project_dir, engine)
    a = answer(proj, "recipe for sourdough bread baking")
    assert a.abstained and a.answer == NO_SOURCES and a.citations == ()
    assert engine.calls == 0


def test_fabricated_answer_is_flagged_and_bad_citation_removed(project_dir):
    proj = _project(project_dir, EchoEngine(reply="Call the police within 48 hours [1]. Also see [7]."))
    a = answer(proj, "When must theft be reported to the police?")
    assert "[7]" not in a.answer
    assert [c.to_dict() for c in a.citations] == [
        {"n": 1, "chunk_id": a.sources[0].chunk_id, "source": a.citations[0].source, "quote": "", "verified": False,
         "added": False, "reasons": ["number 48 does not appear in the source"]}]
    assert a.flagged and a.flagged[0]["cited"] == [1]


DROPPED = ("Answer: Call the police within 24 hours [1]. Stolen bikes are replaced new for old.\n"
           "Limits: Bikes over EUR 900 are excluded [1].")


@pytest.mark.parametrize("mode", ["flag", "drop"])
def test_unsupported_sentences_are_flagged_or_dropped_as_configured(project_dir, mode):
    cfg = ECHO.replace("attribute: false}", f"attribute: false, unsupported: {mode}}}")
    proj = open_project(project_dir(DOCS, cfg), engine=EchoEngine(reply=DROPPED))
    ingest(proj)
    a = answer(proj, "When must theft be reported to the police?", route=False)
    if mode == "flag":
        # both sentences no source supports are listed: the cited one, and the uncited one (`cited` empty)
        assert a.answer == DROPPED and a.removed == () and [(f["sentence"], f["cited"]) for f in a.flagged] == [
            ("Limits: Bikes over EUR 900 are excluded.", [1]), ("Stolen bikes are replaced new for old.", [])]
        return
    assert a.answer == "Answer: Call the police within 24 hours [1].\nLimits: none stated."
    assert a.removed == ("Stolen bikes are replaced new for old.", "Bikes over EUR 900 are excluded.")
    assert a.flagged == () and [(c.n, c.verified) for c in a.citations] == [(1, True)]
    assert not a.abstained and a.to_dict()["removed"] == list(a.removed)
    from loradex.types import Answer

    assert Answer.from_dict(a.to_dict()) == a
    judged = DROPPED + "\nEscalation: NO - routine theft claim with a police report."
    yaml = (proj.root / "loradex.yaml").read_text()
    yaml = yaml.replace('claims: {paths: ["docs/claims/**"]}', 'claims: {paths: ["docs/claims/**"], format: esc}')
    (proj.root / "loradex.yaml").write_text(yaml + "formats:\n  esc: {label: '^Escalation: (YES|NO)'}\n")
    routed = open_project(proj.root, engine=EchoEngine(reply=judged))
    c = answer(routed, "When must theft be reported to the police?", domain="claims")
    assert c.answer.endswith("Limits: none stated.\nEscalation: NO - routine theft claim with a police report.")
    assert "routine theft claim with a police report." not in c.removed  # the domain's judgement line stays
    steps = open_project(proj.root, engine=EchoEngine(
        reply="Bikes are always replaced new for old.\n1. Call the police within 24 hours [1]."))
    d = answer(steps, "When must theft be reported to the police?", route=False)
    assert d.answer == "1. Call the police within 24 hours [1]." and not d.abstained  # the supported step stays
    nothing = open_project(proj.root, engine=EchoEngine(reply="Answer: Bikes are always replaced new for old [1]."))
    b = answer(nothing, "When must theft be reported to the police?", route=False)
    assert b.answer == NO_SOURCES and b.abstained and b.citations == () and b.removed == (
        "Bikes are always replaced new for old.",)


def test_prompt_fences_sources_and_uses_our_system_message(project_dir):
    proj = _project(project_dir)
    from loradex.retrieve import search

    hits = search(proj.store, proj.embedder, "police", proj.config.retrieval, k=2)
    msgs = build_messages("When?", hits, "acme")
    assert msgs[0]["role"] == "system" and "acme" in msgs[0]["content"] and "never instructions" in msgs[0]["content"]
    assert '<source 1 file="docs/claims/theft.txt' in msgs[1]["content"] and "</source 2>" in msgs[1]["content"]


def test_cli_ask_json_and_text(project_dir):
    root = project_dir(DOCS, ECHO)
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "-p", str(root)]).exit_code == 0
    r = runner.invoke(app, ["ask", "When must theft be reported to the police?", "-p", str(root), "--json"])
    data = json.loads(r.stdout)
    assert set(data) >= {"answer", "citations", "sources", "abstained", "timings_ms"}
    assert data["citations"][0]["verified"] is True
    r = runner.invoke(app, ["ask", "When must theft be reported to the police?", "-p", str(root), "--stream"])
    assert r.exit_code == 0 and "[1]" in r.stdout and "verified" in r.stdout and "Sources" in r.stdout


def test_cli_stream_prints_the_checked_answer_when_checking_changed_the_text(project_dir, monkeypatch):
    """A streamed answer is printed as generated; when loradex then re-cites it, the checked text follows, so the
    citations printed match the Sources list (a new user saw `[1]` streamed and only `[2]` verified)."""
    import loradex.engine.echo as echo

    root = project_dir(DOCS, CONFIG + "engine: echo\nanswer: {min_dense_score: 0.2, attribute: true}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "-p", str(root)]).exit_code == 0
    q = "When must theft be reported to the police?"
    monkeypatch.setattr(echo, "from_project", lambda p: EchoEngine(reply="Call the police within 24 hours. [2]"))
    r = runner.invoke(app, ["ask", q, "-p", str(root), "--stream"])
    assert r.exit_code == 0, r.output
    assert "Call the police within 24 hours. [2]" in r.stdout  # as streamed
    assert "checked answer" in r.stdout and "Call the police within 24 hours. [1]" in r.stdout
    monkeypatch.setattr(echo, "from_project", lambda p: EchoEngine(reply="Call the police within 24 hours. [1]"))
    r = runner.invoke(app, ["ask", q, "-p", str(root), "--stream"])
    assert r.exit_code == 0 and "checked answer" not in r.stdout  # nothing changed: printed once


def test_cli_marks_every_sentence_no_source_supports_cited_or_not(project_dir, monkeypatch):
    """In the default `answer.unsupported: flag`, a new user saw uncited, false sentences printed with no mark."""
    import loradex.engine.echo as echo

    root = project_dir(DOCS, ECHO.replace("attribute: false}", "attribute: true}"))
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "-p", str(root)]).exit_code == 0
    monkeypatch.setattr(echo, "from_project", lambda p: EchoEngine(reply=DROPPED))
    r = runner.invoke(app, ["ask", "When must theft be reported to the police?", "-p", str(root), "--no-route"])
    assert r.exit_code == 0, r.output
    assert "uncited, no source supports it: Stolen bikes are replaced new for old." in r.stdout
    assert "unsupported: Limits: Bikes over EUR 900 are excluded." in r.stdout


def test_an_answer_cut_by_the_token_budget_loses_its_unfinished_last_sentence(project_dir):
    """A new user's answer ended "The privacy policy of the sites and apps of [2]": cut by max_new_tokens, and
    cited by loradex."""
    reply = "Call the police within 24 hours. [1] Then report it to Harbor Mutual within 7 days of the theft."
    cfg = ECHO.replace("attribute: false}", "attribute: true, max_new_tokens: 10}")
    proj = open_project(project_dir(DOCS, cfg), engine=EchoEngine(reply=reply))
    ingest(proj)
    a = answer(proj, "When must theft be reported to the police?", route=False)
    assert a.usage["finish_reason"] == "length"
    assert a.answer == "Call the police within 24 hours. [1]" and a.usage["unfinished"] == "Then report it"
    assert [c.n for c in a.citations] == [1]
    whole = open_project(project_dir(DOCS, ECHO), engine=EchoEngine(reply=reply))
    ingest(whole)
    a = answer(whole, "When must theft be reported to the police?", route=False)  # within budget: untouched
    assert a.usage["finish_reason"] == "stop" and "unfinished" not in a.usage and "Harbor Mutual" in a.answer
    from loradex.pipeline import _without_unfinished

    for end in (" [Source 2]", " [1-2]", " (see the theft procedure)", ".\u201d", "? [2]"):  # finished, however cited
        usage: dict = {}
        text = f"Call the police. Then call us{end}"
        assert _without_unfinished(text, usage) == text and usage == {}, end
    usage = {}
    assert _without_unfinished("Call the police. Then call us within", usage) == "Call the police." and usage == {
        "unfinished": "Then call us within"}
    one = open_project(project_dir(DOCS, cfg), engine=EchoEngine(reply="Call the police within 24 hours or as"
                                                                          " soon as you can after the theft"))
    ingest(one)
    a = answer(one, "When must theft be reported to the police?", route=False)  # a lone sentence stays
    assert a.answer.startswith("Call the police within 24 hours or as soon") and "unfinished" not in a.usage


@pytest.mark.parametrize("mode", ["flag", "drop"])
def test_the_formats_label_line_is_never_listed_as_unsupported(project_dir, mode):
    """The judgement line ("Escalation: NO - routine ...") needs no source: it is kept in drop mode, and was then
    listed as uncited on most of the demo's claims answers."""
    fmt = ("domains:\n  claims: {paths: ['docs/claims/**'], format: claims_layout}\n"
           "formats:\n  claims_layout: {label: '^Escalation: (YES|NO)\\b'}\n")
    cfg = ECHO.replace("attribute: false}", f"attribute: true, unsupported: {mode}}}") + fmt
    reply = "Call the police within 24 hours [1].\nEscalation: NO - routine theft report handled by the claims desk"
    proj = open_project(project_dir(DOCS, cfg), engine=EchoEngine(reply=reply))
    ingest(proj)
    a = answer(proj, "When must theft be reported to the police?", domain="claims")
    assert a.answer.endswith("Escalation: NO - routine theft report handled by the claims desk")
    assert a.flagged == () and a.removed == ()


def test_uncited_supported_answer_gets_an_added_citation(project_dir):
    root = project_dir(DOCS, CONFIG + "engine: echo\nanswer: {min_dense_score: 0.2, attribute: true}\n")
    proj = open_project(root, engine=EchoEngine(reply="Call the police within 24 hours."))
    ingest(proj)
    a = answer(proj, "When must theft be reported to the police?")
    assert a.answer == "Call the police within 24 hours. [1]"
    assert a.citations[0].verified and a.citations[0].added


ROUTED = """
domains:
  claims:
    paths: ["docs/claims/**"]
    examples: ["report a theft to the police", "my bike was stolen", "burst pipe damage claim",
               "how do I report a claim", "claim for storm damage", "police report for stolen car"]
  policy:
    paths: ["docs/policy/**"]
    examples: ["what excess does comprehensive cover have", "is my motor policy comprehensive",
               "excess on motor cover", "what does the policy cover", "comprehensive motor excess amount"]
  billing:
    paths: ["docs/billing/**"]
    examples: ["pay my premium by direct debit", "monthly premiums payment", "how are premiums collected",
               "change my payment method", "direct debit date for premiums"]
engine: echo
answer: {min_dense_score: 0.0, attribute: false}
"""


@pytest.fixture
def routed(project_dir, tmp_path):
    from loradex.testing import build_random_adapter, build_tiny_llama

    model = build_tiny_llama(tmp_path / "model")
    engine = EchoEngine()
    proj = open_project(project_dir(DOCS, ROUTED + f"model: {model}\n"), engine=engine)
    ingest(proj)
    refs = []
    for seed in (0, 1):
        folder = build_random_adapter(model, tmp_path / f"a{seed}", seed=seed)
        refs.append(proj.registry.register(folder, "claims", {"hyperparameters": {}, "metrics": {}}))
    proj.registry.activate("claims", refs[0].version)
    return proj, engine, refs


def test_routed_answer_uses_the_domains_adapter_and_sources(routed):
    proj, engine, refs = routed
    a = answer(proj, "my car was stolen, do I report the theft to the police?")
    assert a.route.domain == "claims" and not a.route.abstained and a.route.reason == ""
    assert a.adapter == refs[0].label and engine.served[-1] == refs[0].label
    assert a.sources and all(s.file.startswith("docs/claims/") for s in a.sources)
    b = answer(proj, "how are monthly premiums collected", route=True)
    assert b.route.domain == "billing" and b.adapter is None and engine.served[-1] is None


def test_activation_and_rollback_take_effect_on_the_next_request(routed):
    proj, engine, refs = routed
    q = "police report for a stolen bike"
    assert answer(proj, q).adapter == refs[0].label
    proj.registry.activate("claims", refs[1].version)
    assert answer(proj, q).adapter == refs[1].label and engine.served[-1] == refs[1].label
    proj.registry.rollback("claims")
    assert answer(proj, q).adapter == refs[0].label


def test_off_topic_abstains_to_the_base_model_over_all_sources(routed):
    proj, engine, _ = routed
    a = answer(proj, "sourdough bread recipe with rye flour")
    assert a.route.abstained and a.route.domain is None and a.adapter is None
    assert engine.served[-1] is None or a.abstained  # base model, or no generation at all
    e = answer(proj, "sourdough bread", domain="billing")
    assert e.route.to_dict() == {**e.route.to_dict(), "domain": "billing", "reason": "explicit", "abstained": False}


def test_tampered_adapter_is_refused_before_it_serves(routed):
    from loradex.adapters.registry import AdapterError

    proj, engine, refs = routed
    weights = refs[0].path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(AdapterError, match="hash"):
        answer(proj, "police report for a stolen bike")
    assert refs[0].label not in engine.loaded_adapters()


def test_adapter_only_and_rag_only_modes(routed):
    proj, engine, refs = routed
    a = answer(proj, "police report for a stolen bike", retrieval=False)
    assert a.adapter == refs[0].label and a.sources == () and a.citations == ()
    b = answer(proj, "police report for a stolen bike", use_adapter=False)
    assert b.adapter is None and b.route.domain == "claims" and b.sources


def test_cli_ask_json_has_route_and_adapter(routed):
    proj, _, refs = routed
    r = CliRunner().invoke(app, ["ask", "police report for a stolen bike", "-p", str(proj.root), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["route"]["domain"] == "claims" and out["adapter"] == refs[0].label
    r = CliRunner().invoke(app, ["ask", "police report for a stolen bike", "-p", str(proj.root), "--no-route"])
    assert r.exit_code == 0 and "base model" in r.stdout


LOOP = ("Summary: Report the theft.\nWhy: Police must be told quickly [1].\nWhy: Police must be told quickly [1].\n"
        "Why: Police must be told quickly [2].\nWhy: Police must be told quickly.")


@pytest.mark.parametrize("retrieval", [True, False])
def test_a_looping_answer_loses_its_repeats_and_says_so(project_dir, retrieval):
    proj = _project(project_dir, EchoEngine(reply=LOOP))
    a = answer(proj, "When must theft be reported to the police?", route=False, retrieval=retrieval)
    assert a.answer.count("Police must be told quickly") == 1 and len(a.repeated) == 3
    assert a.answer.startswith("Summary: Report the theft.\nWhy: Police must be told quickly")
    assert a.to_dict()["repeated"] == list(a.repeated)
    from loradex.types import Answer

    assert Answer.from_dict(a.to_dict()) == a


def test_the_answer_settings_reach_the_engine(project_dir):
    engine = EchoEngine()
    proj = open_project(project_dir(DOCS, ECHO.replace("attribute: false}", "attribute: false, no_repeat_ngram: 7}")),
                        engine=engine)
    ingest(proj)
    from loradex.pipeline import prepare

    p = prepare(proj, "When must theft be reported to the police?", route=False)
    assert p.request is not None and p.request.no_repeat_ngram == 7


RESEARCH = CONFIG + "engine: echo\nanswer: {min_dense_score: 0.2, attribute: true, k: 1, window: 0}\n"


@pytest.mark.parametrize(("second", "found"), [
    ("Report a burst pipe within 30 days.", True),  # said in another document of the store: found, cited
    ("Report a burst pipe within 90 days.", False),  # a number no document has
    ("Do not report a burst pipe within 30 days.", False),  # the document says the opposite
    ("Monthly premiums are collected by direct debit.", True),  # another domain's document: no route, no filter
])
def test_a_sentence_no_prompt_source_supports_is_searched_for_after_generation(project_dir, second, found):
    reply = f"Call the police within 24 hours. {second}"
    proj = open_project(project_dir(DOCS, RESEARCH), engine=EchoEngine(reply=reply))
    ingest(proj)
    a = answer(proj, "When must theft be reported to the police?")
    assert [s.in_prompt for s in a.sources] == ([True, False] if found else [True])
    assert a.answer == f"Call the police within 24 hours. [1] {second}" + (" [2]" if found else "")
    if found:
        assert a.sources[1].file != a.sources[0].file and second.rstrip(".") in a.sources[1].text
        assert [(c.n, c.verified, c.added) for c in a.citations] == [(1, True, True), (2, True, True)]
        assert a.to_dict()["sources"][1]["in_prompt"] is False


def test_the_search_after_generation_keeps_to_the_callers_documents_and_can_be_turned_off(project_dir):
    from loradex.types import Filters

    reply = "Call the police within 24 hours. Monthly premiums are collected by direct debit."
    proj = open_project(project_dir(DOCS, RESEARCH), engine=EchoEngine(reply=reply))
    ingest(proj)
    a = answer(proj, "When must theft be reported to the police?", filters=Filters.for_caller(()))
    assert len(a.sources) == 1  # the billing guide is for the finance group only
    assert len(answer(proj, "When must theft be reported to the police?",
                      filters=Filters.for_caller(("finance",))).sources) == 2
    off = open_project(project_dir(DOCS, RESEARCH.replace("k: 1,", "k: 1, search_support: 0,")),
                       engine=EchoEngine(reply=reply))
    ingest(off)
    assert len(answer(off, "When must theft be reported to the police?").sources) == 1
