"""The engine's latency model: forward latency from the profile (corrected online) plus the
runtime's own per-batch and per-request costs, fitted online.

A profile times forwards alone. A served batch also pays for waking the worker, scheduling,
stacking the inputs, slicing the outputs and resolving each request's future; on small
models on a CPU that is as much as the forward itself. Clockwork (Gujarati et al., OSDI'20)
plans with measured per-action latencies that include the worker's own overheads for this
reason. Here the overhead of one batch of b requests is modelled as

    overhead_ms(b) = per_batch_ms + per_request_ms × b

and fitted by exponentially weighted least squares over what the engine observes (batch
wall time minus forward time), so it follows the machine the way the forward correction
does (`LatencyPredictor`).

Part of that overhead is the worker's wake-up: a request that finds the worker asleep
waits for the thread to be scheduled before anything else happens. Admission must count it
(the request pays it), but a request already queued is looked at only by a worker that is
awake — between batches, or the deadline watchdog while a batch runs — so deciding whether
it can still make its deadline must not count it again. The model keeps the wake-up's
average share per batch apart (`wake_ms`) for that. Pure Python: the scheduler imports it.
"""

from __future__ import annotations

from .predictor import LatencyPredictor
from .profile import LatencyProfile


class OverheadModel:
    """The runtime's cost around a forward, `per_batch_ms + per_request_ms × batch`, fitted online.

    Args:
        per_batch_ms: starting per-batch cost (0 until observed).
        per_request_ms: starting per-request cost.
        alpha: weight of each new observation (exponential forgetting).
        ceiling_ms: observations above this are clamped (one stalled callback must not
            make every prediction useless).
    """

    def __init__(
        self, per_batch_ms: float = 0.0, per_request_ms: float = 0.0, alpha: float = 0.05, ceiling_ms: float = 50.0
    ):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.per_batch_ms = max(0.0, float(per_batch_ms))
        self.per_request_ms = max(0.0, float(per_request_ms))
        self.alpha = alpha
        self.ceiling_ms = ceiling_ms
        self.observations = 0
        self.wake_ms = 0.0  # the worker's wake-up in an average batch's overhead (0 for one not woken)
        # exponentially weighted sums of 1, b, b², y, b·y, and of the wake-up part of y
        self._s = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._wake = 0.0

    def ms(self, batch: int) -> float:
        """Predicted overhead of one batch of `batch` requests, in ms."""
        return self.per_batch_ms + self.per_request_ms * batch

    def wake_part(self, batch: int) -> float:
        """The part of `ms(batch)` that is the worker waking up (`wake_ms`, at most all of
        it): what a batch started by a worker already awake does not pay."""
        ms = self.per_batch_ms + self.per_request_ms * batch
        return self.wake_ms if ms > self.wake_ms else ms

    def observe(self, batch: int, overhead_ms: float, wake_ms: float = 0.0) -> None:
        """Fold one batch's observed overhead (wall time minus forward) into the fit;
        `wake_ms` of it was the worker waking up for the batch (0: it was awake)."""
        if not overhead_ms >= 0:  # negative from clock noise, or NaN
            overhead_ms = 0.0
        y = min(overhead_ms, self.ceiling_ms)
        a, s, b = self.alpha, self._s, float(batch)
        keep = 1.0 - a
        wake = min(wake_ms, y) if wake_ms > 0 else 0.0  # also NaN -> 0
        self._wake = keep * self._wake + a * wake
        for i, v in enumerate((1.0, b, b * b, y, b * y)):
            s[i] = keep * s[i] + a * v
        self.observations += 1
        s0, s1, s11, sy, s1y = s
        self.wake_ms = self._wake / s0
        det = s0 * s11 - s1 * s1
        if det > 1e-9 * max(1.0, s0 * s11):  # seen at least two batch sizes: fit both terms
            slope = (s0 * s1y - s1 * sy) / det
            if slope >= 0:
                self.per_request_ms = slope
                self.per_batch_ms = max(0.0, (sy - slope * s1) / s0)
                return
            self.per_request_ms = 0.0
        # one batch size only (or a negative slope): keep the per-request part, fit the rest
        self.per_batch_ms = max(0.0, (sy - self.per_request_ms * s1) / s0)


class LatencyModel:
    """Predicted service time of one batch: corrected forward + the runtime's overhead.

    Args:
        profile: the measured forward latencies.
        quantile: the profiled quantile to plan with ("p99" or "p50").
        alpha: EWMA weight of the forward correction.
        overhead: the overhead model (a fresh, zero one by default).
    """

    def __init__(
        self, profile: LatencyProfile, quantile: str = "p99", alpha: float = 0.2, overhead: OverheadModel | None = None
    ):
        self.forward = LatencyPredictor(profile, quantile, alpha)
        self.overhead = overhead if overhead is not None else OverheadModel()

    def forward_ms(self, subnet: int, batch: int) -> float:
        return self.forward.predict_ms(subnet, batch)

    def overhead_ms(self, batch: int) -> float:
        return self.overhead.ms(batch)

    def service_ms(self, subnet: int, batch: int) -> float:
        """Forward plus overhead: what one batch costs the engine end to end."""
        return self.forward.predict_ms(subnet, batch) + self.overhead.ms(batch)
