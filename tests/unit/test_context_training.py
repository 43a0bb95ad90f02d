"""Retrieval-aware training examples (`loradex.adapters.context`): gold passages among distractors, cited
targets, "not covered" targets, the report of reference sentences no source supports, and served sources with
the target trimmed to them."""
import json

import pytest

from loradex.adapters.context import gold_passages, trim_to_sources, with_context
from loradex.adapters.data import Example
from loradex.ingest.ingest import ingest
from loradex.project import open_project
from loradex.prompt import NO_SOURCES
from loradex.trim import NONE_STATED

DOCS = {
    "docs/claims/theft.md": "# Theft\n\nReport a theft to the police within 24 hours of discovering it.\n",
    "docs/claims/insurer.md": "# Telling us\n\nTell the insurer about a theft within 7 days of the loss.\n",
    "docs/claims/storm.md": "# Storms\n\nStorm damage to fences and gates is not covered by the home policy.\n",
    "docs/claims/phone.md": "# Phone line\n\nThe claims line is open 24 hours a day, 7 days a week.\n",
    "docs/claims/fraud.md": "# Fraud\n\nWe investigate claims that look exaggerated before paying them.\n",
    "docs/claims/photos.md": "# Photos\n\nUpload photos of the damage in the app, up to 30 files per claim.\n",
}
ANSWER = ("Summary: Hurry.\nReport a theft to the police within 24 hours of discovering it.\n"
          "Tell the insurer about a theft within 7 days of the loss.\nEscalation: NO - routine theft question.")


def _example(answer: str, line: int, question: str = "My bike was stolen, who do I tell and by when?") -> Example:
    return Example(({"role": "user", "content": question}, {"role": "assistant", "content": answer}), line)


@pytest.fixture
def project(project_dir):
    proj = open_project(project_dir(DOCS, "embedder: hashing\ndomains:\n  claims: {paths: ['docs/claims/**']}\n"))
    ingest(proj)
    return proj


def test_gold_passages_cover_the_answer_with_the_fewest_hits(project):
    from loradex.retrieve import search

    hits = search(project.store, project.embedder, "theft police insurer", project.config.retrieval, k=6)
    golds, unsupported = gold_passages(ANSWER, hits, k=4)
    assert sorted(hits[i].chunk.source.path for i in golds) == ["docs/claims/insurer.md", "docs/claims/theft.md"]
    assert unsupported == ["Escalation: NO - routine theft question."]  # "Summary: Hurry." is too short to need one


def test_gold_examples_cite_their_passages_and_the_rest_say_not_covered(project):
    examples = [_example(ANSWER, n) for n in range(1, 41)]
    report = with_context(project, examples, k=3, gold_share=0.75, pool=6, domain="claims", seed=1)
    assert report.with_gold + report.without_gold == 40 and 22 <= report.with_gold <= 38
    for ex in report.examples:
        user, target = ex.messages[-2]["content"], ex.answer
        assert user.count("</source") == 3 and user.rstrip().endswith(examples[0].question)
        if target == NO_SOURCES:  # distractors only: neither supporting passage is in the prompt
            assert "within 24 hours of discovering" not in user and "within 7 days of the loss" not in user
            continue
        sources = {n: user.split(f"<source {n} ")[1].split(f"</source {n}>")[0] for n in (1, 2, 3)}
        police = next(n for n, t in sources.items() if "police within 24 hours" in t)
        insurer = next(n for n, t in sources.items() if "insurer about a theft within 7 days" in t)
        assert f"discovering it. [{police}]" in target and f"of the loss. [{insurer}]" in target
        assert target.startswith("Summary: Hurry.") and target.endswith("Escalation: NO - routine theft question.")
    assert [u["line"] for u in report.unsupported] == list(range(1, 41))


def test_all_or_nothing_shares_and_bad_settings(project):
    examples = [_example(ANSWER, 1), _example("Claims about the moon landing are handled by NASA in Houston.", 2,
                                              "Who handles moon landing claims?")]
    all_gold = with_context(project, examples, k=2, gold_share=1.0, pool=6, domain="claims")
    assert all_gold.with_gold == 1 and all_gold.no_gold_found == [2]  # nothing supports line 2: not covered
    assert all_gold.examples[1].answer == NO_SOURCES
    assert with_context(project, examples, k=2, gold_share=0.0, pool=6).with_gold == 0
    given = Example(({"role": "user", "content": "<source 1>x</source 1>\nQuestion: q"},
                     {"role": "assistant", "content": "a"}), 3)
    assert with_context(project, [given], k=2, pool=6).examples == [given]
    for bad in ({"k": 0}, {"k": 5, "pool": 4}, {"gold_share": 1.5}):
        with pytest.raises(ValueError):
            with_context(project, examples, **{"k": 2, "pool": 6, **bad})


