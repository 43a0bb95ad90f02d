"""Routing on CLINC150: loradex's router against the nearest-example baseline, with abstention.

CLINC150 (../shared/data/clinc150) has 150 intents in 10 domains plus out-of-scope queries. Each domain
is a route. Routers learn from `train` (all of it, and a few-shot sample of N queries per domain, as a
project would write them), are calibrated on in-domain `val` only (a project has no out-of-scope
examples), and are scored on `test` (4,500 in-domain) and `oos_test` (1,000 out-of-scope):
- in-scope accuracy: routed to the right domain and not abstained; top-1: the best domain, ignoring abstention;
- out-of-scope recall: share of oos_test on which the router abstains;
- per-domain precision and recall, expected calibration error (ECE, 10 bins) of the shown score;
- router latency on top of the embedding (one query at a time, p50/p99), and the embedding's own.
Baseline: nearest training example by cosine, one global threshold (the way semantic-router works),
set on the same in-domain val data to the same target recall as loradex's per-domain thresholds.

  python benchmarks/routing_clinc150.py [--few-shot 30] [--target-recall 0.95] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    STDERR,
    LoadMonitor,
    data_root,
    load_model,
    machine_info,
    markdown_table,
    now_iso,
    write_json,
)
from loradex.route import METHODS, Router  # noqa: E402


def load_clinc() -> tuple[dict, dict[str, str]]:
    folder = data_root() / "clinc150"
    if not (folder / "data_full.json").is_file():
        sys.exit(f"CLINC150 not found under {folder}; set LORADEX_DATA to the folder that holds clinc150/")
    data = json.loads((folder / "data_full.json").read_text())
    domains = json.loads((folder / "domains.json").read_text())
    intent_domain = {i: d for d, intents in domains.items() for i in intents}
    return data, intent_domain


def embed_all(embedder, texts: list[str], label: str) -> np.ndarray:
    """Embeddings of `texts`, cached under $LORADEX_CACHE (or ~/.cache/loradex)/bench by content hash."""
    import hashlib
    import os

    from _common import progress_bar

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
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def score(pred: list[str | None], best: list[str], conf: np.ndarray, truth: list[str], n_oos: int,
          domains: list[str]) -> dict:
    """`pred`/`best`/`conf` cover test then oos_test; `truth` is test's domains."""
    n_in = len(truth)
    p_in, p_oos = pred[:n_in], pred[n_in:]
    correct = np.array([p == t for p, t in zip(p_in, truth)])
    top1 = np.array([b == t for b, t in zip(best[:n_in], truth)])
    per = {}
    for d in domains:
        tp = sum(p == d and t == d for p, t in zip(p_in, truth))
        predicted = sum(p == d for p in pred)  # oos routed to d count against its precision
        actual = sum(t == d for t in truth)
        per[d] = {"precision": round(tp / predicted, 3) if predicted else None, "recall": round(tp / actual, 3)}
    oos_recall = sum(p is None for p in p_oos) / n_oos
    return {"in_scope_accuracy": round(float(correct.mean()), 4), "top1_accuracy": round(float(top1.mean()), 4),
            "in_scope_abstained": round(sum(p is None for p in p_in) / n_in, 4),
            "oos_recall": round(oos_recall, 4),
            "overall_accuracy": round((correct.sum() + sum(p is None for p in p_oos)) / (n_in + n_oos), 4),
            "ece_top1": round(ece(conf[:n_in], top1.astype(float)), 4), "per_domain": per}


def baseline(train_x, train_y, val_x, val_y, q, target_recall: float, domains: list[str]):
    """Nearest example by cosine, one global threshold kept by `target_recall` of in-domain val."""
    val_best = (val_x @ train_x.T).max(axis=1)
    threshold = float(np.quantile(val_best, 1 - target_recall))
    sims = q @ train_x.T
    idx, top = sims.argmax(axis=1), sims.max(axis=1)
    best = [domains[train_y[i]] for i in idx]
    pred = [b if s >= threshold else None for b, s in zip(best, top)]
    return pred, best, top.astype(float), threshold


