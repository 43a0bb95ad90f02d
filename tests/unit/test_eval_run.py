"""`loradex eval` on the weightless setup: echo engine, hashing embedder, the ingest tests' documents."""
import dataclasses
import json

import pytest
from typer.testing import CliRunner

from loradex.cli import app
from loradex.engine.echo import EchoEngine
from loradex.errors import DataError, QueryError
from loradex.evaluate.questions import load_questions
from loradex.evaluate.run import evaluate, summarise
from loradex.ingest.ingest import ingest
from loradex.project import open_project

from .test_ingest import DOCS
from .test_pipeline import ECHO

FORMATS = """
formats:
  one_line: {max_chars: 200, pattern: "\\\\[1\\\\]"}
"""
QUESTIONS = [
    {"id": "theft", "question": "When must theft be reported to the police?", "answer": "within 24 hours",
     "gold_docs": ["docs/claims/theft.txt"], "domain": "claims", "format": "one_line"},
    {"id": "bread", "question": "recipe for sourdough bread baking", "answerable": False},
]


class CountingEcho(EchoEngine):
    def generate(self, requests, cancel=()):
        self.calls += len(requests) - 1  # count requests, not batches
        return super().generate(requests, cancel)


@pytest.fixture
def project(project_dir, tmp_path):
    engine = CountingEcho()
    proj = open_project(project_dir(DOCS, ECHO + FORMATS), engine=engine)
    ingest(proj)
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return proj, engine, path


def test_every_mode_is_scored_and_a_rerun_answers_from_the_cache(project):
    proj, engine, path = project
    qs = load_questions(path, domains=set(proj.config.domains), formats=set(proj.config.formats))
    rows = evaluate(proj, qs, ["base", "rag", "oracle"])
    assert [(r["id"], r["mode"]) for r in rows] == [("theft", "base"), ("theft", "rag"), ("theft", "oracle"),
                                                    ("bread", "base"), ("bread", "rag")]  # no gold: no oracle
    rag = next(r for r in rows if r["id"] == "theft" and r["mode"] == "rag")["metrics"]
    assert rag["contains_answer"] == 1.0 and rag["citation_recall"] == 1.0 and rag["verified_citation"] == 1.0
    assert rag["hit_at_k"] == 1.0 and rag["mrr"] == 1.0 and rag["format_ok"] == 1.0 and rag["repetition"] == 0.0
    oracle = next(r for r in rows if r["mode"] == "oracle")
    assert oracle["sources"] == ["docs/claims/theft.txt"]  # the gold document is the only source
    bread = next(r for r in rows if r["id"] == "bread" and r["mode"] == "rag")["metrics"]
    assert bread["abstained_right"] == 1.0 and bread["abstained_wrongly"] is None
    calls = engine.calls
    again = evaluate(proj, qs, ["base", "rag", "oracle"])
    assert engine.calls == calls  # routing and retrieval run again (their latency is measured anew), no generation
    scores = [[{k: v for k, v in r["metrics"].items() if k != "latency_ms"} for r in rs] for rs in (rows, again)]
    assert scores[0] == scores[1]


@pytest.mark.parametrize("mode", ["flag", "drop"])
def test_an_unsupported_sentence_is_counted_whether_flagged_uncited_or_removed(project_dir, tmp_path, mode):
    reply = "Call the police within 24 hours [1]. Stolen bikes are always replaced new for old."
    cfg = ECHO.replace("attribute: false}", f"attribute: false, unsupported: {mode}}}")
    proj = open_project(project_dir(DOCS, cfg + FORMATS), engine=EchoEngine(reply=reply))
    ingest(proj)
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n")
    row = evaluate(proj, load_questions(path), ["rag"])[0]
    assert row["metrics"]["unsupported_sentence"] == 1.0 and row["metrics"]["verified_citation"] == 1.0
    assert ("Stolen bikes" in row["answer"]) is (mode == "flag")


def test_a_change_generates_again_only_what_it_touches(project):
    proj, engine, path = project
    qs = load_questions(path)
    evaluate(proj, qs, ["base", "rag", "oracle"])
    (proj.root / "docs/claims/theft.txt").write_text("Theft\n\nCall the police within 12 hours.\n")
    ingest(proj)  # a document changed: the prompts with sources change, base's does not
    calls = engine.calls
    rows = evaluate(proj, qs, ["base", "rag"])
    assert engine.calls - calls == 1  # theft under rag; the off-topic bread abstains without generating
    theft = next(r for r in rows if r["mode"] == "rag" and r["id"] == "theft")
    assert "Call the police within 12 hours" in theft["answer"]


def test_cached_generations_are_checked_again_on_every_run(project, monkeypatch):
    """A change to the citation check or the repeat removal is measured on the cached text: no generation."""
    from loradex import pipeline

    proj, engine, path = project
    qs = load_questions(path)
    first = evaluate(proj, qs, ["rag"])
    calls, checked = engine.calls, []
    real = pipeline.verify

    def stricter(answer, passages, **kw):
        checked.append(answer)
        result = real(answer, passages, **kw)
        result.checks = [dataclasses.replace(c, verified=False) for c in result.checks]
        return result

    monkeypatch.setattr(pipeline, "verify", stricter)
    again = evaluate(proj, qs, ["rag"])
    assert engine.calls == calls and len(checked) == 1
    theft = [next(r for r in rows if r["id"] == "theft")["metrics"] for rows in (first, again)]
    assert theft[0]["verified_citation"] == 1.0 and theft[1]["verified_citation"] == 0.0