POLICY = ("Answer: Report a theft to the police within 24 hours of discovering it. Stolen bikes are always "
          "replaced new for old by the insurer.\nLimits: Bikes over EUR 2,000 must be named on the schedule.\n"
          "Covered: YES")
PASSAGES = ["Report a theft to the police within 24 hours of discovering it.", "Bikes are kept in the shed."]


def test_trim_keeps_what_the_sources_say_and_marks_an_emptied_field():
    trimmed, removed = trim_to_sources(POLICY, PASSAGES, keep=r"^Covered: (YES|NO)")
    assert trimmed == ("Answer: Report a theft to the police within 24 hours of discovering it.\n"
                       f"Limits: {NONE_STATED}\nCovered: YES")  # the label line stays as given
    assert removed == ["Stolen bikes are always replaced new for old by the insurer.",
                       "Bikes over EUR 2,000 must be named on the schedule."]
    assert trim_to_sources(POLICY, PASSAGES[1:])[0] == NO_SOURCES  # the first line lost everything
    steps = ("Summary: Theft.\n1. Report a theft to the police within 24 hours of discovering it.\n"
             "2. Paint the shed blue.")
    assert trim_to_sources(steps, PASSAGES)[0] == steps.rsplit("\n", 1)[0]  # an emptied step goes
    first_goes = f"Summary: Theft.\n1. Paint the shed blue today.\n2. {PASSAGES[0]}\n3. Bikes are kept in the shed."
    assert trim_to_sources(first_goes, PASSAGES)[0] == ("Summary: Theft.\n1. " + PASSAGES[0] +
                                                        "\n2. Bikes are kept in the shed.")  # numbered again
    # a sentence whose words are spread over two places of a source is not supported there
    scattered = "Report the theft in the shed within 24 hours."
    assert trim_to_sources(f"Answer: {scattered}", ["Report the theft to us. " + "Filler words here. " * 3 +
                                                     "The shed must be locked within 24 hours."])[0] == NO_SOURCES


def test_served_sources_are_the_ones_ask_gives_and_the_target_is_trimmed_to_them(project):
    from loradex.pipeline import sources_for
    from loradex.prompt import build_messages
    from loradex.types import Filters

    examples = [_example(POLICY, 1, "When must I report a theft to the police?"),
                _example("Answer: Moon claims are handled by NASA in Houston.", 2, "Who handles moon landing claims?")]
    report = with_context(project, examples, k=3, pool=6, domain="claims", sources="served", keep=r"^Covered: ")
    first, second = report.examples
    served = sources_for(project, examples[0].question, 3, Filters(domain="claims"))
    assert list(first.messages[:-1]) == build_messages(examples[0].question, served, project.config.name,
                                                       project.config.answer.passage_chars)  # the prompt as served
    theft = next(n for n, h in enumerate(served, start=1) if "police within 24 hours" in h.chunk.text)
    assert first.answer == (f"Answer: Report a theft to the police within 24 hours of discovering it. [{theft}]\n"
                            f"Limits: {NONE_STATED}\nCovered: YES")
    assert second.answer == NO_SOURCES and report.no_gold_found == [2] and report.with_gold == 1
    assert {u["sentence"] for u in report.unsupported} >= {"Moon claims are handled by NASA in Houston."}
    with pytest.raises(ValueError, match="--context-sources must be raft or served"):
        with_context(project, examples, k=2, pool=6, sources="gold")