def sweep(train_x, train_labels, val_x, val_labels, q, truth, n_oos, domains) -> dict:
    """In-scope accuracy against out-of-scope recall as the abstention threshold moves: one curve per router."""
    y = np.array([domains.index(d) for d in train_labels])
    vy = np.array([domains.index(d) for d in val_labels])
    curves: dict[str, list] = {"nearest example, global threshold (baseline)": []}
    targets = (0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.0)
    for t in targets:
        pred, best, conf, _ = baseline(train_x, y, val_x, vy, q, t, domains)
        m = score(pred, best, conf, truth, n_oos, domains)
        curves["nearest example, global threshold (baseline)"].append((t, m["in_scope_accuracy"], m["oos_recall"]))
    for method in ("linear", "nearest"):
        for min_p in (0.0, 0.5):
            name = f"loradex {method}, min probability {min_p}"
            curves[name] = []
            for t in targets:
                r = Router.fit(train_x, train_labels, method=method, target_recall=t, min_probability=min_p,
                               calibration=(val_x, val_labels))
                routes = r.route_vectors(q)
                m = score([x.domain for x in routes], [x.best for x in routes], np.array([x.score for x in routes]),
                          truth, n_oos, domains)
                curves[name].append((t, m["in_scope_accuracy"], m["oos_recall"]))
    return curves


