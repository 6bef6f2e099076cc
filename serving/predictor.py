"""`LatencyPredictor`: the profile, corrected online from observed latencies.

A profile is measured once; the machine then drifts (other tenants, clocks, thermal state).
Clockwork (OSDI'20) keeps per-model latency estimates updated from every execution;
INFaaS (ATC'21) re-profiles variants whose observed latency departs from the profile. Here
each subnet keeps an exponentially weighted moving average (EWMA) of

    ratio = observed ms / profiled median ms   (at the batch size that ran)

and predicts `profiled <quantile> ms × ratio`. Scaling the chosen quantile (p99 by
default) by a ratio taken against the median keeps the profile's tail margin while the
level follows the machine: observed latency steadily twice the median doubles every
prediction for that subnet. Subnets not yet observed use the EWMA over all subnets.

A profile's p99 of a few repeats is a noisy tail, and the serving machine's spread is not
the profiling run's. So once `TAIL_MIN` batches have run (planning quantile "p99"), the
prediction becomes `profiled median × ratio × tail`, where `tail` is the 95th percentile of
the recent residuals observed / (profiled median × ratio): the margin the machine really
needs, measured while serving, the same for every subnet (so it never reorders them).
Until then the profiled quantile is capped at `COLD_TAIL_CAP` medians: one outlier in the
profiling run must not make a subnet look unusable, or nothing is ever admitted to correct it.
"""

from __future__ import annotations

from collections import deque

from .profile import LatencyProfile

TAIL_WINDOW = 256  # residuals kept for the tail estimate
TAIL_MIN = 32  # observations before the measured tail replaces the profile's quantile
TAIL_EVERY = 8  # re-estimate the tail every this many observations
TAIL_QUANTILE = 0.95  # planning quantile of observed / expected-median forward time
TAIL_CLAMP = (1.0, 5.0)
COLD_TAIL_CAP = 3.0  # until then, the profiled quantile is capped at this many medians


class LatencyPredictor:
    """Predicted latency per (subnet, batch size), corrected online.

    Args:
        profile: the measured table.
        quantile: "p99" (plan for the tail, default) or "p50".
        alpha: EWMA weight of a new observation.
        clamp: bounds on the correction ratio, so one outlier cannot make a subnet look
            free or unusable forever.
    """

    def __init__(
        self,
        profile: LatencyProfile,
        quantile: str = "p99",
        alpha: float = 0.2,
        clamp: tuple[float, float] = (0.2, 5.0),
    ):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        profile.latency_ms(profile.subnet_ids[0], 1, quantile)  # validates the quantile
        self.profile = profile
        self.quantile = quantile
        self.alpha = alpha
        self.clamp = clamp
        self._ratio: dict[int, float] = {}
        self._global: float | None = None
        self._rows: dict[int, list[float]] = {}  # subnet -> profiled ms by batch size (index)
        self._medians: dict[int, list[float]] = {}  # subnet -> profiled median ms by batch size
        self._residuals: deque[float] = deque(maxlen=TAIL_WINDOW)  # observed / expected median
        self._seen = 0
        self.tail: float | None = None  # online tail factor once TAIL_MIN observations are in
        self._predicted: dict[tuple[int, int], float] = {}  # (subnet, batch) -> ms until `observe`

    def correction(self, subnet: int) -> float:
        """The current observed / profiled ratio used for `subnet` (1.0 before any data)."""
        if subnet in self._ratio:
            return self._ratio[subnet]
        return self._global if self._global is not None else 1.0

    def _row(self, table: dict[int, list[float]], subnet: int, batch: int, quantile: str) -> list[float]:
        row = table.get(subnet)
        if row is None or batch >= len(row):
            row = table[subnet] = [0.0] + [
                self.profile.latency_ms(subnet, b, quantile) for b in range(1, max(batch, 16) + 1)
            ]
        return row

    def predict_ms(self, subnet: int, batch: int) -> float:
        """Corrected latency prediction for one forward of `subnet` on `batch` samples.

        Memoised per (subnet, batch) until the next `observe` (the only thing that moves a
        prediction): admission and scheduling ask for the same few entries many times per batch.
        """
        key = (subnet, batch)
        ms = self._predicted.get(key)
        if ms is None:
            ms = self._predicted[key] = self._predict(subnet, batch)
        return ms

    def _predict(self, subnet: int, batch: int) -> float:
        if self.tail is not None:  # the machine's own spread, measured while serving
            return self._row(self._medians, subnet, batch, "p50")[batch] * self.correction(subnet) * self.tail
        planned = self._row(self._rows, subnet, batch, self.quantile)[batch]
        if self.quantile != "p50":  # a profiled p99 of a few repeats can hold one huge outlier
            planned = min(planned, COLD_TAIL_CAP * self._row(self._medians, subnet, batch, "p50")[batch])
        return planned * self.correction(subnet)

    def observe(self, subnet: int, batch: int, observed_ms: float) -> None:
        """Fold one observed forward time into the subnet's and the global correction, and
        its residual (observed / expected median) into the tail estimate."""
        base = self._row(self._medians, subnet, batch, "p50")[batch]
        if base <= 0 or observed_ms < 0:
            return
        self._predicted.clear()
        lo, hi = self.clamp
        prev = self.correction(subnet)
        self._residuals.append(observed_ms / (base * prev))
        self._seen += 1
        if self.quantile != "p50" and self._seen >= TAIL_MIN and self._seen % TAIL_EVERY == 0:
            ordered = sorted(self._residuals)
            q = ordered[min(len(ordered) - 1, int(TAIL_QUANTILE * len(ordered)))]
            self.tail = min(TAIL_CLAMP[1], max(TAIL_CLAMP[0], q))
        ratio = min(hi, max(lo, observed_ms / base))
        self._ratio[subnet] = prev + self.alpha * (ratio - prev)
        prev_global = 1.0 if self._global is None else self._global
        self._global = prev_global + self.alpha * (ratio - prev_global)

    def corrections(self) -> dict[int, float]:
        """Per-subnet ratios observed so far."""
        return dict(self._ratio)
