import json

import numpy as np
import pytest
from typer.testing import CliRunner

from loradex.cli import app
from loradex.embed import HashingEmbedder
from loradex.project import open_project
from loradex.route import METHODS, Router, RouterError

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
    r = runner.invoke(app, ["route", "theft", "-p", str(root)])
    assert r.exit_code == 0 and "claims" in r.stdout


def test_cli_route_without_examples_says_what_to_add(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "loradex.yaml").write_text("embedder: hashing\ndomains:\n  claims: {}\n")
    r = CliRunner().invoke(app, ["route", "--fit", "-p", str(root)])
    assert r.exit_code == 1 and "domains.<name>.examples" in r.stderr