def plot(curves_by_setting: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves_by_setting), figsize=(6 * len(curves_by_setting), 4.2), dpi=100)
    for ax, (setting, curves) in zip(np.atleast_1d(axes), curves_by_setting.items()):
        for name, pts in curves.items():
            style = "k--o" if "baseline" in name else "-o"
            ax.plot([p[2] for p in pts], [p[1] for p in pts], style, label=name, markersize=3, linewidth=1)
        ax.set_xlabel("out-of-scope recall (abstained on oos_test)")
        ax.set_ylabel("in-scope accuracy (right domain, not abstained)")
        ax.set_title(setting, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("CLINC150 routing: each point is one threshold (target in-domain recall 0.6 ... 1.0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(setting: str, train_x, train_labels, val_x, val_labels, q, truth, n_oos, domains, args) -> list[dict]:
    rows = []
    y = np.array([domains.index(d) for d in train_labels])
    t0 = time.perf_counter()
    pred, best, conf, thr = baseline(train_x, y, val_x, np.array([domains.index(d) for d in val_labels]), q,
                                     args.target_recall, domains)
    rows.append({"setting": setting, "router": "nearest example, global threshold (baseline)",
                 "threshold": round(thr, 4), "seconds": round(time.perf_counter() - t0, 2),
                 **score(pred, best, conf, truth, n_oos, domains)})
    for method in METHODS:
        t0 = time.perf_counter()
        router = Router.fit(train_x, train_labels, method=method, target_recall=args.target_recall,
                            min_probability=args.min_probability, calibration=(val_x, val_labels))
        fit_s = time.perf_counter() - t0
        routes = router.route_vectors(q)
        rows.append({"setting": setting, "router": f"loradex {method}", "temperature": round(router.temperature, 4),
                     "fit_seconds": round(fit_s, 2),
                     **score([r.domain for r in routes], [r.best for r in routes], np.array([r.score for r in routes]),
                             truth, n_oos, domains)})
        STDERR.print(f"{setting} {method}: in-scope {rows[-1]['in_scope_accuracy']:.3f}, "
                     f"oos recall {rows[-1]['oos_recall']:.3f}")
    return rows


def measure_latency(embedder, vec, split, truth, rng, args) -> dict:
    """One query at a time: the embedding and the router (linear, fitted on the full train split) separately."""
    router = Router.fit(vec["train"], split["train"][1], method="linear", calibration=(vec["val"], split["val"][1]))
    sample = [split["test"][0][i] for i in rng.choice(len(truth), args.latency_queries, replace=False)]
    t_embed, t_route = [], []
    for text in sample[:10]:
        router.route_vectors(embedder.embed([text]))
    for text in sample:
        t1 = time.perf_counter()
        v = embedder.embed([text])
        t2 = time.perf_counter()
        router.route_vectors(v)
        t3 = time.perf_counter()
        t_embed.append(t2 - t1)
        t_route.append(t3 - t2)

    def pct(xs):
        ms = np.array(xs) * 1000
        return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}

    return {"router_full_train": pct(t_route), "embedding": pct(t_embed), "queries": len(sample)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--few-shot", type=int, default=30, help="queries per domain in the few-shot setting")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--min-probability", type=float, default=0.5)
    ap.add_argument("--latency-queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-only", action="store_true",
                    help="only the latency part (results/routing_clinc150_latency.json), "
                         "for a rerun on a quiet machine")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    monitor = LoadMonitor()
    data, intent_domain = load_clinc()
    embedder = load_model("all-minilm-l6-v2")
    split = {name: ([t for t, _ in data[name]], [intent_domain[i] for _, i in data[name]])
             for name in ("train", "val", "test")}
    oos = [t for t, _ in data["oos_test"]]
    domains = sorted(set(intent_domain.values()))
    t0 = time.perf_counter()
    vec = {name: embed_all(embedder, texts, name) for name, (texts, _) in split.items()}
    oos_x = embed_all(embedder, oos, "oos_test")
    embed_s = time.perf_counter() - t0
    q = np.concatenate([vec["test"], oos_x])
    truth = split["test"][1]
    rng = np.random.default_rng(args.seed)
    if args.latency_only:
        latency = measure_latency(embedder, vec, split, truth, rng, args)
        payload = {"benchmark": "routing_clinc150_latency", "date": now_iso(), "latency": latency,
                   "load": monitor.report(), "machine": machine_info()}
        write_json(RESULTS / "routing_clinc150_latency.json", payload)
        print(json.dumps(payload, indent=2) if args.json
              else f"router p50 {latency['router_full_train']['p50_ms']} ms, "
              f"p99 {latency['router_full_train']['p99_ms']} ms; embedding p50 {latency['embedding']['p50_ms']} ms")
        return
    labels = np.array(split["train"][1])
    few = np.concatenate([rng.choice(np.flatnonzero(labels == d), args.few_shot, replace=False) for d in domains])
    settings = {"full train (1,500 a domain)": (vec["train"], split["train"][1]),
                f"few-shot ({args.few_shot} a domain, seed {args.seed})": (vec["train"][few], list(labels[few]))}
    rows, curves = [], {}
    for name, (tx, ty) in settings.items():
        rows += run(name, tx, ty, vec["val"], split["val"][1], q, truth, len(oos), domains, args)
        curves[name] = sweep(tx, ty, vec["val"], split["val"][1], q, truth, len(oos), domains)
    plot(curves, RESULTS / "routing_clinc150.png")

    latency = measure_latency(embedder, vec, split, truth, rng, args)
    payload = {"benchmark": "routing_clinc150", "date": now_iso(), "embedder": "all-minilm-l6-v2",
               "settings": vars(args), "test_in_scope": len(truth), "test_out_of_scope": len(oos),
               "embedding_seconds_all_splits": round(embed_s, 1), "results": rows, "latency": latency,
               "tradeoff_curves": {k: {n: [{"target_recall": a, "in_scope_accuracy": b, "oos_recall": c}
                                           for a, b, c in pts]
                                       for n, pts in v.items()} for k, v in curves.items()},
               "load": monitor.report(), "machine": machine_info()}
    write_json(RESULTS / "routing_clinc150.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    print(markdown_table(["setting", "router", "in-scope accuracy", "top-1", "out-of-scope recall", "overall", "ECE"],
                         [(r["setting"], r["router"], r["in_scope_accuracy"], r["top1_accuracy"], r["oos_recall"],
                           r["overall_accuracy"], r["ece_top1"]) for r in rows]))
    print(f"\nrouter latency on top of the embedding: p50 {latency['router_full_train']['p50_ms']} ms, "
          f"p99 {latency['router_full_train']['p99_ms']} ms (embedding p50 {latency['embedding']['p50_ms']} ms)")


if __name__ == "__main__":
    main()
