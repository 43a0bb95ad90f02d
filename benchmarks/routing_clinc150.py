"""Routing with few examples: loradex's router against the nearest-example baseline, on data it never saw.

CLINC150 (../shared/data/clinc150): 150 intents in 10 domains, each domain a route, plus out-of-scope queries.
For N = 5, 10, 30 and 100 example queries a domain (drawn at random from `train`, 3 draws with fixed seeds),
each router is fitted on the N examples alone, with every threshold chosen from those examples (a project
has no held-out or out-of-scope data), and scored on `test` (4,500 in-domain) and `oos_test` (1,000):
- in-scope accuracy: routed to the right domain and not abstained; top-1: the best domain, ignoring abstention;
- out-of-scope recall: the share of oos_test on which the router abstains;
- expected calibration error (ECE, 10 bins) of the shown score against top-1 correctness on `test`.
Routers: the baseline, nearest example by cosine with one global threshold (the way semantic-router works) set
to keep `--target-recall` of the examples, each scored leave-one-out; loradex's router with its defaults (its
scope uses loradex's shipped off-topic queries, written for it and not taken from CLINC150); and loradex
without those negatives. The curves move the target recall (one point per target, averaged over draws).

The example project (examples/insurance): its 30 questions (labelled by domain) and CLINC150's oos_test as
off-topic queries, routed by the project router fitted on the example files alone, plus the negatives, plus the
domains' passages and descriptions. Latency: one query at a time on top of the embedding, with the router fitted
on the full train split (15,000 examples).

  python benchmarks/routing_clinc150.py [--shots 5,10,30,100] [--draws 3] [--target-recall 0.95] [--json]
  python benchmarks/routing_clinc150.py --latency-only    # the latency alone, for a quiet machine
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    STDERR,
    LoadMonitor,
    data_root,
    example_project,
    load_model,
    machine_info,
    markdown_table,
    now_iso,
    progress_bar,
    write_json,
)
from loradex.route import Router
from loradex.route_fit import normalise, off_topic_queries

TARGETS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)
BASELINE = "nearest example, one global threshold (baseline)"
ROUTERS = (BASELINE, "loradex (defaults)", "loradex without off-topic negatives")


def load_clinc() -> tuple[dict, dict[str, str]]:
    folder = data_root() / "clinc150"
    if not (folder / "data_full.json").is_file():
        sys.exit(f"CLINC150 not found under {folder}; set LORADEX_DATA to the folder that holds clinc150/")
    data = json.loads((folder / "data_full.json").read_text())
    domains = json.loads((folder / "domains.json").read_text())
    return data, {i: d for d, intents in domains.items() for i in intents}


def embed_all(embedder, texts: list[str], label: str) -> np.ndarray:
    """Embeddings of `texts`, cached under $LORADEX_CACHE (or ~/.cache/loradex)/bench by content hash."""
    key = hashlib.sha256(json.dumps([embedder.name, texts]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LORADEX_CACHE", Path.home() / ".cache" / "loradex")) / "bench" / f"{label}-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    out = []
    with progress_bar() as bar:
        task = bar.add_task(f"embedding {label}", total=len(texts))
        for s in range(0, len(texts), 256):
            out.append(embedder.embed(texts[s : s + 256]))
            bar.advance(task, min(256, len(texts) - s))
    vecs = np.concatenate(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the bin-weighted gap between mean score and accuracy (Guo et al. 2017)."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def score(pred: list, best: list, conf: np.ndarray, truth: list[str]) -> dict:
    """`pred`/`best`/`conf` cover test then oos_test; `truth` is test's domains."""
    n = len(truth)
    correct = np.array([p == t for p, t in zip(pred[:n], truth)])
    top1 = np.array([b == t for b, t in zip(best[:n], truth)], float)
    return {"in_scope_accuracy": float(correct.mean()), "top1_accuracy": float(top1.mean()),
            "in_scope_abstained": float(np.mean([p is None for p in pred[:n]])),
            "oos_recall": float(np.mean([p is None for p in pred[n:]])), "ece": ece(conf[:n], top1)}


