"""Interval statistics over repeated benchmark runs: Student-t 95 % intervals over seeds, and
distribution-free intervals of a median over timed rounds (`median_interval`, `verdict`).

A load point is run once per seed; the runs are independent, so the mean over seeds and a
t-interval (Student, 1908) on it say how far the mean could move in another set of runs.
Two contenders run on the same arrivals and budgets of one seed are paired: their per-seed
difference gets its own interval, which is tighter than comparing two separate intervals
(the shared arrivals cancel out). Pure Python: no scipy in the runtime's dependencies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95 % critical values of Student's t, by degrees of freedom (1..30)
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z95 = 1.959964  # the normal limit


def t_critical_95(df: int) -> float:
    """Two-sided 95 % critical value of Student's t with `df` degrees of freedom.

    Tabulated for df <= 30; beyond, interpolated linearly in 1/df towards the normal
    value (error < 0.001).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    w = len(_T95) / df  # 1 at df = 30, -> 0 as df grows
    return _Z95 + (_T95[-1] - _Z95) * w


@dataclass(frozen=True)
class Interval:
    """Mean of per-seed values with its two-sided 95 % t-interval."""

    mean: float  # mean over seeds
    half_width: float  # t * s / sqrt(n); nan with one value
    n: int  # seeds

    @property
    def lo(self) -> float:
        return self.mean - self.half_width

    @property
    def hi(self) -> float:
        return self.mean + self.half_width

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "half_width": self.half_width, "lo": self.lo, "hi": self.hi, "n": self.n}

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % t-interval of independent per-seed values.

    Raises:
        ValueError: no values.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(mean, math.nan, 1)
    sd = statistics.stdev(xs)
    return Interval(mean, t_critical_95(len(xs) - 1) * sd / math.sqrt(len(xs)), len(xs))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Interval:
    """Interval of mean(a - b) over seeds, where a[k] and b[k] ran on the same seed."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return mean_interval([x - y for x, y in zip(a, b, strict=True)])


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi): the median of `values` and a distribution-free interval for it.

    [x_(k), x_(n+1-k)] of the sorted values, with the largest k whose two-sided binomial
    tail P(Bin(n, 1/2) < k) stays within (1 - confidence) / 2: it covers the true median
    with at least `confidence` for any continuous distribution of independent values,
    outliers included (a mean's t-interval would not survive one stalled round). With
    fewer than 6 values no such k exists at 95 %: the interval is the whole range.

    Raises:
        ValueError: no values.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    alpha = (1.0 - confidence) / 2
    k, tail = 0, 0.0  # tail = P(Bin(n, 1/2) <= k - 1)
    while k < n // 2:
        nxt = tail + math.comb(n, k) / 2**n  # P(Bin <= k)
        if nxt > alpha:
            break
        tail, k = nxt, k + 1
    if k == 0:
        return statistics.median(xs), xs[0], xs[-1]
    return statistics.median(xs), xs[k - 1], xs[n - k]


def verdict(lo: float, hi: float, target: float) -> str:
    """ "pass" when the interval [lo, hi] lies at or under `target`, "FAIL" when above it,
    "within noise" when it contains the target."""
    if hi <= target:
        return "pass"
    if lo > target:
        return "FAIL"
    return "within noise"


def pooled_attainment(scores: list[dict]) -> float:
    """On-time share of the admitted requests, pooled over runs (`score` dicts: `admitted`,
    `admitted_slo_attainment`); nan when none was admitted."""
    admitted = sum(s["admitted"] for s in scores)
    on_time = sum(s["admitted_slo_attainment"] * s["admitted"] for s in scores if s["admitted"])
    return on_time / admitted if admitted else float("nan")
