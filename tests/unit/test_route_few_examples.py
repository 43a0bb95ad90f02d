"""The router with few examples a domain (issue 19, kind 7): scores stay honest, and 1 or 2 examples still serve.

Queries are built here from word lists and embedded with the hashing embedder (no model): each query has two
words of its domain and three words every domain shares, so domains overlap as real ones do.
"""
import json
import logging

import numpy as np
import pytest

from loradex.embed import HashingEmbedder
from loradex.route import UNCALIBRATED_MIN_PROBABILITY, Router
from loradex.route_fit import (
    GRID,
    QUADRATURE,
    TEMPERATURE_PRIOR,
    evidence_bound,
    folds_of,
    log_softmax,
    normalise,
    out_of_fold,
    softmax,
    temperature_posterior,
)

WORDS = {
    "billing": "premium payment invoice refund debit card fee charge instalment bill",
    "claims": "claim accident damage theft stolen crash report police loss assessor",
    "policy": "cover excluded deductible addon renewal limit wording extend policy clause",
}
SHARED = "my car home insurance help need what how when can i the".split()
EMB = HashingEmbedder()


def queries(domain: str, n: int, seed: int, foreign: int = 0) -> list[str]:
    """`n` queries of `domain`: two of its words, `foreign` words of the other domains, three shared words."""
    rng = np.random.default_rng(seed)
    own = WORDS[domain].split()
    others = [w for d, ws in WORDS.items() if d != domain for w in ws.split()]
    return [" ".join([*rng.choice(own, 2, replace=False), *rng.choice(others, foreign, replace=False),
                      *rng.choice(SHARED, 3, replace=False)]) for _ in range(n)]


def fit(per_domain: dict[str, int], seed: int, **kw) -> Router:
    texts, labels = [], []
    for k, (d, n) in enumerate(per_domain.items()):
        texts += queries(d, n, 10 * seed + k)
        labels += [d] * n
    return Router.fit(EMB.embed(texts), labels, texts=texts, **kw)


def own_words(domain: str, n: int, seed: int) -> str:
    """The domain's own words in its `n` examples drawn with `seed` (as `fit` draws them), shared words left out."""
    return " ".join(dict.fromkeys(w for q in queries(domain, n, seed) for w in q.split() if w in WORDS[domain]))


def fresh(n: int, seed: int, foreign: int = 0) -> tuple[list[str], np.ndarray]:
    """`n` new queries a domain and their domain indices (domains in sorted order, as the router keeps them)."""
    texts = [q for k, d in enumerate(WORDS) for q in queries(d, n, seed + k, foreign)]
    return texts, np.repeat(np.arange(len(WORDS)), n)


# ---- 3 examples a domain: the saturation, then the fix ------------------------------------------------------

def test_three_examples_a_domain_saturated_with_a_fitted_temperature_and_no_longer_do():
    router = fit({d: 3 for d in WORDS}, seed=3)
    x = normalise(EMB.embed(router.texts))
    logits, held = out_of_fold(router.method, x, router.scorer.y, 3, 5, 0)
    assert held.all() and (logits.argmax(1) == router.scorer.y).all()  # all 9 held out routed right
    # the fault: temperature scaling fitted by likelihood alone on those 9 scores (as loradex did) goes to the
    # bottom of the grid, and every wrong route shows 1.00
    nll = [-log_softmax(logits / t)[np.arange(9), router.scorer.y].mean() for t in GRID]
    fitted = float(GRID[int(np.argmin(nll))])
    texts, truth = fresh(20, 200)
    before = softmax(router.scorer.logits(normalise(EMB.embed(texts))) / fitted)
    wrong = before.argmax(1) != truth
    assert fitted == pytest.approx(0.01) and wrong.sum() == 26
    assert (before.max(1)[wrong] >= 0.995).sum() == 25 and before.max(1).mean() > 0.99
    # now: the posterior predictive over the temperature, bounded by what 9 examples can support
    routes = router.route_vectors(EMB.embed(texts))
    after = np.array([r.score for r in routes])
    right = np.array([r.best for r in routes]) == np.array(router.domains)[truth]
    assert router.calibrated and all(r.calibrated for r in routes) and right.sum() == 34
    assert after.max() <= 10 / 11 + 1e-4  # Laplace: (9 + 1) / (9 + 2); never 1.00
    assert 0.85 < after[~right].max() < 0.91 and 0.8 < after.mean() < 0.86  # still too sure (34 of 60 right)...
    # ...as all 9 held out were right, but the posterior keeps softer temperatures than the fitted 0.01 too
    assert router.temperatures[0] > 0.1 and router.temperature > 0.4 and router.temperatures[-1] > 1.5