def test_summary_has_intervals_and_paired_differences_from_rag(project):
    proj, _, path = project
    rows = evaluate(proj, load_questions(path), ["base", "rag"])
    s = summarise(rows)
    assert s["modes"] == ["base", "rag"] and s["questions"] == 2
    assert s["metrics"]["rag"]["contains_answer"] == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 1}
    diff = s["versus"]["base"]["contains_answer"]
    assert diff["n"] == 1 and diff["value"] == s["metrics"]["base"]["contains_answer"]["value"] - 1.0


def test_malformed_questions_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok", "domain": "claims"}\n{"answer": "no question"}\n'
                    '{"question": "x", "answerable": "perhaps"}\nnot json\n{"question": "y", "format": "nope"}\n')
    with pytest.raises(DataError) as e:
        load_questions(path, domains={"claims"}, formats=set())
    message = str(e.value)
    assert f"{path}:2: question: Field required" in message
    assert f"{path}:3: answerable:" in message and f"{path}:4: not valid JSON" in message
    assert f"{path}:5: format: no format check named 'nope'" in message


def test_unknown_mode_is_refused(project):
    proj, _, path = project
    with pytest.raises(QueryError, match="unknown mode"):
        evaluate(proj, load_questions(path), ["rag", "magic"])


def test_cli_eval_writes_results_and_summary(project, tmp_path):
    proj, _, path = project
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", str(path), "--modes", "base,rag", "--out", str(out), "-p", str(proj.root)])
    assert r.exit_code == 0, r.output
    assert "contains_answer" in r.stdout and "base - rag" in r.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and json.loads((out / "summary.json").read_text())["modes"] == ["base", "rag"]
    r = CliRunner().invoke(app, ["eval", str(path), "--modes", "rag", "--json", "-p", str(proj.root)])
    assert json.loads(r.stdout)["metrics"]["rag"]["citation_recall"]["value"] == 1.0
    r = CliRunner().invoke(app, ["eval", str(path), "--modes", "rag", "--domain", "claims", "--out", str(out),
                                 "-p", str(proj.root)])  # only that domain's questions
    assert r.exit_code == 0 and [json.loads(x)["id"] for x in (out / "results.jsonl").read_text().splitlines()] \
        == [q["id"] for q in QUESTIONS if q.get("domain") == "claims"]
    r = CliRunner().invoke(app, ["eval", str(path), "--domain", "claim", "-p", str(proj.root)])
    assert r.exit_code == 2 and "no domain claim in the project" in r.output
    # one question is no interval: the table says n=1 rather than printing a point as [x, x] (a new user read
    # "-1.00 [-1.00, -1.00]" as certain)
    r = CliRunner().invoke(app, ["eval", str(path), "--modes", "rag", "--limit", "1", "-p", str(proj.root)])
    assert r.exit_code == 0 and "(n=1, no interval)" in " ".join(r.stdout.split()), r.stdout


def test_the_example_eval_set_is_valid_and_its_answers_are_in_its_gold_documents():
    from collections import Counter
    from pathlib import Path

    from loradex.config import load_config
    from loradex.ingest.parse import parse_file

    root = Path(__file__).resolve().parents[2] / "examples" / "insurance"
    config = load_config(root / "loradex.yaml")
    qs = load_questions(root / "eval" / "questions.jsonl", domains=set(config.domains), formats=set(config.formats))
    assert len(qs) >= 60 and sum(not q.answerable for q in qs) >= 10
    assert min(Counter(q.domain for q in qs if q.answerable).values()) >= 15
    terms = load_questions(root / "eval" / "terminology.jsonl", domains=set(config.domains))
    assert {q.id for q in terms} <= set(config.capabilities["terminology"].question_ids or {q.id for q in terms})
    texts = {}
    for q in (q for q in [*qs, *terms] if q.answerable):
        for doc in q.gold_docs:
            texts.setdefault(doc, " ".join(parse_file(root / doc).text.split()).lower())
        assert any(" ".join(q.answers[0].split()).lower() in texts[d] for d in q.gold_docs), q.id
    assert len({q.question.lower() for q in [*qs, *terms]}) == len(qs) + len(terms)
    for name, cap in config.capabilities.items():  # `loradex decide`'s capabilities name questions that exist
        assert cap.questions and (root / cap.questions).is_file(), name
    labelled = [q for q in qs if q.label]
    assert {q.domain for q in labelled} == {"claims", "policy"}
    assert all(q.label in {"YES", "NO"} for q in labelled if q.domain == "claims")
    assert all(q.label in {"YES", "NO", "PARTLY"} for q in labelled if q.domain == "policy")
