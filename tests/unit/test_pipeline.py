import json

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
    proj = open_project(project_dir(DOCS, ECHO))
    ingest(proj)
    if engine is not None:
        proj.__dict__["engine"] = engine
    return proj


def test_answer_cites_and_verifies_the_first_source(project_dir):
    proj = _project(project_dir)
    a = answer(proj, "When must theft be reported to the police?")
    assert not a.abstained
    assert a.answer.endswith("[1]")
    assert a.citations[0]["n"] == 1 and a.citations[0]["verified"]
    assert a.citations[0]["chunk_id"] == a.sources[0]["chunk_id"]
    assert a.sources[0]["file"] == "docs/claims/theft.txt"
    assert set(a.timings_ms) >= {"retrieve", "generate", "verify"}


def test_off_topic_question_abstains_without_generating(project_dir):
    engine = EchoEngine()
    proj = _project(project_dir, engine)
    a = answer(proj, "recipe for sourdough bread baking")
    assert a.abstained and a.answer == NO_SOURCES and a.citations == []
    assert engine.calls == 0


def test_fabricated_answer_is_flagged_and_bad_citation_removed(project_dir):
    proj = _project(project_dir, EchoEngine(reply="Call the police within 48 hours [1]. Also see [7]."))
    a = answer(proj, "When must theft be reported to the police?")
    assert "[7]" not in a.answer
    assert a.citations == [{"n": 1, "chunk_id": a.sources[0]["chunk_id"], "source": a.citations[0]["source"],
                            "quote": "", "verified": False, "added": False,
                            "reasons": ["number 48 does not appear in the source"]}]
    assert a.flagged and a.flagged[0]["cited"] == [1]


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


def test_uncited_supported_answer_gets_an_added_citation(project_dir):
    root = project_dir(DOCS, CONFIG + "engine: echo\nanswer: {min_dense_score: 0.2, attribute: true}\n")
    proj = open_project(root)
    ingest(proj)
    proj.__dict__["engine"] = EchoEngine(reply="Call the police within 24 hours.")
    a = answer(proj, "When must theft be reported to the police?")
    assert a.answer == "Call the police within 24 hours. [1]"
    assert a.citations[0]["verified"] and a.citations[0]["added"]
