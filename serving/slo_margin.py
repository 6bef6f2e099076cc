"""`TailQuantile`: the planning margin, set by the share of admitted requests that end late.

The latency model plans every batch at a quantile of the forwards' recent spread
(`LatencyPredictor`: the profiled median × machine factor × `tail`, where `tail` is a
quantile of the observed / expected ratios). Which quantile is a trade: a higher one
refuses or moves to cheaper subnets requests it could have served; a lower one admits
requests that then end late. A fixed quantile gets the trade right on one machine only.
Measured with the quantile fixed at 0.95, the demo's admitted requests ended in budget
98.6–98.7 % of the time at Poisson 1–1.5× on the development machine (long stalls, forwards
that share the interpreter lock), while in simulation with the profile's spread the same
quantile kept 99.85–100 % in budget and refused requests a lower one would have served
within budget.

So the quantile follows the outcome it exists for, as a feedback loop: an exponentially
weighted share of late endings over the recent admitted, non-best-effort requests
(answered after their deadline, or shed because they could no longer make it) is held at
`aim` = half of the misses the SLO allows (1 % at `slo` 0.99: aim 0.5 %), by an integral
controller on log(1 − quantile): each request moves it by `GAIN × (aim − share) / aim`,
so the quantile rises while more requests end late than aimed for and falls while fewer
do, within `BOUNDS`. The half leaves room for the share's noise (at 0.5 % a window of
`WINDOW` requests sees about 2.5 late ones). Pure Python; the scheduler owns one.

It never rises above 0.95, the fixed value it replaced: a margin buys fewer late endings
only where they come from the forwards' ordinary spread. On the development machine the
demo's misses come from stalls no quantile covers: with a ceiling of 0.99 the feedback
climbed to 0.97–0.99 in two load runs (bench/results at 8c3d3ed, and `elastic bench load
--scenario demo` at ca73fcb, not kept), refused up to 14 points more requests than the
fixed quantile and put hardly more of them in budget (98.98 % against 98.69 % at Poisson
1×), costing 3.6–10.6 points of effective accuracy under Poisson load in the second run
(−10.6, interval −19.4 to −1.8, at 2×). Below the ceiling it only spends margin that the
SLO shows to be unused.
"""

from __future__ import annotations

import math

from elastic.errors import ConfigError

WINDOW = 512  # requests: the late share's exponential memory
GAIN = 1e-3  # per request: the step of log(1 - quantile) at a relative error of 1
BOUNDS = (0.5, 0.95)  # the quantile stays within: down to a median, up to the fixed 0.95 it replaced


def check_slo_target(slo: object) -> float:
    """`slo` as a float in (0, 1), or `ConfigError`."""
    if isinstance(slo, bool) or not isinstance(slo, (int, float)) or not 0.0 < slo < 1.0:
        raise ConfigError(f"slo_target must be a number in (0, 1), got {slo!r}")
    return float(slo)


class TailQuantile:
    """The planning quantile, held where the share of late admitted requests meets `slo`.

    Args:
        slo: the share of admitted, non-best-effort requests that should end within
            budget, in (0, 1); the controller aims at half the misses it allows.
        start: the quantile before any outcome is observed.
    """

    def __init__(self, slo: float = 0.99, start: float = 0.95):
        lo, hi = BOUNDS
        self.slo = check_slo_target(slo)
        self.aim = (1.0 - self.slo) / 2
        self.quantile = min(hi, max(lo, start))
        self.late_share = self.aim  # starts on target: no push before evidence
        self._keep = 1.0 - 1.0 / WINDOW
        self._log_p = math.log(1.0 - self.quantile)
        self._log_bounds = (math.log(1.0 - hi), math.log(1.0 - lo))
        self.observed = 0

    def observe(self, late: int, total: int) -> float:
        """`total` admitted requests ended, `late` of them after their deadline (or shed
        for it); returns the quantile to plan with from now on."""
        if total <= 0:
            return self.quantile
        keep = self._keep**total
        share = keep * self.late_share + (1.0 - keep) * (late / total)
        self.late_share = share
        self.observed += total
        lo, hi = self._log_bounds
        log_p = self._log_p + GAIN * total * (self.aim - share) / self.aim
        self._log_p = log_p = min(hi, max(lo, log_p))
        self.quantile = 1.0 - math.exp(log_p)
        return self.quantile