def test_no_score_reaches_the_evidence_bound_of_the_examples():
    for n, bound in ((1, 0.8), (2, 6 / 7 + 1e-4), (3, 10 / 11 + 1e-4), (10, 31 / 32 + 1e-4)):
        router = fit({d: n for d in WORDS}, seed=0)
        routes = router.route_vectors(EMB.embed([*WORDS.values(), *fresh(10, 50)[0]]))
        assert max(r.score for r in routes) <= bound, n


# ---- 1 and 2 examples a domain ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_examples_a_domain_fit_and_route_uncalibrated(n, caplog):
    with caplog.at_level(logging.WARNING, logger="loradex.route"):
        router = fit({d: n for d in WORDS}, seed=0)
    assert not router.calibrated and router.abstain_below == UNCALIBRATED_MIN_PROBABILITY
    assert [r.getMessage() for r in caplog.records] == [f"router uncalibrated: {router.uncalibrated_reason}"]
    assert ("none can be held out" in router.uncalibrated_reason) is (n == 1)
    assert router.summary()["held_out"] == (0 if n == 1 else 6) and router.summary()["calibrated"] is False
    routes = router.route_vectors(EMB.embed([own_words(d, n, k) for k, d in enumerate(WORDS)]))
    assert [(r.domain, r.calibrated) for r in routes] == [(d, False) for d in WORDS]
    assert all(UNCALIBRATED_MIN_PROBABILITY < r.score <= (3 * n + 1) / (3 * n + 2) for r in routes)
    tie = router.route_vectors(EMB.embed([f"{own_words('billing', n, 0)} {own_words('claims', n, 1)}"]))[0]
    assert tie.abstained and tie.reason == "ambiguous" and tie.best in ("billing", "claims")


def test_with_one_example_a_domain_the_scores_rest_on_the_prior_alone():
    router = fit({d: 1 for d in WORDS}, seed=0)
    assert len(router.temperatures) == QUADRATURE
    assert router.temperature == pytest.approx(TEMPERATURE_PRIOR["linear+nearest"], rel=0.06)
    assert router.temperatures[0] < 0.5 < 8 < router.temperatures[-1]  # a factor e either way, and more


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uncalibrated_the_unsure_threshold_still_means_more_likely_right_than_wrong(seed):
    router = fit({d: 1 for d in WORDS}, seed=seed)
    texts, truth = fresh(40, 300)
    routes = router.route_vectors(EMB.embed(texts))
    right = np.array([r.best for r in routes]) == np.array(router.domains)[truth]
    routed = np.array([not r.abstained for r in routes])
    unsure = np.array([r.reason == "ambiguous" for r in routes])
    assert 0.5 < routed.mean() < 0.7 and unsure.mean() > 0.3
    assert right[routed].mean() > UNCALIBRATED_MIN_PROBABILITY > right[unsure].mean()


def test_a_min_probability_above_the_floor_is_kept_when_uncalibrated():
    router = fit({d: 1 for d in WORDS}, seed=0, min_probability=0.7)
    assert router.abstain_below == 0.7 and fit({d: 5 for d in WORDS}, seed=0).abstain_below == 0.0


# ---- an instance written here: unbalanced domains ------------------------------------------------------------

def test_unbalanced_domains_forty_examples_and_two():
    router = fit({"billing": 40, "claims": 2, "policy": 40}, seed=1)
    assert not router.calibrated and router.uncalibrated_reason.startswith("claims has fewer than 3")
    assert "one a fold is held out of claims" in router.uncalibrated_reason
    assert router.meta["held_out"] == 82  # claims' two examples are held out too, one a fold
    routes = router.route_vectors(EMB.embed([own_words("claims", 2, 11), *fresh(10, 400)[0]]))
    assert routes[0].domain == "claims" and not routes[0].abstained
    assert max(r.score for r in routes) <= 83 / 84 + 1e-4


def test_unbalanced_domains_forty_examples_and_one():
    router = fit({"billing": 40, "claims": 1}, seed=1)
    assert router.meta["held_out"] == 40 and "none can be held out of claims" in router.uncalibrated_reason
    r = router.route_vectors(EMB.embed([own_words("claims", 1, 11)]))[0]
    assert r.domain == "claims" and r.calibrated is False


# ---- the parts --------------------------------------------------------------------------------------------

def test_folds_never_hold_out_a_domain_s_only_example():
    y = np.array([0] * 7 + [1] * 2 + [2])
    fold = folds_of(y, 5, 0)
    assert fold[-1] == -1 and sorted(fold[7:9]) == [0, 1] and sorted(fold[:7]) == [0, 0, 1, 1, 2, 3, 4]


def test_evidence_bound_caps_the_top_score_and_keeps_the_order():
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])
    out = evidence_bound(p, 9)
    assert out[0, 0] == pytest.approx(10 / 11) and out.sum(1) == pytest.approx([1, 1])
    assert out.argmax(1).tolist() == [0, 1] and (out[1] - 1 / 3) == pytest.approx((p[1] - 1 / 3) * (1 - 3 / 22))
    assert evidence_bound(np.ones((2, 1)), 0).tolist() == [[1.0], [1.0]]


