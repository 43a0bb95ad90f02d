"""The domain router: which domain (and so which adapter and which sources) a query belongs to.

Fitted from each domain's example queries, on the project's own embedder:
- `linear` (default, chosen on CLINC150 by benchmarks/routing_clinc150.py): a multinomial logistic
  regression on the normalised embeddings; `centroid`: cosine to each domain's mean example;
  `nearest`: cosine to each domain's closest example.
- Scores are probabilities: a softmax whose temperature is fitted on a held-out part of the examples
  (minimum negative log-likelihood), so a 0.8 means right about 80% of the time on that held-out part.
- Abstention has two independent reasons. `ambiguous`: the top probability is under `min_probability`
  (two domains too close). `out_of_scope`: the query is farther from the chosen domain's examples than
  almost all of that domain's held-out examples were (a per-domain cosine threshold at the quantile
  that keeps `target_recall` of them). Softmax scores alone cannot say "none of these": they always sum to 1.
- After calibration the router is refitted on all examples; thresholds stay those of the held-out part.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text, writing
from .errors import RouterError
from .types import Route

__all__ = ["METHODS", "Route", "Router", "RouterError"]

METHODS = ("linear", "centroid", "nearest")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float = 1e-4,
                steps: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, full-batch L-BFGS in torch; classes weighted to be balanced."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    weights = torch.from_numpy(len(y) / (n_classes * np.maximum(counts, 1)))
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    scale = 10.0  # cosine features are small; a fixed input scale keeps the optimisation well conditioned

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(scale * xt @ w + b, yt, weight=weights)
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (scale * w).detach().numpy(), b.detach().numpy()


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature minimising held-out negative log-likelihood (grid over log-space)."""
    best, best_t = float("inf"), 1.0
    for t in np.exp(np.linspace(np.log(0.01), np.log(100.0), 161)):
        p = _softmax(logits / t)
        nll = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean()
        if nll < best:
            best, best_t = nll, float(t)
    return best_t


