"""`loradex decide` on constructed projects (echo engine, hashing embedder): a domain whose documents change
often, an adapter trained on 20 examples, an adapter that adds nothing, one that memorised document facts."""
import json

import pytest
from typer.testing import CliRunner

from loradex.cli import app
from loradex.config import CapabilityConfig
from loradex.errors import ConfigError, QueryError
from loradex.evaluate.decide import card, decide, document_changes, probe
from loradex.ingest.ingest import ingest
from loradex.project import open_project
from loradex.testing import build_random_adapter, build_tiny_llama

from .test_ingest import DOCS
from .test_pipeline import ECHO

FORMATS = """
formats:
  one_line: {max_chars: 200, pattern: "\\\\[1\\\\]"}
"""
QUESTIONS = [
    {"id": "theft", "question": "When must theft be reported to the police?", "answer": "within 24 hours",
     "domain": "claims", "format": "one_line"},
    {"id": "pipe", "question": "How long do I have to report a burst pipe?", "answer": "within 30 days",
     "domain": "claims", "format": "one_line"},
    {"id": "excess", "question": "What is the excess on comprehensive motor cover?", "answer": "EUR 300",
     "domain": "policy"},
]


def _project(project_dir, capabilities: str, extra: str = ""):
    root = project_dir(DOCS, ECHO + FORMATS + extra + "capabilities:\n" + capabilities)
    (root / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    proj = open_project(root)
    ingest(proj)
    return proj


def test_documents_that_change_often_are_inferred_to_change_and_contradict_a_stated_no(project_dir):
    proj = _project(project_dir, "  procedures: {domains: [claims], questions: q.jsonl, "
                                 "answers: {changes_over_time: false}}\n")
    assert document_changes(proj, ["claims"])["changed"] == 0
    for hours in (12, 6, 3):
        (proj.root / "docs/claims/theft.txt").write_text(f"Theft\n\nCall the police within {hours} hours.\n")
        ingest(proj)
    ingest(proj)  # nothing changed: no new version
    assert document_changes(proj, ["claims"]) | {"span_days": 0} == {"documents": 2, "changed": 1, "changes": 3,
                                                                      "span_days": 0}
    assert document_changes(proj, ["policy"])["changed"] == 0
    (c,), rows, questions = decide(proj)
    assert {q.id for q in questions} == {"theft", "pipe"} and {r["mode"] for r in rows} == {"base", "rag", "adapter",
                                                                                           "hybrid"}
    a = c["answers"]
    assert a["changes_over_time"]["source"] == "stated" and a["changes_over_time"]["answer"] is False
    assert c["disagreements"] == ["you said it does not change over time, but 1 of 2 documents changed across "
                                  "ingests (3 new versions over 0.0 days)"]
    # measured: the echo engine answers from source 1 with sources (contains the reference) and abstains without
    assert a["factual_lookup"] == {"answer": True, "source": "measured", "evidence": (
        "sources raise containing the reference: base 0.00 -> rag 1.00, difference +1.00 [+1.00, +1.00], n=2")}
    assert a["must_cite"]["source"] == "inferred" and a["must_cite"]["answer"] is True
    assert c["recommendation"] == "retrieval" and "adapter" not in c["parts"]


@pytest.fixture
def tiny_project(project_dir, tmp_path):
    model = build_tiny_llama(tmp_path / "tiny")
    proj = _project(project_dir, "  tone: {domains: [claims], questions: q.jsonl, answers: {format_or_style: true}}\n",
                    f"model: {model}\n")
    adapter = build_random_adapter(model, tmp_path / "adapter")
    metrics = {"train_examples": 23, "eval_examples": 2, "replay_examples": 5}  # 20 of the domain's own
    ref = proj.registry.register(adapter, "claims", {"metrics": metrics})
    proj.registry.activate("claims", ref.version)
    return proj


def test_an_adapter_on_20_examples_that_adds_nothing_is_said_so(tiny_project):
    (c,), _, _ = decide(tiny_project, ["tone"])
    assert c["examples"] == {"claims": 20}
    assert any("claims 20 against the rule of thumb of about 500" in n for n in c["notes"])
    # the echo engine ignores adapters: hybrid answers as rag does, so the adapter cannot change format adherence
    assert c["probes"]["format_gain"] == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 2}
    assert c["disagreements"] == ["you said it is format or style, but the adapter does not raise format adherence "
                                  "(the interval includes 0): rag 1.00 -> hybrid 1.00, difference +0.00 "
                                  "[+0.00, +0.00], n=2"]
    assert c["recommendation"] == "both" and c["parts"]["adapter"] == "how it should answer: it is format or style"


