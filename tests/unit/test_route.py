import json

import numpy as np
import pytest
from typer.testing import CliRunner

from loradex.cli import app
from loradex.embed import HashingEmbedder
from loradex.project import open_project
from loradex.route import METHODS, Router, RouterError

from ..conftest import SHARED_DATA as REPO_DATA

WORDS = {
    "claims": "claim accident damage theft stolen crash report police loss assessor",
    "billing": "premium payment invoice refund debit card fee charge instalment bill",
    "policy": "cover excluded deductible addon renewal limit wording extend policy clause",
}


def queries(domain: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = WORDS[domain].split()
    return [" ".join(rng.choice(words, size=4, replace=False)) + f" please {domain[:2]}{i}" for i in range(n)]


@pytest.fixture
def examples():
    return {d: queries(d, 20, k) for k, d in enumerate(WORDS)}


@pytest.mark.parametrize("method", METHODS)
def test_routes_in_domain_queries_and_abstains_off_topic(examples, method):
    emb = HashingEmbedder()
    texts = [q for qs in examples.values() for q in qs]
    labels = [d for d, qs in examples.items() for _ in qs]
    router = Router.fit(emb.embed(texts), labels, method=method)
    fresh = {d: queries(d, 10, 100 + k) for k, d in enumerate(WORDS)}
    routes = {d: router.route_vectors(emb.embed(qs)) for d, qs in fresh.items()}
    accepted = [r for rs in routes.values() for r in rs if not r.abstained]
    assert len(accepted) >= 24  # most in-domain queries pass the thresholds
    assert all(r.domain == d for d, rs in routes.items() for r in rs if not r.abstained)
    for r in (r for rs in routes.values() for r in rs):
        assert abs(sum(r.scores.values()) - 1) < 1e-3 and r.score == max(r.scores.values())
    off = router.route_vectors(emb.embed(["what is the capital of france", "recipe for banana bread tonight"]))
    assert all(r.abstained and r.reason == "out_of_scope" and r.domain is None for r in off)


def test_ambiguous_query_abstains(examples):
    emb = HashingEmbedder()
    texts = [q for qs in examples.values() for q in qs]
    labels = [d for d, qs in examples.items() for _ in qs]
    router = Router.fit(emb.embed(texts), labels, min_probability=0.99, target_recall=1.0)
    mix = router.route_vectors(emb.embed(["claim theft premium refund"]))[0]
    assert mix.abstained and mix.reason in ("ambiguous", "out_of_scope") and mix.best in ("claims", "billing")


def test_fit_refuses_without_examples():
    with pytest.raises(RouterError, match="examples"):
        Router.fit(np.zeros((0, 4)), [])
    with pytest.raises(RouterError, match="unknown router method"):
        Router.fit(np.ones((3, 4)), ["a", "a", "a"], method="svm")


def _project(tmp_path, examples, extra=""):
    root = tmp_path / "p"
    (root / "routing").mkdir(parents=True)
    (root / "routing" / "billing.txt").write_text("\n".join(examples["billing"]) + "\n\n")
    domains = {"claims": {"examples": examples["claims"]}, "billing": {"examples_file": "routing/billing.txt"},
               "policy": {"examples": examples["policy"]}}
    (root / "loradex.yaml").write_text(json.dumps({"embedder": "hashing", "domains": domains}) + extra)
    return root


def test_project_router_is_saved_and_refitted_when_examples_change(tmp_path, examples):
    root = _project(tmp_path, examples)
    proj = open_project(root)
    assert {d: len(q) for d, q in proj.domain_examples().items()} == {"claims": 20, "billing": 20, "policy": 20}
    first = proj.router
    key = json.loads((root / ".loradex/router.json").read_text())["key"]
    assert open_project(root).router.temperature == first.temperature  # loaded, same key
    (root / "routing" / "billing.txt").write_text("\n".join(examples["billing"][:15]) + "\n")
    assert open_project(root).router is not None
    assert json.loads((root / ".loradex/router.json").read_text())["key"] != key
    assert len(list((root / ".loradex").glob("router.*.npz"))) == 1


def test_cli_route_one_query_a_file_and_fit(tmp_path, examples):
    root = _project(tmp_path, examples)
    runner = CliRunner()
    r = runner.invoke(app, ["route", examples["claims"][0], "-p", str(root), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["domain"] == "claims" and set(out["scores"]) == set(WORDS) and out["abstained"] is False
    qfile = tmp_path / "q.txt"
    qfile.write_text(f"{examples['policy'][0]}\nwhat is the capital of france\n")
    r = runner.invoke(app, ["route", "--file", str(qfile), "-p", str(root), "--json"])
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["domain"] for x in lines] == ["policy", None] and lines[1]["abstained"] is True
    r = runner.invoke(app, ["route", "--fit", "-p", str(root), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["examples"] == 60
    r = runner.invoke(app, ["route", "--fit", "-p", str(root)])  # what README says it prints, without --json too
    assert r.exit_code == 0 and "temperature " in r.stdout and "posterior range" in r.stdout and "held-out" in r.stdout
    r = runner.invoke(app, ["route", "theft", "-p", str(root)])
    assert r.exit_code == 0 and "claims" in r.stdout


def test_cli_route_without_examples_says_what_to_add(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "loradex.yaml").write_text("embedder: hashing\ndomains:\n  claims: {}\n")
    r = CliRunner().invoke(app, ["route", "--fit", "-p", str(root)])
    assert r.exit_code == 1 and "domains.<name>.examples" in r.stderr


# ---- few examples, negatives, explain -----------------------------------------------------------------

def _fit(examples_per_domain: int, **kw):
    emb = HashingEmbedder()
    ex = {d: queries(d, examples_per_domain, k) for k, d in enumerate(WORDS)}
    texts = [q for qs in ex.values() for q in qs]
    labels = [d for d, qs in ex.items() for _ in qs]
    return emb, Router.fit(emb.embed(texts), labels, texts=texts, **kw)


@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_examples_a_domain_still_route(n):
    emb, router = _fit(n)
    assert not router.calibrated
    assert "fewer than 3" in router.uncalibrated_reason and all(d in router.uncalibrated_reason for d in WORDS)
    assert ("none can be held out" in router.uncalibrated_reason) is (n == 1)
    routes = router.route_vectors(emb.embed([WORDS[d] for d in WORDS]))  # each domain's own vocabulary
    assert [r.best for r in routes] == list(WORDS)
    assert all(0 < r.score <= 1 for r in routes)


def test_three_examples_do_not_saturate_scores_on_the_wrong_domain():
    emb, router = _fit(3)
    fresh = [(d, q) for k, d in enumerate(WORDS) for q in queries(d, 10, 200 + k)]
    routes = router.route_vectors(emb.embed([q for _, q in fresh]))
    wrong = [r.score for (d, _), r in zip(fresh, routes) if r.best != d]
    right = [r.score for (d, _), r in zip(fresh, routes) if r.best == d]
    assert max(wrong, default=0.0) < 0.99 and np.mean(right) > np.mean(wrong or [0.0])
    assert router.temperature > 0.05  # cross-validated over all examples, not one held-out example a domain


def test_negatives_close_to_the_examples_are_dropped_and_far_ones_kept():
    from loradex.route_fit import keep_negatives, normalise

    emb = HashingEmbedder()
    ex = [q for d in WORDS for q in queries(d, 10, 1)]
    labels = np.repeat(np.arange(3), 10)
    negs = [ex[0], "the history of the roman empire and its emperors"]
    keep = keep_negatives(normalise(emb.embed(ex)), labels, normalise(emb.embed(negs)))
    assert keep.tolist() == [False, True]


def test_shipped_off_topic_queries_are_general_and_not_from_an_evaluation_set():
    from loradex.route_fit import off_topic_queries

    queries_ = off_topic_queries()
    assert len(queries_) >= 250 and len(set(queries_)) == len(queries_)
    clinc = REPO_DATA / "clinc150" / "data_full.json"
    if clinc.is_file():  # not copied from CLINC150: no query of any split appears in the shipped file
        data = json.loads(clinc.read_text())
        seen = {t.lower().strip(" ?.!") for split in data.values() for t, _ in split}
        assert not [q for q in queries_ if q.lower().strip(" ?.!") in seen]


def test_negatives_make_off_topic_queries_abstain():
    emb = HashingEmbedder()
    from loradex.route_fit import off_topic_queries

    negs = off_topic_queries()
    _, plain = _fit(20)
    _, guarded = _fit(20, negatives=emb.embed(negs), negative_texts=negs)
    assert guarded.meta["negatives"] > 200
    off = emb.embed(["who painted the mona lisa", "how many legs does a spider have"])
    assert all(r.reason == "out_of_scope" for r in guarded.route_vectors(off))
    assert guarded.scope_threshold != plain.scope_threshold


def test_saved_router_loads_with_the_same_routes(tmp_path):
    emb, router = _fit(10, negatives=HashingEmbedder().embed(["recipe for lemon cake"]))
    router.save(tmp_path, "k1")
    loaded, key = Router.load(tmp_path)
    q = emb.embed(["theft claim police report", "premium refund card"])
    assert key == "k1"
    assert [r.to_dict() for r in loaded.route_vectors(q)] == [r.to_dict() for r in router.route_vectors(q)]
    assert loaded.summary() == router.summary()


def test_cli_route_explains_and_says_when_uncalibrated(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    domains = {d: {"examples": [queries(d, 1, 0)[0]], "description": WORDS[d]} for d in WORDS}
    (root / "loradex.yaml").write_text(json.dumps({"embedder": "hashing", "domains": domains}))
    r = CliRunner().invoke(app, ["route", "stolen car police report", "-p", str(root), "--explain"])
    assert r.exit_code == 0, r.output
    assert "uncalibrated" in r.stderr and "fewer than 3" in r.stderr and "nearest claims examples" in r.stdout
    r = CliRunner().invoke(app, ["route", "stolen car police report", "-p", str(root), "--explain", "--json"])
    row = json.loads(r.stdout)
    assert row["best"] == "claims" and row["calibrated"] is False
    assert row["explain"]["examples"]["claims"][0]["text"] == domains["claims"]["examples"][0]
    assert row["explain"]["off_topic"] and "scope_threshold" in row["explain"]


def test_a_project_with_one_example_a_domain_serves(tmp_path):
    import httpx

    from loradex.server.app import create_app
    from loradex.testing import ThreadedServer

    root = tmp_path / "p"
    (root / "docs").mkdir(parents=True)
    domains = {d: {"examples": [queries(d, 1, 0)[0]]} for d in WORDS}
    (root / "loradex.yaml").write_text(json.dumps({"embedder": "hashing", "engine": "echo", "domains": domains}))
    running = ThreadedServer(create_app(open_project(root)))
    try:
        r = httpx.post(running.url + "/v1/chat/completions", timeout=30,
                       json={"model": "auto", "messages": [{"role": "user", "content": "stolen car police report"}]})
        assert r.status_code == 200, r.text
        assert r.json()["route"]["best"] == "claims" and r.json()["route"]["calibrated"] is False
    finally:
        running.stop()
