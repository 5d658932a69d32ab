"""The numbers behind the report's plots and tables: cumulative rates, regret, percentiles.

Pure functions over the typed run records (numpy only), so the plots and the tables show the same
figures and the tests can check them against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import proportion_confint

from streamrec.report.rundir import PipelineBatch, ShopperRequest

__all__ = [
    "CumulativeRate",
    "CumulativeSum",
    "Distribution",
    "by_variant",
    "cumulative_rate",
    "cumulative_sum",
    "distribution",
    "dlq_by_reason",
]

PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class CumulativeRate:
    """A success rate after each request, with its Wilson (1 - alpha) band."""

    t: np.ndarray
    rate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    successes: int
    n: int


@dataclass(frozen=True)
class CumulativeSum:
    """A running total per request (x = 1..n)."""

    total: np.ndarray

    @property
    def final(self) -> float:
        return float(self.total[-1]) if len(self.total) else 0.0


@dataclass(frozen=True)
class Distribution:
    """Summary of a sample: size, mean, p50/p95/p99, max."""

    values: np.ndarray
    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float


def by_variant(shoppers: Iterable[ShopperRequest], order: Sequence[str] = ()) -> dict[str, list[ShopperRequest]]:
    """Requests per variant, each list in time order.

    Variants come in ``order`` (the experiment definition's, so every table and plot lists them the
    same way), then any others by name.
    """
    groups: dict[str, list[ShopperRequest]] = {}
    for s in shoppers:
        groups.setdefault(s.variant or "(none)", []).append(s)
    names = [n for n in order if n in groups] + sorted(set(groups) - set(order))
    return {name: sorted(groups[name], key=lambda s: s.t) for name in names}


def wilson_band(successes: np.ndarray, n: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-request Wilson score bands of a running rate (descriptive: the experiment's own intervals,
    serving.experiments.analysis, are clustered by user and so wider where users repeat)."""
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def cumulative_rate(rows: Sequence[ShopperRequest], success: Callable[[ShopperRequest], bool],
                    alpha: float) -> CumulativeRate:
    """Rate of ``success`` over the first i requests, i = 1..n, with Wilson bands."""
    hits = np.cumsum([1.0 if success(r) else 0.0 for r in rows])
    n = np.arange(1, len(rows) + 1, dtype=float)
    if len(rows) == 0:
        empty = np.array([])
        return CumulativeRate(empty, empty, empty, empty, 0, 0)
    low, high = wilson_band(hits, n, alpha)
    t = np.array([r.t for r in rows], dtype=float)
    return CumulativeRate(t, hits / n, low, high, int(hits[-1]), len(rows))


def cumulative_sum(values: Iterable[float]) -> CumulativeSum:
    return CumulativeSum(np.cumsum(np.fromiter(values, dtype=float)))


def distribution(values: Iterable[float]) -> Distribution:
    """Percentiles by numpy's default (linear interpolation) method; nan for an empty sample."""
    arr = np.fromiter(values, dtype=float)
    if arr.size == 0:
        nan = float("nan")
        return Distribution(arr, 0, nan, nan, nan, nan, nan)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, PERCENTILES))
    return Distribution(np.sort(arr), int(arr.size), float(arr.mean()), p50, p95, p99, float(arr.max()))


def dlq_by_reason(batches: Iterable[PipelineBatch]) -> dict[str, int]:
    """Dead letters per reason over all batches, most frequent first."""
    totals: dict[str, int] = {}
    for b in batches:
        for reason, n in b.dlq_reasons.items():
            totals[reason] = totals.get(reason, 0) + int(n)
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))
