"""Open-loop arrival processes and per-request budgets for the load suite.

Open loop: requests arrive on their own schedule whether or not earlier ones finished, as
real traffic does (a closed loop hides overload by slowing its own senders).
- Poisson: exponential gaps at `rate` per second.
- Bursty on/off: Poisson at `rate / duty` during "on" periods and silence during "off"
  periods (exponential lengths, mean `period * duty` and `period * (1 - duty)`), so the
  long-run mean rate is still `rate` but arrivals come in bursts.
Budgets are drawn per request from a stated distribution: log-uniform between `lo_ms` and
`hi_ms`, so tight and loose requests mix on every scale.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


def poisson(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival times in [0, duration_s) of a Poisson process with `rate` per second."""
    if rate <= 0:
        return []
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def on_off(
    rate: float, duration_s: float, rng: random.Random, duty: float = 0.25, period_s: float = 1.0
) -> list[float]:
    """Bursty arrivals: Poisson at rate/duty while on, nothing while off; mean rate `rate`."""
    if rate <= 0:
        return []
    if not 0 < duty <= 1:
        raise ValueError(f"duty must be in (0, 1], got {duty}")
    times, t, on = [], 0.0, rng.random() < duty
    while t < duration_s:
        length = rng.expovariate(1 / (period_s * (duty if on else 1 - duty))) if duty < 1 else duration_s
        end = min(duration_s, t + length)
        if on:
            s = t + rng.expovariate(rate / duty)
            while s < end:
                times.append(s)
                s += rng.expovariate(rate / duty)
        t, on = end, not on
    return times


@dataclass(frozen=True)
class BudgetDistribution:
    """Log-uniform per-request latency budgets."""

    lo_ms: float  # tightest budget
    hi_ms: float  # loosest budget

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.lo_ms), math.log(self.hi_ms)))

    def share_at_least(self, ms: float) -> float:
        """The share of budgets of at least `ms` milliseconds."""
        if ms <= self.lo_ms:
            return 1.0
        if ms > self.hi_ms:
            return 0.0
        return math.log(self.hi_ms / ms) / math.log(self.hi_ms / self.lo_ms)

    def describe(self) -> str:
        return f"log-uniform [{self.lo_ms:.3g}, {self.hi_ms:.3g}] ms"
