"""Fitting the router: the scorers, cross-validated calibration, and the off-topic negatives.

- Scorers turn normalised embeddings into one logit per domain: `linear` (multinomial logistic regression),
  `nearest` (cosine to the domain's nearest example), `centroid` (cosine to the domain's mean example), and
  `linear+nearest`, the default, which adds the log-probabilities of the first two: with 30 examples a domain
  it chose the right domain of 86% of CLINC150's validation queries, against 84% and 83% for each alone.
- Negatives: a general set of off-topic queries written for loradex (`data/off_topic.txt`; not from CLINC150
  or any evaluation set). A negative as close to one of the project's examples as that example's own domain
  neighbours are is dropped: the project's examples always win over the general set.
- The scope score (`scope_scores`).
- Calibration that stays honest with few examples. Temperature scaling (Guo et al., "On Calibration of Modern
  Neural Networks", ICML 2017) fits one softmax temperature on out-of-fold scores; with a handful of held-out
  examples, all routed right, its best temperature goes to 0 and every score, right or wrong, to 1.00. Here
  the temperature is not one fitted number but a posterior over a grid: a log-normal prior around the
  temperature the method needs with 30 examples a domain (`TEMPERATURE_PRIOR`, fitted on CLINC150's `train`
  split, never `test`) times the class-balanced likelihood of the out-of-fold scores, and a query's score is
  the posterior predictive, the mean of its softmax over the posterior (Bayesian averaging over calibration
  maps, as in Naeini et al., "Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI 2015).
  Few held-out examples leave the posterior wide and the scores moderate; many make it the fitted temperature.
  With no held-out example at all (one example in every domain) the prior alone gives the scores. Last,
  `evidence_bound` keeps any score under (n + 1) / (n + 2) for a router fitted on n examples (Laplace's rule of
  succession), so a few examples can never show 1.00.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OFF_TOPIC_FILE = Path(__file__).parent / "data" / "off_topic.txt"
METHODS = ("linear+nearest", "linear", "centroid", "nearest")
NEGATIVE_WEIGHT = 0.3  # of the off-topic cosine in the scope score; chosen on CLINC150's validation splits, not test
NEAREST_SCALE = 20.0  # nearest-example cosines times this are logits (a temperature of 0.05, fitted on CLINC val)
# The temperature each method's logits need, the geometric mean of the maximum-likelihood temperature over 6 draws
# of 30 examples a domain from 10 CLINC150 domains (`train` split only; all-MiniLM-L6-v2): the prior's median.
TEMPERATURE_PRIOR = {"linear+nearest": 2.0, "linear": 1.25, "centroid": 0.045, "nearest": 0.05}
PRIOR_SPREAD = 1.0  # standard deviation of the prior on log(temperature): a factor e either way is plausible
GRID = np.exp(np.linspace(np.log(0.01), np.log(100.0), 161))  # the temperatures the posterior is computed on
QUADRATURE = 16  # equal-mass temperatures that stand for the posterior when scoring (within 0.004 of the full sum)


def off_topic_queries(path: Path = OFF_TOPIC_FILE) -> list[str]:
    """The shipped general off-topic queries (one a line; `#` lines are comments)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [q.strip() for q in lines if q.strip() and not q.lstrip().startswith("#")]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32; shape kept."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, classes) logits."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, classes) logits."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ---- scorers ---------------------------------------------------------------------------------------

def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, *, weight_decay: float = 1e-4, steps: int = 300,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on (n, dim) features, full-batch L-BFGS in torch, classes weighted to
    be balanced. Returns weights (dim, n_classes) and bias (n_classes,)."""
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


@dataclass
class Scorer:
    """One fitted scorer: class logits for queries. `x` (n, dim) normalised rows grouped by class `y` (n,)."""

    method: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        order = np.argsort(self.y, kind="stable")  # rows grouped by class: one reduceat per query batch
        self.x, self.y = np.ascontiguousarray(self.x[order]), self.y[order]
        self.starts = np.searchsorted(self.y, np.arange(self.n_classes))

    @classmethod
    def fit(cls, method: str, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> Scorer:
        s = cls(method, x, y, n_classes)
        if method in ("linear", "linear+nearest") and n_classes > 1:
            s.weights, s.bias = fit_linear(s.x, s.y, n_classes, seed=seed)
        return s

    def nearest(self, q: np.ndarray) -> np.ndarray:
        """(n, n_classes): cosine of each query to each class's closest row (every class has rows)."""
        return np.maximum.reduceat(q @ self.x.T, self.starts, axis=1)

    def logits(self, q: np.ndarray) -> np.ndarray:
        """(n, n_classes) logits of normalised queries `q` (n, dim)."""
        if self.method == "linear+nearest" and self.weights is not None:
            return log_softmax(q @ self.weights + self.bias) + log_softmax(NEAREST_SCALE * self.nearest(q))
        if self.method == "linear" and self.weights is not None:
            return q @ self.weights + self.bias
        if self.method == "centroid":
            cents = normalise(np.stack([self.x[self.y == c].mean(0) for c in range(self.n_classes)]))
            return q @ cents.T
        return self.nearest(q)


# ---- negatives and calibration ---------------------------------------------------------------------

BLOCK = 2048  # query rows per product, so a large example set never needs an (n, n) matrix at once


