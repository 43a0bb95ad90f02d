"""Router scores with 1 to 10 examples a domain: loradex's calibration against plain temperature scaling.

CLINC150 (../shared/data/clinc150), all-MiniLM-L6-v2. For each setting, 3 or 10 of CLINC150's 10 domains are
drawn at random, N example queries a domain from `train` (or 40 and 2 alternating, an unbalanced project), and
the router is fitted on those alone (no off-topic negatives, no passages: the scores are what is measured). It
is scored on the drawn domains' `test` queries. Both columns use the same scorer (`linear+nearest`) and the same
out-of-fold scores, so top-1 accuracy is the same; only the map from scores to the shown probability differs:
- before (the baseline a user would otherwise pick): plain temperature scaling (Guo et al., ICML 2017), one
  temperature fitted by maximum likelihood on the out-of-fold scores (the untuned softmax when no example can
  be held out);
- loradex: the temperature posterior and the (n+1)/(n+2) bound (`loradex.route`).
Reported per setting (mean over draws): ECE (10 bins) of the shown score against top-1 correctness, the share
of wrong-domain routes shown as 1.00 (score >= 0.995), the highest score a wrong route got over all draws, and
for loradex the share routed and their accuracy at the thresholds 0.5 to 0.8 (the unsure threshold's meaning).

  python benchmarks/routing_few_examples.py [--draws 10] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, LoadMonitor, load_model, machine_info, markdown_table, now_iso, progress_bar, write_json
from loradex.route import FOLDS, Router
from loradex.route_fit import GRID, log_softmax, normalise, out_of_fold, softmax
from routing_clinc150 import ece, embed_all, load_clinc

SETTINGS = [(3, 1), (3, 2), (3, 3), (3, 5), (3, 10), (3, "40/2"),
            (10, 1), (10, 2), (10, 3), (10, 5), (10, 10), (10, "40/2")]
THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
SATURATED = 0.995  # shown as 1.00


def draw(train_x: np.ndarray, train_y: np.ndarray, domains: list[str], n_domains: int, shots: int | str,
         seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(drawn domains, example embeddings, their labels) for one draw."""
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(domains, n_domains, replace=False))
    idx: list[int] = []
    for j, d in enumerate(picked):
        n = (40, 2)[j % 2] if shots == "40/2" else int(shots)
        idx += list(rng.choice(np.flatnonzero(train_y == d), n, replace=False))
    return picked, train_x[idx], list(train_y[idx])


def temperature_scaling(logits: np.ndarray, y: np.ndarray) -> float:
    """The maximum-likelihood temperature on `GRID` for held-out `logits` (n, classes) labelled `y` (n,);
    1.0 when n is 0 (Guo et al., 2017)."""
    if not len(y):
        return 1.0
    nll = [-log_softmax(logits.astype(np.float64) / t)[np.arange(len(y)), y].sum() for t in GRID]
    return float(GRID[int(np.argmin(nll))])


def one_draw(x: np.ndarray, labels: list[str], picked: list[str], q: np.ndarray, truth: np.ndarray) -> dict:
    router = Router.fit(x, labels, seed=0)
    y = np.array([router.domains.index(d) for d in labels])
    counts = np.bincount(y, minlength=len(router.domains))
    held = np.zeros(len(y), bool)
    oof = np.zeros((len(y), len(router.domains)))
    if counts.max() > 1:
        oof, held = out_of_fold(router.method, normalise(x), y, len(router.domains), FOLDS, 0)
    t = temperature_scaling(oof[held], y[held])
    before = softmax(router.scorer.logits(q).astype(np.float64) / t)
    after = router.probabilities(q)[0]
    ty = np.array([router.domains.index(d) for d in truth])
    out: dict = {"calibrated": router.calibrated}
    for name, p in (("before", before), ("after", after)):
        ok, conf = p.argmax(1) == ty, p.max(1)
        out[f"top1_{name}"] = float(ok.mean())
        out[f"ece_{name}"] = ece(conf, ok)
        out[f"wrong_saturated_{name}"] = float((conf[~ok] >= SATURATED).mean()) if (~ok).any() else 0.0
        out[f"highest_wrong_{name}"] = float(conf[~ok].max()) if (~ok).any() else 0.0
        if name == "after":
            for th in THRESHOLDS:
                sel = conf >= th
                out[f"routed_{th}"] = float(sel.mean())
                out[f"accuracy_{th}"] = float(ok[sel].mean()) if sel.any() else float("nan")
    return out


def run(args: argparse.Namespace) -> list[dict]:
    data, intent_domain = load_clinc()
    embedder = load_model("all-minilm-l6-v2")
    texts = {name: [t for t, _ in data[name]] for name in ("train", "test")}
    labels = {name: np.array([intent_domain[i] for _, i in data[name]]) for name in ("train", "test")}
    vec = {name: normalise(embed_all(embedder, t, name)) for name, t in texts.items()}
    domains = sorted(set(labels["train"]))
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("fitting routers", total=len(SETTINGS) * args.draws)
        for n_domains, shots in SETTINGS:
            runs = []
            for seed in range(args.draws):
                picked, x, y = draw(vec["train"], labels["train"], domains, n_domains, shots, seed)
                m = np.isin(labels["test"], picked)
                runs.append(one_draw(x, y, picked, vec["test"][m], labels["test"][m]))
                bar.advance(task)
            row = {"domains": n_domains, "examples_per_domain": shots, "draws": len(runs),
                   "calibrated": all(r["calibrated"] for r in runs)}
            for k in runs[0]:
                if k == "calibrated":
                    continue
                values = [r[k] for r in runs if not np.isnan(r[k])]  # accuracy is NaN where nothing was routed
                row[k] = None if not values else round(float(max(values) if k.startswith("highest")
                                                             else np.mean(values)), 4)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.getLogger("loradex.route").setLevel(logging.ERROR)  # 'uncalibrated' is what is measured here
    monitor = LoadMonitor()
    rows = run(args)
    payload = {"benchmark": "routing_few_examples", "date": now_iso(), "embedder": "all-minilm-l6-v2",
               "settings": vars(args), "results": rows, "load": monitor.report(), "machine": machine_info()}
    write_json(RESULTS / "routing_few_examples.json", payload)
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    pct = "{:.1%}".format
    print(markdown_table(
        ["domains", "examples a domain", "top-1", "ECE before", "ECE loradex", "wrong at 1.00 before", "loradex",
         "highest wrong before", "loradex", "routed at >= 0.5", "their accuracy"],
        [(r["domains"], r["examples_per_domain"], r["top1_after"], r["ece_before"], r["ece_after"],
          pct(r["wrong_saturated_before"]), pct(r["wrong_saturated_after"]), r["highest_wrong_before"],
          r["highest_wrong_after"], pct(r["routed_0.5"]), r["accuracy_0.5"]) for r in rows]))
    print("JSON in benchmarks/results/routing_few_examples.json")


if __name__ == "__main__":
    main()
