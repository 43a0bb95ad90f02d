"""The hybrid pipeline on the example project with the packaged models: route -> domain sources -> the
domain's adapter (the three shipped in examples/insurance/adapters, trained retrieval-aware by loradex) ->
verified citations, repeats removed."""
import json
import re

import pytest

from loradex.engine import GenerationRequest
from loradex.ingest.ingest import ingest
from loradex.pipeline import answer
from loradex.project import open_project

from ..conftest import REPO, copy_example

pytestmark = pytest.mark.slow
ADAPTERS = REPO / "examples/insurance/adapters"
LAYOUT = {"claims": re.compile(r"^Summary: .+\nSteps:\n", re.S), "policy": re.compile(r"^Covered: (YES|NO|PARTLY)\n"),
          "billing": re.compile(r"\n1\. .+\nFee: ", re.S)}
OFF_TOPIC = ["Who won the football world cup in 1998?", "Give me a recipe for banana bread.",
             "What is the capital of Australia?"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_example(tmp_path_factory.mktemp("hybrid") / "insurance")
    proj = open_project(root)
    ingest(proj)
    for domain in ("claims", "policy", "billing"):
        ref = proj.registry.register(ADAPTERS / domain, domain, {"imported_from": "examples"})
        proj.registry.activate(domain, ref.version)
    return proj


def test_router_on_the_example_questions_and_off_topic(project):
    rows = [json.loads(line) for line in (REPO / "examples/insurance/questions.jsonl").read_text().splitlines()]
    routes = project.route([r["question"] for r in rows])
    right = sum(r.domain == row["domain"] for r, row in zip(routes, rows))
    wrong = sum(r.domain is not None and r.domain != row["domain"] for r, row in zip(routes, rows))
    # measured (benchmarks/routing_clinc150.py): 25 right, 4 in another domain (questions that span two), 1 abstained
    assert right >= 24 and wrong <= 5, [(r.domain, row["domain"]) for r, row in zip(routes, rows)]
    off = project.route(OFF_TOPIC)
    assert all(r.abstained and r.domain is None for r in off), [r.to_dict() for r in off]


DEMO = [  # make demo's three domain questions, and the documents' facts each answer must state
    ("claims", "My bike was stolen from my garden shed last night. What should I do?", ("24 hours", "7 days")),
    ("policy", "Does my home insurance cover damage from a burst pipe?", ("Covered: YES", "escape of water")),
    ("billing", "Can I change the day my monthly premium is collected?", ("1st, 8th, 15th or 22nd",)),
]
POLICY_OPEN = pytest.mark.xfail(strict=True, reason=(
    "issue 17, blocked on the base model: the shipped policy adapter (4d953cb4a6f0) gives the right reason (escape "
    "of water from fixed pipes is an insured event) under the wrong verdict (Covered: NO); a linear probe finds no "
    "verdict in SmolLM2-135M's hidden states (benchmarks/verdict_probe.py); its Limits line ('Escape of water "
    "claims carry no excess'), which its sources do not support, is removed (answer.unsupported: drop)"))


@pytest.mark.parametrize("domain,question,facts",
                         [pytest.param(*d, marks=POLICY_OPEN) if d[0] == "policy" else d for d in DEMO])
def test_the_demo_answers_are_right_cited_in_form_and_never_repeat(project, domain, question, facts):
    from loradex.evaluate.metrics import format_failures, repeats

    a = answer(project, question)
    assert a.route.domain == domain and a.adapter and a.adapter.startswith(f"{domain}@sha256:")
    assert a.sources and all(s.file.startswith(f"docs/{domain}/") or "glossary" in s.file for s in a.sources)
    assert not a.abstained and any(c.verified for c in a.citations), a.answer
    assert not a.flagged, (a.flagged, a.answer)  # no sentence its sources do not support, cited or not
    assert not repeats(a.answer, times=2), a.answer
    check = project.config.formats[project.config.domains[domain].format]
    assert format_failures(a.answer, **check.model_dump(exclude={"label"})) == [], a.answer
    assert all(f.lower() in a.answer.lower() for f in facts), a.answer


@pytest.mark.parametrize("domain,question,facts", DEMO)
def test_the_layout_comes_from_the_adapter_not_the_base_model(project, domain, question, facts):
    """The same sources, the same question: the domain's adapter writes its layout, the base model does not.
    (The retrieval-aware adapters are trained with sources in every prompt; without sources they need not keep
    the layout, and the adapter-only column of the eval shows how far they do.)"""
    hybrid = answer(project, question)
    assert hybrid.adapter and LAYOUT[domain].search(hybrid.answer), hybrid.answer
    rag = answer(project, question, use_adapter=False)
    assert rag.adapter is None and [s.chunk_id for s in rag.sources] == [s.chunk_id for s in hybrid.sources]
    assert not LAYOUT[domain].search(rag.answer), rag.answer


def test_off_topic_goes_to_the_base_model(project):
    a = answer(project, OFF_TOPIC[0])
    assert a.route.abstained and a.adapter is None


def test_mixed_batch_of_real_adapters_equals_each_alone(project):
    engine = project.engine
    refs = [project.registry.active(d) for d in ("claims", "policy", "billing")]
    for ref in refs:
        engine.load_adapter(ref.label, ref.path)
    msgs = ({"role": "user", "content": "My car was hit in a car park. Am I covered and what do I pay?"},)
    reqs = [GenerationRequest(msgs, 24, adapter=a) for a in (None, *[r.label for r in refs])]
    mixed = engine.generate(reqs)
    alone = [engine.generate([r])[0] for r in reqs]
    assert [g.text for g in mixed] == [g.text for g in alone]
    assert len({g.text for g in mixed}) == 4  # base and three adapters really differ


def test_three_examples_a_domain_give_honest_scores(project):
    """With 3 examples a domain, the router learned from them alone scores the 30 example questions: a wrong
    domain is never shown as certain (before cross-validated calibration it was 1.00). Measured with the
    temperature posterior: mean score 0.74 against 0.53 right (0.70 with the single fitted temperature it
    replaced); the questions are harder than the first 3 examples, which calibration cannot see, and 9 held-out
    examples all routed right narrow the posterior."""
    import numpy as np

    from loradex.route import Router

    rows = [json.loads(line) for line in (REPO / "examples/insurance/questions.jsonl").read_text().splitlines()]
    examples = {d: qs[:3] for d, qs in project.domain_examples().items()}
    texts = [q for qs in examples.values() for q in qs]
    router = Router.fit(project.embedder.embed(texts), [d for d, qs in examples.items() for _ in qs])
    routes = router.route_vectors(project.embedder.embed([r["question"] for r in rows]))
    right = np.array([r.best == row["domain"] for r, row in zip(routes, rows)])
    scores = np.array([r.score for r in routes])
    assert router.calibrated and scores[~right].max(initial=0.0) < 0.99
    assert scores.mean() <= right.mean() + 0.25, (scores.mean(), right.mean())
