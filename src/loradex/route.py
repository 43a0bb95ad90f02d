"""The domain router: which domain (and so which adapter and which sources) a query belongs to, or none.

Fitted from each domain's example queries on the project's own embedder (see `route_fit` for the parts):
- Which domain: a scorer over the domains' examples (`linear+nearest`, the default, multiplies the
  probabilities of a logistic regression and of the nearest example; see `route_fit`). Scores are
  probabilities calibrated on out-of-fold scores (5-fold cross-validation over the examples; with 2 or 3
  examples in a domain, one of them held out a fold), as a posterior over the softmax temperature, so a shown
  0.8 is right about 80% of the time on queries the router did not learn from, and a router fitted on n
  examples never shows more than (n + 1) / (n + 2) (see `route_fit`: with 3 examples in each of 3 domains at
  most 0.91, never 1.00 on a wrong domain).
- Whether any (`out_of_scope`): the scope score of a query is the mean cosine to its two nearest example
  queries (any domain) minus `NEGATIVE_WEIGHT` times its cosine to the nearest general off-topic query
  shipped with loradex (`route_fit.off_topic_queries`, kept only where not close to the project's examples).
  The threshold is the one that keeps `target_recall` of the examples in scope, each scored leave-one-out.
  `ambiguous`: the best domain's probability is under `abstain_below`: `min_probability`, raised to
  `UNCALIBRATED_MIN_PROBABILITY` when the router is uncalibrated.
- Uncalibrated (`calibrated` False, every Route says so, and a warning is logged when it is fitted or loaded):
  some domain has fewer than `MIN_CALIBRATION_EXAMPLES` examples. The router still fits, routes and serves. A
  domain with 2 examples is calibrated on one held out a fold; one with a single example is never held out, so
  with one example in every domain the scores rest on the prior alone (the temperature each method needs on
  CLINC150, all-MiniLM-L6-v2). Then the router routes only what it scores as more likely right than wrong and
  falls back to the base model otherwise (`ambiguous`).
Measured on CLINC150 against a nearest-example router with one global threshold: benchmarks/routing_clinc150.py.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text, writing
from .errors import RouterError
from .route_fit import (
    METHODS,
    NEAREST_SCALE,
    NEGATIVE_WEIGHT,
    Scorer,
    evidence_bound,
    keep_negatives,
    normalise,
    out_of_fold,
    scope_scores,
    temperature_posterior,
)
from .types import Route

__all__ = ["METHODS", "NEGATIVE_WEIGHT", "Route", "Router", "RouterError"]

FOLDS = 5
MIN_CALIBRATION_EXAMPLES = 3  # a domain with fewer makes the router say it is uncalibrated
UNCALIBRATED_MIN_PROBABILITY = 0.5  # uncalibrated, route only what is more likely right than wrong
FORMAT = 2  # of router.json; an older router (one fitted temperature) is refitted on load
log = logging.getLogger("loradex.route")


@dataclass
class Router:
    """A fitted router over `domains`: `scorer` holds the examples it learned (rows grouped by domain),
    `negatives` the off-topic queries it kept (m, dim)."""

    domains: list[str]
    scorer: Scorer
    negatives: np.ndarray
    context: np.ndarray  # (c, dim) more in-scope evidence for the scope score: documents, descriptions
    scope_threshold: float = -1.0
    temperatures: list[float] = field(default_factory=lambda: [1.0])  # equal-mass posterior points, ascending
    min_probability: float = 0.0
    target_recall: float = 0.95
    calibrated: bool = True
    uncalibrated_reason: str = ""
    texts: list[str] = field(default_factory=list)  # text of each scorer row, for explain
    negative_texts: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.scorer.method

    @property
    def temperature(self) -> float:
        """The posterior median temperature (one number to show; scoring averages over `temperatures`)."""
        return float(np.median(self.temperatures))

    @property
    def abstain_below(self) -> float:
        """The probability under which the best domain is `ambiguous`: `min_probability`, and at least
        `UNCALIBRATED_MIN_PROBABILITY` when uncalibrated."""
        return self.min_probability if self.calibrated else max(self.min_probability, UNCALIBRATED_MIN_PROBABILITY)

    # ---- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, vectors: np.ndarray, labels: Sequence[str], *, method: str = "linear+nearest",
            negatives: np.ndarray | None = None, context: np.ndarray | None = None, texts: Sequence[str] = (),
            negative_texts: Sequence[str] = (), target_recall: float = 0.95, min_probability: float = 0.0,
            seed: int = 0) -> Router:
        """Fit on example embeddings `vectors` (shape (n, dim)) with their domain names `labels` (n), and
        optionally off-topic `negatives` (shape (m, dim)) and in-scope `context` (shape (c, dim): the domains'
        document passages and descriptions, which widen what counts as in scope but do not pick domains);
        `texts` and `negative_texts` name the rows for `explain`. Raises RouterError for an unknown method or
        no examples."""
        if method not in METHODS:
            raise RouterError(f"unknown router method {method!r}; use one of {', '.join(METHODS)}")
        domains = sorted(set(labels))
        if not domains:
            raise RouterError("no domain has example queries; add domains.<name>.examples to loradex.yaml")
        x, y = normalise(vectors), np.array([domains.index(d) for d in labels])
        empty = np.zeros((0, x.shape[1]), np.float32)
        neg = normalise(negatives) if negatives is not None and len(negatives) else empty
        ctx = normalise(context) if context is not None and len(context) else empty
        keep = keep_negatives(x, y, neg)
        neg_texts = list(negative_texts) if len(negative_texts) == len(neg) else [""] * len(neg)
        order = np.argsort(y, kind="stable")
        row_texts = list(texts) if len(texts) == len(y) else [""] * len(y)
        router = cls(domains, Scorer.fit(method, x, y, len(domains), seed), neg[keep], ctx,
                     min_probability=min_probability, target_recall=target_recall,
                     texts=[row_texts[i] for i in order], negative_texts=[t for t, k in zip(neg_texts, keep) if k])
        router._calibrate(x, y, seed)
        if not router.calibrated:
            log.warning("router uncalibrated: %s", router.uncalibrated_reason)
        return router

    def _calibrate(self, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        """The temperature posterior from out-of-fold scores and the scope threshold from leave-one-out scope
        scores; `calibrated` False, with the reason, when a domain has fewer than 3 examples."""
        counts = np.bincount(y, minlength=len(self.domains))
        self.meta = {"examples": int(counts.sum()), "negatives": len(self.negatives),
                     "examples_per_domain": {d: int(c) for d, c in zip(self.domains, counts)}}
        alone = np.concatenate([(counts == 1)[y], np.zeros(len(self.context), bool)])
        loo = scope_scores(x, np.concatenate([x, self.context]), self.negatives, leave_one_out=True, alone=alone)
        self.scope_threshold = float(np.quantile(loo, 1 - self.target_recall)) if len(y) > 1 else -1.0
        self.calibrated, self.uncalibrated_reason = _calibration_state(self.domains, counts)
        logits, held = np.zeros((0, len(self.domains)), np.float32), np.zeros(len(y), bool)
        if len(self.domains) > 1 and counts.max() > 1:
            logits, held = out_of_fold(self.method, x, y, len(self.domains), FOLDS, seed)
            logits = logits[held]
            self.meta.update(folds=int(min(FOLDS, counts.max())),
                             calibration_accuracy=float((logits.argmax(axis=1) == y[held]).mean()))
        self.meta["held_out"] = int(held.sum())
        self.temperatures = [float(t) for t in temperature_posterior(logits, y[held], self.method)]

    # ---- scoring -------------------------------------------------------------------------------
    def _tensors(self) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Torch copies of the arrays, transposed to (dim, rows) and contiguous: a (1, dim) @ (dim, rows) product
        reads them in order, about twice as fast as a transposed view. Routing runs right after a torch
        embedding, and numpy's own BLAS threads would wait for torch's still-spinning ones. Last, the (rows,)
        mask of the examples that are their domain's only one, then the context rows (never alone)."""
        import torch

        s = self.scorer
        key = (id(s.x), id(s.weights), id(self.negatives), id(self.context))
        if getattr(self, "_t_key", None) != key:
            self._t = (torch.from_numpy(np.ascontiguousarray(s.x.T)),
                       torch.from_numpy(np.ascontiguousarray(self.context.T, dtype=np.float32)),
                       None if s.weights is None else torch.from_numpy(np.ascontiguousarray(s.weights)),
                       None if s.bias is None else torch.from_numpy(np.ascontiguousarray(s.bias)),
                       torch.from_numpy(np.ascontiguousarray(self.negatives.T, dtype=np.float32)),
                       torch.from_numpy(np.concatenate([np.bincount(s.y)[s.y] == 1,
                                                        np.zeros(len(self.context), bool)])))
            self._t_key = key
        return self._t

    def probabilities(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For query embeddings `vectors` (n, dim): the calibrated domain probabilities (n, domains: the mean
        softmax over the posterior temperatures, then `route_fit.evidence_bound`),
        the scope scores (n,) and the cosines to all examples (n, examples), computed in torch."""
        import torch

        q = normalise(vectors)
        x, ctx, weights, bias, neg, alone = self._tensors()
        with torch.no_grad():
            qt = torch.from_numpy(q)
            sims = qt @ x
            in_scope = torch.cat([sims, qt @ ctx], dim=1) if ctx.shape[1] else sims
            # the torch twin of Scorer.logits (numpy, used to fit): one query right after a torch embedding
            if self.method == "linear+nearest" and weights is not None:
                best_near = _reduce_max(sims, self.scorer.starts)
                logits = (torch.log_softmax(qt @ weights + bias, dim=1)
                          + torch.log_softmax(NEAREST_SCALE * best_near, dim=1))
            elif self.method == "linear" and weights is not None:
                logits = qt @ weights + bias
            else:
                logits = torch.from_numpy(np.ascontiguousarray(self.scorer.logits(q), dtype=np.float32))
            temps = torch.tensor(self.temperatures, dtype=torch.float64)  # the posterior predictive (route_fit)
            probs = torch.softmax(logits.double()[:, None, :] / temps[None, :, None], dim=2).mean(dim=1).numpy()
            near = torch.topk(in_scope, min(2, in_scope.shape[1]), dim=1)  # as route_fit.scope_scores
            top = torch.where(alone[near.indices[:, 0]], near.values[:, 0], near.values.mean(dim=1))
            penalty = (qt @ neg).max(dim=1).values if neg.shape[1] else torch.zeros(len(q))
            scope = (top - NEGATIVE_WEIGHT * penalty).numpy()
        return evidence_bound(probs, int(self.meta.get("examples", 0))), scope, sims.numpy()

    def route_vectors(self, vectors: np.ndarray) -> list[Route]:
        """One Route per row of `vectors` (query embeddings, shape (n, dim)): each domain's probability, the
        scope score, and the chosen domain unless the router abstains."""
        probs, scope, sims = self.probabilities(vectors)
        best = probs.argmax(axis=1)
        starts, ends = self.scorer.starts, np.append(self.scorer.starts[1:], len(self.scorer.y))
        out = []
        for i, c in enumerate(best):
            d = self.domains[c]
            reason = ("out_of_scope" if scope[i] < self.scope_threshold else
                      "ambiguous" if probs[i, c] < self.abstain_below else "")
            scores = {name: round(float(p), 4) for name, p in zip(self.domains, probs[i])}
            nearest = float(sims[i, starts[c]:ends[c]].max())
            out.append(Route(None if reason else d, round(float(probs[i, c]), 4), scores, bool(reason), reason, d,
                             round(nearest, 4), round(float(scope[i]), 4), self.calibrated))
        return out

    def explain(self, vector: np.ndarray, k: int = 3) -> dict:
        """For one query embedding (dim,): the `k` nearest example queries of each domain and the `k` nearest
        off-topic negatives (text and cosine), the scope score and its threshold: what a user reads to see
        what to add."""
        q = normalise(vector.reshape(1, -1))[0]
        sims = self.scorer.x @ q
        starts, ends = self.scorer.starts, np.append(self.scorer.starts[1:], len(self.scorer.y))

        def nearest(rows: np.ndarray, texts: list[str], offset: int = 0) -> list[dict]:
            idx = np.argsort(-rows)[:k]
            return [{"text": texts[offset + i] if offset + i < len(texts) else "", "cosine": round(float(rows[i]), 4)}
                    for i in idx]

        out = {"examples": {d: nearest(sims[starts[c]:ends[c]], self.texts, int(starts[c]))
                            for c, d in enumerate(self.domains)},
               "off_topic": nearest(self.negatives @ q, self.negative_texts) if len(self.negatives) else [],
               "scope_threshold": round(self.scope_threshold, 4)}
        return out

    # ---- persistence ---------------------------------------------------------------------------
    def summary(self) -> dict:
        """What `loradex route --fit` and `POST /admin/router/fit` report about a fitted router."""
        return {"domains": self.domains, "method": self.method, "examples": self.meta.get("examples"),
                "examples_per_domain": self.meta.get("examples_per_domain"),
                "negatives": self.meta.get("negatives", 0), "folds": self.meta.get("folds"),
                "held_out": self.meta.get("held_out", 0),
                "calibration_accuracy": self.meta.get("calibration_accuracy"), "calibrated": self.calibrated,
                "uncalibrated_reason": self.uncalibrated_reason, "temperature": round(self.temperature, 4),
                "temperature_range": [round(self.temperatures[0], 4), round(self.temperatures[-1], 4)],
                "abstain_below": self.abstain_below, "scope_threshold": self.scope_threshold,
                "target_recall": self.target_recall}

    def save(self, folder: Path, key: str) -> None:
        """Write router.<key>.npz, then router.json pointing at it, into `folder`; each write is atomic, so a
        crash leaves the previous router in use. Older .npz files are removed."""
        s = self.scorer
        arrays: dict[str, Any] = {"x": s.x, "y": s.y, "negatives": self.negatives, "context": self.context}
        if s.weights is not None:
            arrays.update(weights=s.weights, bias=s.bias)
        with writing(folder / f"router.{key}.npz") as f:
            np.savez(f, **arrays)
        info = {"format": FORMAT, "key": key, "domains": self.domains, "method": s.method,
                "scope_threshold": self.scope_threshold, "temperatures": self.temperatures,
                "min_probability": self.min_probability,
                "target_recall": self.target_recall, "calibrated": self.calibrated,
                "uncalibrated_reason": self.uncalibrated_reason, "texts": self.texts,
                "negative_texts": self.negative_texts, "meta": self.meta}
        write_text(folder / "router.json", json.dumps(info, indent=1))
        for old in folder.glob("router.*.npz"):
            if old.name != f"router.{key}.npz":
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> tuple[Router, str] | None:
        """The router saved in `folder` and its key, or None when there is none or it is unreadable (an older
        format included: it is then refitted). Logs a warning when the router is uncalibrated."""
        try:
            info = json.loads((folder / "router.json").read_text())
            if info.get("format") != FORMAT:
                return None
            arrays = np.load(folder / f"router.{info['key']}.npz")
            scorer = Scorer(info["method"], arrays["x"], arrays["y"], len(info["domains"]),
                            arrays["weights"] if "weights" in arrays else None,
                            arrays["bias"] if "bias" in arrays else None)
            r = cls(info["domains"], scorer, arrays["negatives"], arrays["context"], info["scope_threshold"],
                    info["temperatures"], info["min_probability"], info["target_recall"], info["calibrated"],
                    info["uncalibrated_reason"], info["texts"], info["negative_texts"], info["meta"])
        except (OSError, ValueError, KeyError):
            return None
        if not r.calibrated:
            log.warning("router uncalibrated: %s", r.uncalibrated_reason)
        return r, info["key"]


def _calibration_state(domains: list[str], counts: np.ndarray) -> tuple[bool, str]:
    """(calibrated, why not): a domain with fewer than `MIN_CALIBRATION_EXAMPLES` examples makes the router
    uncalibrated; the reason names those domains and says what to do."""
    few = [(d, int(c)) for d, c in zip(domains, counts) if c < MIN_CALIBRATION_EXAMPLES]
    if not few:
        return True, ""
    ones, twos = [d for d, c in few if c == 1], [d for d, c in few if c == 2]
    held = ([f"none can be held out of {', '.join(ones)}"] if ones else []) + (
        [f"one a fold is held out of {', '.join(twos)}"] if twos else [])
    rest = "rest on loradex's prior temperature alone" if len(ones) == len(domains) else (
        "lean on loradex's prior temperature more than on held-out examples")
    names = ", ".join(d for d, _ in few)
    return False, (f"{names} {'has' if len(few) == 1 else 'have'} fewer than {MIN_CALIBRATION_EXAMPLES} example "
                   f"queries ({'; '.join(held)}), so the scores {rest}, and a query scored under "
                   f"{UNCALIBRATED_MIN_PROBABILITY} goes to the base model: add examples (5 or more a domain)")


def _reduce_max(sims: Any, starts: np.ndarray) -> Any:
    """(n, domains) torch max of (n, examples) cosines over each domain's rows (rows grouped by domain)."""
    import torch

    bounds = [*starts.tolist(), sims.shape[1]]
    return torch.stack([sims[:, a:b].max(dim=1).values for a, b in zip(bounds[:-1], bounds[1:])], dim=1)