def _data(tmp_path, n: int):
    data = tmp_path / "claims.jsonl"
    rows = [{"messages": list(_example(ANSWER, i, f"Stolen bike {i}: who do I tell?").messages)} for i in range(n)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _tiny_model_and_data(project, tmp_path, n: int):
    """The project switched to a tiny random model, and `n` distinct examples of ANSWER."""
    from loradex.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    cfg = project.root / "loradex.yaml"
    cfg.write_text(cfg.read_text() + f"model: {model}\n")
    return model, _data(tmp_path, n)


def test_cli_train_builds_sources_by_default_and_reports_unsupported_sentences(project, tmp_path):
    """`loradex train` on a tiny random model: the manifest records the context settings and counts."""
    from typer.testing import CliRunner

    from loradex.cli import app
    model, data = _tiny_model_and_data(project, tmp_path, 6)
    args = ["train", "claims", "--data", str(data), "-p", str(project.root), "--max-steps", "1", "--replay", "0",
            "--context-k", "2", "--distractor-pool", "6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reference sentence(s) no source supports" in result.output and "line 1: Escalation: NO" in result.output
    ctx = json.loads(CliRunner().invoke(app, [*args, "--json", "--lr", "1e-3"]).stdout)["metrics"]["context"]
    assert ctx["with_gold"] + ctx["without_gold"] == 6 and ctx["unsupported_sentences"] == 6
    plain = json.loads(CliRunner().invoke(app, [*args, "--json", "--no-context"]).stdout)["metrics"]
    assert "context" not in plain


def test_cli_train_check_reports_without_training(project, tmp_path):
    from typer.testing import CliRunner

    from loradex.cli import app

    _, data = _tiny_model_and_data(project, tmp_path, 3)
    args = ["train", "claims", "--data", str(data), "-p", str(project.root), "--check", "--distractor-pool", "6"]
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert report["examples"] == 3 and [u["line"] for u in report["unsupported_sentences"]] == [1, 2, 3]
    assert 100 < report["tokens"]["median"] <= report["tokens"]["longest"] < 2048 == report["tokens"]["max_seq_len"]
    text = CliRunner().invoke(app, args).output
    assert "line 3: Escalation: NO - routine theft question." in text and "tokens per example: median" in text
    small = json.loads(CliRunner().invoke(app, [*args, "--json", "--max-seq-len", "64"]).stdout)["tokens"]
    assert "3 of 3 training examples are longer than max_seq_len=64" in small["error"]
    for bad, says in ((["--context-sources", "gold"], "--context-sources must be raft or served (got 'gold')"),
                      (["--gold-share", "1.5"], "--gold-share must be in [0, 1]")):
        wrong = CliRunner().invoke(app, [*args, *bad])
        assert wrong.exit_code == 2 and says in " ".join(wrong.output.replace("│", "").split()), wrong.output
    refused = CliRunner().invoke(app, [a for a in args if a != "--check"] + ["--max-seq-len", "64"])
    assert refused.exit_code != 0 and "raise --max-seq-len to at least" in refused.output
    assert not (project.state_dir / "train").exists() and project.registry.versions() == []


def test_a_prepared_job_trained_elsewhere_imports_with_its_record(project, tmp_path):
    """`train --prepare` here, `loradex.adapters.remote` on "another machine" (a bare folder with the model),
    `adapters import` back: the adapter validates against the project's base and keeps its training record."""
    from typer.testing import CliRunner

    from loradex.adapters.remote import run_job
    from loradex.cli import app
    model, data = _tiny_model_and_data(project, tmp_path, 6)
    job_dir = tmp_path / "job"
    r = CliRunner().invoke(app, ["train", "claims", "--data", str(data), "-p", str(project.root), "--prepare",
                                 str(job_dir), "--max-steps", "2", "--replay", "0.5", "--distractor-pool", "6",
                                 "--json"])
    assert r.exit_code == 0, r.output
    job = json.loads(r.stdout)
    assert job["examples"] == 6 and job["context"]["with_gold"] + job["context"]["without_gold"] == 6
    assert all("<source 1" in json.loads(line)["messages"][1]["content"]
               for line in (job_dir / "examples.jsonl").read_text().splitlines())
    adapter = run_job(job_dir, model)
    r = CliRunner().invoke(app, ["adapters", "import", str(adapter), "--domain", "claims", "-p", str(project.root)])
    assert r.exit_code == 0, r.output
    ref = open_project(project.root).registry.resolve("claims", project.registry.versions()[0]["version"])
    manifest = json.loads((ref.path / "manifest.json").read_text())
    assert manifest["hyperparameters"]["context"] is True and manifest["hyperparameters"]["max_steps"] == 2
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["replay_examples"] == 3
    assert manifest["metrics"]["context"] == job["context"]
    assert manifest["training_data_sha256"] == job["training_data_sha256"]