def keep_negatives(examples: np.ndarray, labels: np.ndarray, negatives: np.ndarray,
                   quantile: float = 0.1) -> np.ndarray:
    """Mask of the negatives to keep: a negative whose cosine to its nearest example reaches the `quantile` of
    the examples' cosines to their nearest same-domain neighbour is as close as the project's own examples
    are to each other, so it is dropped. Shapes: examples (n, dim), labels (n,), negatives (m, dim)."""
    own = np.full(len(examples), -np.inf, np.float32)
    for start in range(0, len(examples), BLOCK):
        rows = slice(start, start + BLOCK)
        sims = examples[rows] @ examples.T
        sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf
        own[rows] = np.where(labels[rows, None] == labels[None, :], sims, -np.inf).max(axis=1)
    own = own[np.isfinite(own)]
    if not len(own) or not len(negatives):
        return np.ones(len(negatives), bool)
    limit = float(np.quantile(own, quantile))
    return (negatives @ examples.T).max(axis=1) < limit


def scope_scores(queries: np.ndarray, examples: np.ndarray, negatives: np.ndarray, *, weight: float = NEGATIVE_WEIGHT,
                 leave_one_out: bool = False, alone: np.ndarray | None = None) -> np.ndarray:
    """(n,) scope scores: each query's mean cosine to its two nearest `examples` minus `weight` times its
    cosine to the nearest of `negatives`. All inputs are normalised rows ((n, dim), (e, dim), (m, dim)).
    `leave_one_out`: `queries` are the first rows of `examples`, each scored without itself. `alone` (e,) marks
    the examples that are their domain's only one: one of them nearest counts twice (its cosine alone is the
    score), as a query close to a one-example domain has no second example of that domain to be close to."""
    k = min(2, len(examples) - int(leave_one_out))
    if k < 1:
        return np.zeros(len(queries), np.float32)
    top = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), BLOCK):
        sims = queries[start:start + BLOCK] @ examples.T
        if leave_one_out:
            sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf
        nearest = -np.partition(-sims, k - 1, axis=1)[:, :k]
        top[start:start + BLOCK] = nearest.mean(axis=1)
        if alone is not None and alone.any():
            first = sims.argmax(axis=1)
            top[start:start + BLOCK] = np.where(alone[first], nearest.max(axis=1), top[start:start + BLOCK])
    penalty = (queries @ negatives.T).max(axis=1) if len(negatives) else 0.0
    return top - weight * penalty


def folds_of(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A stratified fold number in 0..k-1 for each label of `y` (n,): each class spread evenly over the folds.
    A class with one row gets -1: it is never held out, so every training split keeps every class (a class
    with c >= 2 rows loses at most ceil(c / k) < c of them in any fold)."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(y), -1)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) > 1:
            fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


def out_of_fold(method: str, x: np.ndarray, y: np.ndarray, n_classes: int, k: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_classes) logits of the rows of `x` (n, dim) by a scorer fitted on the other folds (stratified
    k-fold, `folds_of`), and the (n,) mask of the rows that were held out (not those of one-row classes,
    whose logits stay 0). Every class needs at least one row."""
    fold = folds_of(y, k, seed)
    out = np.zeros((len(y), n_classes), np.float32)
    for f in range(k):
        test = fold == f
        if test.any():
            out[test] = Scorer.fit(method, x[~test], y[~test], n_classes, seed).logits(x[test])
    return out, fold >= 0


def temperature_posterior(logits: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """`QUADRATURE` temperatures of equal posterior mass (ascending) given out-of-fold `logits` (n, classes) of
    rows labelled `y` (n,); n may be 0. Prior: log-normal with median `TEMPERATURE_PRIOR[method]` and
    `PRIOR_SPREAD`. Likelihood: the held-out rows' softmax probability of their own class, each class weighing
    as much as any other (weights n / (classes present * rows of the class)), as the linear scorer is fitted.
    Raises KeyError for an unknown method."""
    log_post = -0.5 * ((np.log(GRID) - np.log(TEMPERATURE_PRIOR[method])) / PRIOR_SPREAD) ** 2
    if len(y):
        present, counts = np.unique(y, return_counts=True)
        weight = len(y) / (len(present) * counts[np.searchsorted(present, y)])
        for i, t in enumerate(GRID):
            own = log_softmax(logits.astype(np.float64) / t)[np.arange(len(y)), y]
            log_post[i] += float((weight * own).sum())
    mass = np.exp(log_post - log_post.max())
    cumulative = np.cumsum(mass / mass.sum())
    quantiles = (np.arange(QUADRATURE) + 0.5) / QUADRATURE
    return GRID[np.minimum(np.searchsorted(cumulative, quantiles), len(GRID) - 1)]


def evidence_bound(probs: np.ndarray, n: int) -> np.ndarray:
    """`probs` (n_queries, classes) mixed with the uniform distribution just enough that no score exceeds
    (n + 1) / (n + 2), the chance Laplace's rule of succession gives the next prediction being right after `n`
    right ones: what n example queries can support at most. Order and argmax are kept; one class is left as it is."""
    k = probs.shape[1]
    if k < 2:
        return probs
    share = k / ((k - 1) * (n + 2))  # (1 - share) * 1 + share / k == (n + 1) / (n + 2)
    return (1 - share) * probs + share / k
