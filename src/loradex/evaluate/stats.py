"""Uncertainty of `loradex eval` figures: percentile bootstrap intervals of a mean, and the paired bootstrap of
the difference between two modes answered on the same questions (Efron and Tibshirani, "An Introduction to
the Bootstrap", 1993; the paired test as Koehn, "Statistical Significance Tests for Machine Translation
Evaluation", EMNLP 2004, uses it). Deterministic: the resamples come from a seeded generator.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap", "paired_bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% (by default) percentile interval and the number of questions behind it."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4), "n": self.n}


def _defined(*columns: Sequence[float | None]) -> list[np.ndarray]:
    """The rows where every column has a value (a metric that does not apply to a question is None)."""
    keep = [all(c[i] is not None for c in columns) for i in range(len(columns[0]))]
    return [np.array([v for v, k in zip(c, keep) if k], dtype=float) for c in columns]


def bootstrap(values: Sequence[float | None], *, resamples: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> Interval | None:
    """The mean of `values` (None entries left out) with its percentile bootstrap interval; None when no value
    is defined."""
    (x,) = _defined(values)
    if not len(x):
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return Interval(float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)),
                    len(x))


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], *, resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> Interval | None:
    """mean(a) - mean(b) over the questions where both are defined, with a percentile interval from resampling
    the questions (the same resample for both, so what the two modes share cancels); None when no question
    has both. An interval above 0 says `a` beats `b` at that confidence."""
    x, y = _defined(a, b)
    if not len(x):
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    diffs = x[idx].mean(axis=1) - y[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return Interval(float(x.mean() - y.mean()), float(np.percentile(diffs, tail)),
                    float(np.percentile(diffs, 100 - tail)), len(x))