def baseline(x: np.ndarray, labels: list[str], q: np.ndarray, target: float) -> tuple[list, list, np.ndarray]:
    """Nearest example by cosine; one global threshold keeping `target` of the examples (leave-one-out)."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    threshold = float(np.quantile(sims.max(axis=1), 1 - target))
    qs = q @ x.T
    best = [labels[i] for i in qs.argmax(axis=1)]
    top = qs.max(axis=1)
    return [b if s >= threshold else None for b, s in zip(best, top)], best, top


def run_router(name: str, x: np.ndarray, labels: list[str], q: np.ndarray, neg: np.ndarray, target: float,
               truth: list[str]) -> dict:
    if name == BASELINE:
        pred, best, conf = baseline(x, labels, q, target)
        return {**score(pred, best, np.clip(conf, 0, 1), truth), "ece": None}  # a cosine is not a probability
    router = Router.fit(x, labels, negatives=neg if "without" not in name else None, target_recall=target)
    routes = router.route_vectors(q)
    return score([r.domain for r in routes], [r.best for r in routes], np.array([r.score for r in routes]), truth)


def _rounded(metrics: dict) -> dict:
    return {k: None if v is None else round(v, 4) for k, v in metrics.items()}


def few_shot(train_x: np.ndarray, train_labels: np.ndarray, domains: list[str], n: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(train_labels == d), n, replace=False) for d in domains])
    return train_x[idx], list(train_labels[idx])


def clinc(vec: dict, labels: dict, neg: np.ndarray, args) -> tuple[list[dict], dict]:
    """Rows at the default target, averaged over draws (with min and max), and the trade-off curves."""
    q, truth, domains = vec["query"], list(labels["test"]), sorted(set(labels["train"]))
    rows, curves = [], {}
    for n in args.shots:
        curves[n] = {name: [] for name in ROUTERS}
        draws = [few_shot(vec["train"], labels["train"], domains, n, seed) for seed in range(args.draws)]
        for name in ROUTERS:
            for target in TARGETS:
                runs = [run_router(name, x, y, q, neg, target, truth) for x, y in draws]
                mean = {k: None if runs[0][k] is None else float(np.mean([r[k] for r in runs])) for k in runs[0]}
                curves[n][name].append({"target_recall": target, **mean})
                if target == args.target_recall:
                    rows.append({"examples_per_domain": n, "router": name, **_rounded(mean),
                                 "in_scope_accuracy_range": [round(min(r["in_scope_accuracy"] for r in runs), 4),
                                                             round(max(r["in_scope_accuracy"] for r in runs), 4)],
                                 "oos_recall_range": [round(min(r["oos_recall"] for r in runs), 4),
                                                      round(max(r["oos_recall"] for r in runs), 4)]})
            STDERR.print(f"{n} a domain, {name}: " + ", ".join(
                f"{k} {v}" for k, v in rows[-1].items() if k in ("in_scope_accuracy", "oos_recall", "ece")))
    for name in ROUTERS[:2]:
        full = run_router(name, vec["train"], list(labels["train"]), q, neg, args.target_recall, truth)
        rows.append({"examples_per_domain": 1500, "router": name, **_rounded(full)})
    return rows, curves


def example_project_routing(oos_x: np.ndarray, oos: list[str]) -> list[dict]:
    """The insurance project's 30 questions and CLINC150's oos_test, by what the project router is fitted on."""
    repo = Path(__file__).resolve().parents[1]
    questions = [json.loads(line) for line in (repo / "examples/insurance/questions.jsonl").read_text().splitlines()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proj = example_project(Path(tmp))
        emb = proj.embedder
        examples = proj.domain_examples()
        texts = [t for ts in examples.values() for t in ts]
        labels = [d for d, ts in examples.items() for _ in ts]
        neg, ctx = emb.embed(proj.off_topic_queries()), emb.embed(proj.scope_context())
        qx = emb.embed([r["question"] for r in questions])
        for name, kw in (("examples only", {}), ("+ off-topic negatives", {"negatives": neg}),
                         ("+ negatives + passages and descriptions (default)", {"negatives": neg, "context": ctx})):
            router = Router.fit(emb.embed(texts), labels, **kw)
            routes = router.route_vectors(qx)
            right = sum(r.domain == row["domain"] for r, row in zip(routes, questions))
            abstained = sum(r.domain is None for r in routes)
            off = router.route_vectors(oos_x)
            rows.append({"router": name, "questions": len(questions), "right": right, "abstained": abstained,
                         "wrong_domain": len(questions) - right - abstained,
                         "off_topic_abstained": round(float(np.mean([r.domain is None for r in off])), 4),
                         "off_topic_queries": len(oos)})
    return rows


def latency(embedder, train_x: np.ndarray, train_labels: list[str], neg: np.ndarray, sample: list[str]) -> dict:
    router = Router.fit(train_x, train_labels, negatives=neg)
    t_embed, t_route = [], []
    for text in sample[:10]:
        router.route_vectors(embedder.embed([text]))
    for text in sample:
        t1 = time.perf_counter()
        v = embedder.embed([text])
        t2 = time.perf_counter()
        router.route_vectors(v)
        t_embed.append(t2 - t1)
        t_route.append(time.perf_counter() - t2)

    def pct(xs: list[float]) -> dict:
        ms = np.array(xs) * 1000
        return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}

    return {"router": pct(t_route), "embedding": pct(t_embed), "queries": len(sample), "examples": len(train_labels)}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4), dpi=100, sharey=True)
    for ax, (n, by_router) in zip(np.atleast_1d(axes), curves.items()):
        for name, pts in by_router.items():
            style = "k--o" if name == BASELINE else "-o"
            ax.plot([p["oos_recall"] for p in pts], [p["in_scope_accuracy"] for p in pts], style, label=name,
                    markersize=3, linewidth=1)
        ax.set_title(f"{n} examples a domain", fontsize=10)
        ax.set_xlabel("out-of-scope recall")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("in-scope accuracy")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("CLINC150 test: each point is one target recall (0.80 ... 0.99), thresholds from the examples "
                 "alone; mean of 3 draws", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 30, 100])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--target-recall", type=float, default=0.95, choices=TARGETS)
    ap.add_argument("--latency-queries", type=int, default=500)
    ap.add_argument("--latency-only", action="store_true",
                    help="only the latency (results/routing_clinc150_latency.json), for a rerun on a quiet machine")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    monitor = LoadMonitor()
    data, intent_domain = load_clinc()
    embedder = load_model("all-minilm-l6-v2")
    texts = {name: [t for t, _ in data[name]] for name in ("train", "test", "oos_test")}
    labels = {name: np.array([intent_domain[i] for _, i in data[name]]) for name in ("train", "test")}
    vec = {name: normalise(embed_all(embedder, t, name)) for name, t in texts.items()}
    vec["query"] = np.concatenate([vec["test"], vec["oos_test"]])
    neg = embedder.embed(off_topic_queries())
    rng = np.random.default_rng(0)
    sample = [texts["test"][i] for i in rng.choice(len(texts["test"]), args.latency_queries, replace=False)]
    if args.latency_only:
        lat = latency(embedder, vec["train"], list(labels["train"]), neg, sample)
        write_json(RESULTS / "routing_clinc150_latency.json", {"benchmark": "routing_clinc150_latency",
                   "date": now_iso(), "latency": lat, "load": monitor.report(), "machine": machine_info()})
        print(json.dumps(lat) if args.json else f"router p50 {lat['router']['p50_ms']} ms, p99 "
              f"{lat['router']['p99_ms']} ms on top of the embedding (p50 {lat['embedding']['p50_ms']} ms)")
        return
    rows, curves = clinc(vec, labels, neg, args)
    plot(curves, RESULTS / "routing_clinc150.png")
    project_rows = example_project_routing(vec["oos_test"], texts["oos_test"])
    lat = latency(embedder, vec["train"], list(labels["train"]), neg, sample)
    payload = {"benchmark": "routing_clinc150", "date": now_iso(), "embedder": "all-minilm-l6-v2",
               "settings": vars(args), "test_in_scope": len(labels["test"]),
               "test_out_of_scope": len(texts["oos_test"]),
               "off_topic_negatives": len(neg), "results": rows, "curves": curves,
               "example_project": project_rows, "latency": lat, "load": monitor.report(), "machine": machine_info()}
    write_json(RESULTS / "routing_clinc150.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["examples a domain", "router", "in-scope accuracy", "top-1", "out-of-scope recall", "ECE"],
                         [(r["examples_per_domain"], r["router"], r["in_scope_accuracy"], r["top1_accuracy"],
                           r["oos_recall"], r["ece"]) for r in rows]))
    print(markdown_table(["example project router", "right / 30", "abstained", "wrong domain", "off-topic abstained"],
                         [(r["router"], r["right"], r["abstained"], r["wrong_domain"], r["off_topic_abstained"])
                          for r in project_rows]))
    print(f"router p50 {lat['router']['p50_ms']} ms, p99 {lat['router']['p99_ms']} ms on top of the embedding "
          f"(p50 {lat['embedding']['p50_ms']} ms); JSON in benchmarks/results/routing_clinc150.json")


if __name__ == "__main__":
    main()