def test_an_adapter_that_states_document_facts_without_sources_is_flagged():
    """Constructed rows: the adapter alone contains the reference where the base model does not."""
    ids = [f"q{i}" for i in range(8)]

    def row(i, mode, contains):
        return {"id": i, "mode": mode, "metrics": {"contains_answer": contains, "format_ok": None,
                                                   "label_accuracy": None, "verified_citation": None}}
    rows = [row(i, "base", 0.0) for i in ids] + [row(i, "adapter", 1.0) for i in ids] + \
        [row(i, "rag", 1.0) for i in ids] + [row(i, "hybrid", 1.0) for i in ids]
    cap = CapabilityConfig(domains=["claims"], targets={"contains_answer": 0.8})
    from loradex.evaluate.questions import Question

    p = probe(rows, [Question(i, "q?") for i in ids], cap.targets)
    assert p["memorisation"]["low"] > 0 and p["meets_targets"] == {"contains_answer": True}
    c = card("facts", cap, {"documents": 3, "changed": 0, "changes": 0, "span_days": 0.0}, {"claims": 600}, True, p)
    assert any(n.startswith("the adapter states document facts with no sources (+1.00") for n in c["notes"])
    assert any(n.startswith("retrieval alone already meets every target: contains_answer 1.00 >= 0.8")
               for n in c["notes"])
    assert c["answers"]["format_or_style"]["source"] == "unknown"  # no format check on these questions
    assert c["answers"]["changes_over_time"] == {"answer": None, "source": "unknown", "evidence": (
        "none of the 3 documents has changed across ingests yet")}


def test_cli_decide_prints_cards_writes_the_report_and_refuses_unknown_names(tiny_project, tmp_path):
    root = str(tiny_project.root)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["decide", "-p", root, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "tone (claims): both" in r.output and "disagreement: you said it is format or style" in r.output
    assert json.loads((out / "cards.json").read_text())[0]["capability"] == "tone"
    assert "Retrieval or adapter? (loradex decide)" in (out / "report.html").read_text()
    cards = json.loads(CliRunner().invoke(app, ["decide", "tone", "-p", root, "--json"]).stdout)["cards"]
    assert cards[0]["recommendation"] == "both"
    one = json.loads(CliRunner().invoke(app, ["decide", "-p", root, "--json", "--limit", "1"]).stdout)["cards"]
    assert one[0]["probes"]["questions"] == 1
    # one question is too few to measure anything: its bootstrap interval is a point (a new user saw a "measured"
    # answer from n=1)
    assert {a["source"] for a in one[0]["answers"].values()} <= {"stated", "inferred", "unknown"}
    assert "too few questions to tell (n=1" in one[0]["answers"]["format_or_style"]["evidence"]
    bad = CliRunner().invoke(app, ["decide", "nope", "-p", root])
    assert bad.exit_code != 0 and "unknown capability nope; the project has tone" in bad.output
    # `loradex eval` on the capability's file carries the same cards in its report
    r = CliRunner().invoke(app, ["eval", str(tiny_project.root / "q.jsonl"), "-p", root, "--modes", "rag,hybrid",
                                 "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0 and "tone: both" in (tmp_path / "ev" / "report.html").read_text()


def test_a_project_without_capabilities_or_with_a_wrong_domain_is_told_what_to_do(project_dir):
    proj = open_project(project_dir(DOCS, ECHO))
    with pytest.raises(QueryError, match="declares no capabilities: add `capabilities:`"):
        decide(proj)
    with pytest.raises(ConfigError, match=r"capabilities.x.domains: 'nope' not in `domains`"):
        open_project(project_dir(DOCS, ECHO + "capabilities:\n  x: {domains: [nope]}\n"))


def test_judgement_is_measured_against_always_giving_the_commonest_label():
    """6 of 8 questions are labelled NO: an adapter right on 4 of 8 is worse than always answering NO."""
    from loradex.config import SixQuestions
    from loradex.evaluate.questions import Question

    qs = [Question(f"q{i}", "escalate?", label="NO" if i < 6 else "YES") for i in range(8)]
    rows = [{"id": q.id, "mode": m, "metrics": {"contains_answer": None, "format_ok": 1.0 if m == "hybrid" else 0.0,
                                                "label_accuracy": float(m == "hybrid" and i % 2 == 0),
                                                "verified_citation": None}}
            for i, q in enumerate(qs) for m in ("base", "rag", "adapter", "hybrid")]
    p = probe(rows, qs, {})
    assert p["majority_label"] == "no" and p["means"]["majority"]["label_accuracy"]["value"] == 0.75
    assert p["label_gain"]["value"] == -0.25
    cap = CapabilityConfig(domains=["claims"], answers=SixQuestions(domain_reasoning=True, format_or_style=False))
    c = card("escalation", cap, {"documents": 0, "changed": 0, "changes": 0, "span_days": 0.0}, {}, False, p)
    assert c["disagreements"] == [  # an adapter that raises format adherence does not contradict "not format"
        "you said it is domain reasoning, but the adapter's judgement does not beat always giving the commonest "
        f"label (the interval includes 0): majority 0.75 -> hybrid 0.50, difference {p['label_gain']['value']:+.2f} "
        f"[{p['label_gain']['low']:+.2f}, {p['label_gain']['high']:+.2f}], n=8"]
    assert c["answers"]["format_or_style"]["answer"] is False and c["answers"]["pattern_recognition"] == {
        "answer": False, "source": "measured", "evidence": c["disagreements"][0].split("but ", 1)[1]}