@dataclass
class Router:
    domains: list[str]
    method: str
    examples: np.ndarray  # normalised example embeddings (n, dim)
    labels: np.ndarray  # domain index per example
    weights: np.ndarray | None = None  # linear: (dim, n_domains)
    bias: np.ndarray | None = None
    temperature: float = 1.0
    sim_thresholds: dict[str, float] = field(default_factory=dict)
    min_probability: float = 0.5
    target_recall: float = 0.95
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        order = np.argsort(self.labels, kind="stable")  # examples grouped by domain: one reduceat per query batch
        self.examples, self.labels = np.ascontiguousarray(self.examples[order]), self.labels[order]
        self._starts = np.searchsorted(self.labels, np.arange(len(self.domains)))

    # ---- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, vectors: np.ndarray, labels: Sequence[str], *, method: str = "linear", holdout: float = 0.2,
            target_recall: float = 0.95, min_probability: float = 0.5, seed: int = 0,
            calibration: tuple[np.ndarray, Sequence[str]] | None = None) -> Router:
        """Fit on example embeddings `vectors` (shape (n, dim); normalised here) with their domain names
        `labels` (n of them).

        Calibration (temperature, per-domain thresholds) uses `calibration` (vectors, labels) when given, else
        a stratified `holdout` share of the examples; the final router is then fitted on all examples.
        Raises RouterError for an unknown method, no examples, or fewer than 3 examples in every domain.
        """
        if method not in METHODS:
            raise RouterError(f"unknown router method {method!r}; use one of {', '.join(METHODS)}")
        domains = sorted(set(labels))
        if not domains:
            raise RouterError("no domain has example queries; add domains.<name>.examples to loradex.yaml")
        x = _normalise(vectors)
        y = np.array([domains.index(d) for d in labels])
        if calibration is not None:
            fit_idx, cal_x = np.arange(len(y)), _normalise(calibration[0])
            cal_y = np.array([domains.index(d) for d in calibration[1]])
        else:
            rng = np.random.default_rng(seed)
            cal_idx = []
            for c in range(len(domains)):
                idx = np.flatnonzero(y == c)
                if len(idx) >= 3:  # keep at least two examples per domain to fit on
                    cal_idx += list(rng.choice(idx, size=max(1, round(len(idx) * holdout)), replace=False))
            if not cal_idx:
                raise RouterError("too few example queries to calibrate the router: give each domain at least 3")
            mask = np.zeros(len(y), bool)
            mask[cal_idx] = True
            fit_idx, cal_x, cal_y = np.flatnonzero(~mask), x[mask], y[mask]
        part = cls._fit_on(domains, method, x[fit_idx], y[fit_idx], seed)
        logits = part._logits(cal_x)
        temperature = _fit_temperature(logits, cal_y) if len(domains) > 1 else 1.0
        sims = part._nearest_sims(cal_x)
        thresholds = {}
        for c, d in enumerate(domains):
            own = sims[cal_y == c, c]
            thresholds[d] = float(np.quantile(own, 1 - target_recall)) if len(own) else -1.0
        final = cls._fit_on(domains, method, x, y, seed) if calibration is None else part
        final.temperature, final.sim_thresholds = temperature, thresholds
        final.min_probability, final.target_recall = min_probability, target_recall
        final.meta = {"examples": int(len(y)), "calibration_examples": int(len(cal_y)),
                      "calibration_accuracy": float((logits.argmax(1) == cal_y).mean())}
        return final

    @classmethod
    def _fit_on(cls, domains: list[str], method: str, x: np.ndarray, y: np.ndarray, seed: int) -> Router:
        r = cls(domains, method, x, y)
        if method == "linear" and len(domains) > 1:
            r.weights, r.bias = _fit_linear(x, y, len(domains), seed=seed)
        return r

    # ---- scoring -------------------------------------------------------------------------------
    def _nearest_sims(self, q: np.ndarray) -> np.ndarray:
        """(n, n_domains): cosine of each query to each domain's closest example."""
        return np.maximum.reduceat(q @ self.examples.T, self._starts, axis=1)  # every domain has examples

    def _logits(self, q: np.ndarray) -> np.ndarray:
        if self.method == "linear" and self.weights is not None:
            return q @ self.weights + self.bias
        if self.method == "centroid":
            cents = _normalise(np.stack([self.examples[self.labels == c].mean(0) for c in range(len(self.domains))]))
            return q @ cents.T
        return self._nearest_sims(q)

    def _tensors(self) -> tuple[Any, Any, Any]:
        """Torch views of the arrays (no copies). Routing runs right after a torch embedding, and numpy's own
        BLAS threads would wait for torch's still-spinning ones (benchmarks/routing_clinc150.py)."""
        import torch

        key = (id(self.examples), id(self.weights))
        if getattr(self, "_t_key", None) != key:
            self._t = (torch.from_numpy(self.examples),
                       None if self.weights is None else torch.from_numpy(np.ascontiguousarray(self.weights)),
                       None if self.bias is None else torch.from_numpy(np.ascontiguousarray(self.bias)))
            self._t_key = key
        return self._t

    def route_vectors(self, vectors: np.ndarray) -> list[Route]:
        """One Route per row of `vectors` (query embeddings, shape (n, dim); normalised here): the calibrated
        probabilities of every domain and, unless the router abstains, the chosen domain."""
        import torch

        q = _normalise(vectors)
        examples, weights, bias = self._tensors()
        qt = torch.from_numpy(q)
        with torch.no_grad():
            if self.method == "linear" and weights is not None:
                logits = qt @ weights + bias
            else:
                logits = torch.from_numpy(np.ascontiguousarray(self._logits(q), dtype=np.float32))
            probs = torch.softmax(logits.double() / self.temperature, dim=1).numpy()
        best = probs.argmax(axis=1)
        ends = np.append(self._starts[1:], len(self.labels))
        out = []
        for i in range(len(q)):
            c = int(best[i])
            d = self.domains[c]
            scores = {name: round(float(p), 4) for name, p in zip(self.domains, probs[i])}
            with torch.no_grad():  # the chosen domain's examples only
                sim = float((examples[self._starts[c]:ends[c]] @ qt[i]).max())
            reason = ""
            if sim < self.sim_thresholds.get(d, -1.0):
                reason = "out_of_scope"
            elif probs[i, c] < self.min_probability:
                reason = "ambiguous"
            out.append(Route(None if reason else d, round(float(probs[i, c]), 4), scores, bool(reason), reason, d,
                             round(sim, 4)))
        return out

    # ---- persistence ---------------------------------------------------------------------------
    def summary(self) -> dict:
        """What `loradex route --fit` and `POST /admin/router/fit` report about a fitted router."""
        return {"domains": self.domains, "method": self.method, "examples": self.meta.get("examples"),
                "calibration_examples": self.meta.get("calibration_examples"),
                "calibration_accuracy": self.meta.get("calibration_accuracy"),
                "temperature": self.temperature, "sim_thresholds": self.sim_thresholds}

    def save(self, folder: Path, key: str) -> None:
        """Write router.<key>.npz, then router.json pointing at it, into `folder`; each write is atomic, so a
        crash leaves the previous router in use. Older .npz files are removed."""
        arrays: dict[str, Any] = {"examples": self.examples, "labels": self.labels}
        if self.weights is not None:
            arrays.update(weights=self.weights, bias=self.bias)
        with writing(folder / f"router.{key}.npz") as f:
            np.savez(f, **arrays)
        info = {"key": key, "domains": self.domains, "method": self.method, "temperature": self.temperature,
                "sim_thresholds": self.sim_thresholds, "min_probability": self.min_probability,
                "target_recall": self.target_recall, "meta": self.meta}
        write_text(folder / "router.json", json.dumps(info, indent=2))
        for old in folder.glob("router.*.npz"):
            if old.name != f"router.{key}.npz":
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> tuple[Router, str] | None:
        """The router saved in `folder` and its key, or None when there is none or it is unreadable."""
        try:
            info = json.loads((folder / "router.json").read_text())
            arrays = np.load(folder / f"router.{info['key']}.npz")
        except (OSError, ValueError, KeyError):
            return None
        r = cls(info["domains"], info["method"], arrays["examples"], arrays["labels"],
                arrays["weights"] if "weights" in arrays else None, arrays["bias"] if "bias" in arrays else None,
                info["temperature"], info["sim_thresholds"], info["min_probability"], info["target_recall"],
                info["meta"])
        return r, info["key"]
