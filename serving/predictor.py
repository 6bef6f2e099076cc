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
"""

from __future__ import annotations

from .profile import LatencyProfile


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

    def correction(self, subnet: int) -> float:
        """The current observed / profiled ratio used for `subnet` (1.0 before any data)."""
        if subnet in self._ratio:
            return self._ratio[subnet]
        return self._global if self._global is not None else 1.0

    def predict_ms(self, subnet: int, batch: int) -> float:
        """Corrected latency prediction for one forward of `subnet` on `batch` samples."""
        row = self._rows.get(subnet)
        if row is None or batch >= len(row):
            row = self._rows[subnet] = [0.0] + [
                self.profile.latency_ms(subnet, b, self.quantile) for b in range(1, max(batch, 16) + 1)
            ]
        return row[batch] * self.correction(subnet)

    def observe(self, subnet: int, batch: int, observed_ms: float) -> None:
        """Fold one observed forward time into the subnet's and the global correction."""
        base = self.profile.latency_ms(subnet, batch, "p50")
        if base <= 0 or observed_ms < 0:
            return
        lo, hi = self.clamp
        ratio = min(hi, max(lo, observed_ms / base))
        prev = self.correction(subnet)
        self._ratio[subnet] = prev + self.alpha * (ratio - prev)
        prev_global = 1.0 if self._global is None else self._global
        self._global = prev_global + self.alpha * (ratio - prev_global)

    def corrections(self) -> dict[int, float]:
        """Per-subnet ratios observed so far."""
        return dict(self._ratio)