def test_the_temperature_posterior_narrows_with_held_out_examples():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    logits = np.eye(3)[y] * 4 + rng.normal(0, 1, (90, 3))
    few = temperature_posterior(logits[::10], y[::10], "linear+nearest")
    many = temperature_posterior(logits, y, "linear+nearest")
    none = temperature_posterior(logits[:0], y[:0], "linear+nearest")
    assert many[-1] / many[0] < few[-1] / few[0] < none[-1] / none[0]
    assert list(many) == sorted(many) and len(many) == QUADRATURE


# ---- saying so: saved routers, the CLI -----------------------------------------------------------------------

def test_an_older_saved_router_is_refitted_and_a_saved_one_keeps_its_posterior(tmp_path, caplog):
    router = fit({d: 2 for d in WORDS}, seed=0)
    router.save(tmp_path, "k")
    with caplog.at_level(logging.WARNING, logger="loradex.route"):
        loaded, _ = Router.load(tmp_path)
    assert loaded.temperatures == router.temperatures and "router uncalibrated" in caplog.text
    info = json.loads((tmp_path / "router.json").read_text())
    del info["format"]
    (tmp_path / "router.json").write_text(json.dumps(info))
    assert Router.load(tmp_path) is None


def test_cli_route_json_says_uncalibrated(tmp_path):
    from typer.testing import CliRunner

    from loradex.cli import app

    root = tmp_path / "p"
    root.mkdir()
    domains = {d: {"examples": queries(d, 2, k)} for k, d in enumerate(WORDS)}
    (root / "loradex.yaml").write_text(json.dumps({"embedder": "hashing", "domains": domains}))
    r = CliRunner().invoke(app, ["route", WORDS["claims"], "-p", str(root), "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["calibrated"] is False and row["domain"] == "claims"
    r = CliRunner().invoke(app, ["route", "--fit", "-p", str(root), "--json"])
    info = json.loads(r.stdout)
    assert info["calibrated"] is False and info["held_out"] == 6 and info["abstain_below"] == 0.5


def test_a_one_example_domain_s_example_counts_twice_in_the_scope_score():
    from loradex.route_fit import scope_scores

    examples = np.eye(4, dtype=np.float32)
    query = normalise(np.array([[1.0, 0.5, 0.0, 0.0]], np.float32))
    plain = scope_scores(query, examples, examples[:0])
    alone = scope_scores(query, examples, examples[:0], alone=np.array([True, False, False, False]))
    assert plain[0] == pytest.approx((query[0, 0] + query[0, 1]) / 2) and alone[0] == pytest.approx(query[0, 0])
    three = normalise(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], np.float32))  # the second is alone
    loo = scope_scores(three, three, three[:0], leave_one_out=True, alone=np.array([False, True, False]))
    assert loo == pytest.approx([0.5 ** 0.5, 0.5 ** 0.5 / 2, 0.0])  # the first's nearest is alone: it counts twice


def _two_example_project(tmp_path):
    root = tmp_path / "p"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "claims.md").write_text("# Theft\n\nReport a stolen car to the police within 24 hours.\n")
    domains = {d: {"examples": queries(d, 2, k)} for k, d in enumerate(WORDS)}
    (root / "loradex.yaml").write_text(json.dumps({"embedder": "hashing", "engine": "echo", "domains": domains}))
    return root


def test_cli_route_with_fit_says_uncalibrated_once(tmp_path):
    from typer.testing import CliRunner

    from loradex.cli import app

    root = _two_example_project(tmp_path)
    r = CliRunner().invoke(app, ["route", "--fit", WORDS["claims"], "-p", str(root)])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("uncalibrated") == 1 and "claims" in r.stdout


def test_a_project_with_two_examples_a_domain_serves_and_health_says_uncalibrated(tmp_path):
    import httpx

    from loradex.ingest.ingest import ingest
    from loradex.project import open_project
    from loradex.server.app import create_app
    from loradex.testing import ThreadedServer

    proj = open_project(_two_example_project(tmp_path))
    ingest(proj)
    running = ThreadedServer(create_app(proj, window_ms=0))
    try:
        health = httpx.get(running.url + "/health").json()
        assert health["router"]["calibrated"] is False and health["router"]["domains"] == 3
        assert health["router"]["examples"] == 6 and "fewer than 3" in health["router"]["reason"]
        body = {"model": "auto", "messages": [{"role": "user", "content": WORDS["claims"]}]}
        answer = httpx.post(running.url + "/v1/chat/completions", json=body, timeout=30).json()
        assert answer["route"]["calibrated"] is False, answer
    finally:
        running.stop()
