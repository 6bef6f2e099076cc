"""Every Prometheus metric of the serving runtime, defined in this one module.

After vLLM v1's `vllm/v1/metrics/loggers.py`: each metric has an `elastic_` name, a
documentation string, fixed label names with values from fixed sets, and explicit buckets.
Each `Runtime` owns a `CollectorRegistry`, so several runtimes (or tests) in one process
never collide; `serve()` exposes it on 127.0.0.1. The grouping of request outcomes and
the rolling goodput gauges follow what Triton Inference Server and SuperServe (NSDI'25)
report: success, SLO misses and rejections apart, and accuracy delivered within the SLO.

Cost per request: counters and histograms are updated per batch, label children are
resolved once, and the gauges that move with every batch (queue depth, the rolling
goodput gauges, the fitted overhead, the latency corrections) are read at scrape time
(`Gauge.set_function`) from the engine's own state, so answering a request sets no gauge.

| metric | type | labels |
|---|---|---|
| elastic_requests_total | counter | outcome: ok, late, rejected, shed, error |
| elastic_rejections_total | counter | reason: infeasible, overloaded, invalid, closed |
| elastic_shed_total | counter | reason: deadline, evicted, closed, timeout, error |
| elastic_request_latency_seconds | histogram | (end to end, answered requests) |
| elastic_queue_latency_seconds | histogram | (submit -> start of forward) |
| elastic_execution_latency_seconds | histogram | (one batch's forward) |
| elastic_request_budget_seconds | histogram | (finite budgets asked for, admitted or not) |
| elastic_batch_size | histogram | |
| elastic_subnet_selections_total | counter | subnet: candidate ids |
| elastic_queue_depth | gauge | |
| elastic_effective_accuracy | gauge | (rolling) |
| elastic_slo_attainment | gauge | (rolling) |
| elastic_prediction_error_ratio | histogram | (observed / predicted batch latency) |
| elastic_latency_correction | gauge | subnet: candidate ids |
| elastic_overhead_per_batch_seconds | gauge | (latency model: fitted engine cost per batch) |
| elastic_overhead_per_request_seconds | gauge | (latency model: fitted engine cost per request) |
| elastic_latency_resets_total | counter | (stale online corrections dropped) |
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from elastic.errors import ConfigError

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "late", "rejected", "shed", "error")
REJECTION_REASONS = ("infeasible", "overloaded", "invalid", "closed")
SHED_REASONS = ("deadline", "evicted", "closed", "timeout", "error")

# seconds: 0.5 ms .. 10 s, roughly x2 apart
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)


class ServingMetrics:
    """The runtime's metrics in their own registry, plus the rolling goodput window.

    Args:
        subnets: ids that may be selected (their label series are created at zero, so
            dashboards show them before the first selection).
        window: how many recent requests the rolling gauges average over.
        registry: where to register (default: a new, private registry).
    """

    def __init__(
        self,
        subnets: Iterable[int] = (),
        window: int = 1000,
        registry: CollectorRegistry | None = None,
    ):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"metrics_window must be an integer >= 1, got {window!r}")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "elastic_requests",
            "Requests by how they ended: ok (within budget), late (answered after its budget), "
            "rejected (at submit: infeasible budget, full queue, invalid input, closed), "
            "shed (admitted, then dropped with an error), error (forward failed).",
            ["outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "elastic_rejections",
            "Requests rejected at submit, by reason.",
            ["reason"],
            registry=r,
        )
        self.sheds = Counter(
            "elastic_shed",
            "Admitted requests shed from the queue, by reason: deadline no longer reachable, "
            "evicted by a higher-priority request, runtime closed without draining.",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "elastic_request_latency_seconds",
            "End-to-end latency of answered requests, submit to result.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_latency = Histogram(
            "elastic_queue_latency_seconds",
            "Time answered requests waited between submit and the start of their batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.exec_latency = Histogram(
            "elastic_execution_latency_seconds",
            "Forward time of one batch (including the copy of the outputs to the CPU).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.budget = Histogram(
            "elastic_request_budget_seconds",
            "Latency budgets requests asked for (every well-formed request, admitted or not).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "elastic_batch_size",
            "Requests per executed batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.selections = Counter(
            "elastic_subnet_selections",
            "Requests executed per subnet id.",
            ["subnet"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "elastic_queue_depth",
            "Requests admitted and waiting to be scheduled.",
            registry=r,
        )
        self.effective_accuracy = Gauge(
            "elastic_effective_accuracy",
            "Rolling mean over recent requests of the chosen subnet's accuracy if answered "
            "within budget, else 0 (rejected, shed, late and failed requests count as 0; "
            "invalid inputs are not counted).",
            registry=r,
        )
        self.slo_attainment = Gauge(
            "elastic_slo_attainment",
            "Rolling share of recent requests answered within budget (same window and "
            "denominator as elastic_effective_accuracy).",
            registry=r,
        )
        self.prediction_error = Histogram(
            "elastic_prediction_error_ratio",
            "Observed / predicted forward time of each batch (1 = exact, < 1 = faster).",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.correction = Gauge(
            "elastic_latency_correction",
            "Online correction factor per subnet: the machine factor (EWMA of observed / profiled median "
            "over every batch), the same for every subnet.",
            ["subnet"],
            registry=r,
        )
        self.overhead_batch = Gauge(
            "elastic_overhead_per_batch_seconds",
            "Latency model: the engine's fitted cost per batch around the forward (wake-up, "
            "scheduling, stacking, answering), added to every prediction.",
            registry=r,
        )
        self.overhead_request = Gauge(
            "elastic_overhead_per_request_seconds",
            "Latency model: the engine's fitted cost per request in a batch (slicing, answering).",
            registry=r,
        )
        self.latency_resets = Counter(
            "elastic_latency_resets",
            "Times the online latency correction was dropped as stale: an idle engine was about to refuse "
            "a request on a correction no forward had renewed for stale_s (planning from the profile again).",
            registry=r,
        )
        # label children resolved once: the per-request path only increments
        self._outcome = {o: self.requests.labels(o) for o in OUTCOMES}
        self._selected: dict[int, Counter] = {}
        self._corrections: dict[int, Gauge] = {}
        self._rejection = {reason: self.rejections.labels(reason) for reason in REJECTION_REASONS}
        self._shed = {reason: self.sheds.labels(reason) for reason in SHED_REASONS}
        self.set_subnets(subnets)
        self._lock = threading.Lock()
        self._window: deque[tuple[float, bool]] = deque(maxlen=window)
        self._sum_weight = 0.0  # running sums over the window
        self._sum_met = 0
        # read at scrape time: plain numbers, written without a lock (one reference each)
        self._queue_depth: Callable[[], int] = lambda: 0
        self._overhead_ms: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)  # (per batch, per request)
        self._correction: Callable[[int], float] = lambda sid: 1.0
        self.queue_depth.set_function(lambda: self._queue_depth())
        self.effective_accuracy.set_function(self._effective_accuracy)
        self.slo_attainment.set_function(self._slo_attainment)
        self.overhead_batch.set_function(lambda: self._overhead_ms()[0] / 1e3)
        self.overhead_request.set_function(lambda: self._overhead_ms()[1] / 1e3)
        self._server = None
        self._thread = None
        self.port: int | None = None

    def set_subnets(self, subnets: Iterable[int]) -> None:
        """Create the per-subnet series (at zero) for the candidate ids."""
        for sid in subnets:
            self._selected[sid] = self.selections.labels(str(sid))
            self._corrections[sid] = child = self.correction.labels(str(sid))
            child.set_function(lambda sid=sid: self._correction(sid))

    # ---- recording ---------------------------------------------------------------------
    def rejected(self, reason: str, budget_ms: float | None = None) -> None:
        """A request refused at submit (`reason` in REJECTION_REASONS)."""
        self._outcome["rejected"].inc()
        self._rejection[reason].inc()
        if budget_ms is not None:
            self._budget(budget_ms)
        if reason != "invalid":
            self._roll(0.0, False)

    def latency_reset(self) -> None:
        """The scheduler dropped a stale online correction (`BudgetScheduler.on_forget`)."""
        self.latency_resets.inc()

    def admitted(self, budget_ms: float, n: int = 1) -> None:
        """`n` requests with `budget_ms` admitted (their budget observed once each)."""
        if n == 1:
            self._budget(budget_ms)
        elif 0 < budget_ms < math.inf:
            _observe_all(self.budget, [budget_ms / 1e3] * n)

    def shed(self, reason: str) -> None:
        """An admitted request dropped from the queue (`reason` in SHED_REASONS)."""
        self._outcome["shed"].inc()
        self._shed[reason].inc()
        self._roll(0.0, False)

    def failed(self, n: int = 1) -> None:
        """Requests whose batch's forward raised."""
        self._outcome["error"].inc(n)
        for _ in range(n):
            self._roll(0.0, False)

    def batch(self, size: int, exec_s: float, error_ratio: float | None) -> None:
        """One executed batch."""
        self.batch_size.observe(size)
        self.exec_latency.observe(exec_s)
        if error_ratio is not None:
            self.prediction_error.observe(error_ratio)

    def answered(
        self,
        subnet: int,
        accuracy: float | None,
        latency_s: float,
        queue_s: float,
        met_budget: bool,
    ) -> None:
        """One request answered; `accuracy` None (unknown) weighs as 0 in the rolling gauge."""
        self._outcome["ok" if met_budget else "late"].inc()
        child = self._selected.get(subnet)
        if child is None:
            child = self._selected[subnet] = self.selections.labels(str(subnet))
        child.inc()
        self.latency.observe(latency_s)
        self.queue_latency.observe(queue_s)
        self._roll(accuracy if (met_budget and accuracy is not None) else 0.0, met_budget)

    def answered_batch(self, subnet: int, accuracy: float | None, rows: list[tuple[float, float, bool]]) -> None:
        """The answered members of one batch, `(latency_s, queue_s, met_budget)` each: the
        same series as `answered` per request, with the counters and gauges touched once."""
        if not rows:
            return
        latencies, queues, flags = zip(*rows, strict=True)
        met = flags.count(True)
        if met:
            self._outcome["ok"].inc(met)
        if len(rows) > met:
            self._outcome["late"].inc(len(rows) - met)
        child = self._selected.get(subnet)
        if child is None:
            child = self._selected[subnet] = self.selections.labels(str(subnet))
        child.inc(len(rows))
        weight = accuracy if accuracy is not None else 0.0
        _observe_all(self.latency, latencies)
        _observe_all(self.queue_latency, queues)
        with self._lock:
            window = self._window
            for _, _, m in rows:
                w = weight if m else 0.0
                if len(window) == window.maxlen:
                    old_w, old_met = window[0]
                    self._sum_weight -= old_w
                    self._sum_met -= old_met
                window.append((w, m))
                self._sum_weight += w
                self._sum_met += m

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read `elastic_queue_depth` from `depth()` at every scrape (the engine passes its
        scheduler's queue length: always current, and no update per request)."""
        self._queue_depth = depth

    def track_latency_model(
        self, overhead_ms: Callable[[], tuple[float, float]], correction: Callable[[int], float]
    ) -> None:
        """Read the latency model at every scrape: `overhead_ms()` gives (per batch, per
        request) ms for the `elastic_overhead_*` gauges, `correction(subnet)` the online
        correction of each candidate subnet (`set_subnets`) — the factor the scheduler
        applies now (the machine factor: the same for every subnet, observed or not)."""
        self._overhead_ms = overhead_ms
        self._correction = correction

    def _effective_accuracy(self) -> float:
        with self._lock:
            n = len(self._window)
            return max(0.0, self._sum_weight) / n if n else 0.0

    def _slo_attainment(self) -> float:
        with self._lock:
            n = len(self._window)
            return self._sum_met / n if n else 0.0

    def _budget(self, budget_ms: float) -> None:
        if 0 < budget_ms < math.inf:  # NaN, infinite and non-positive budgets skipped (an inf sum is useless)
            self.budget.observe(budget_ms / 1e3)

    def _roll(self, weight: float, met: bool) -> None:
        with self._lock:
            if len(self._window) == self._window.maxlen:
                old_w, old_met = self._window[0]
                self._sum_weight -= old_w
                self._sum_met -= old_met
            self._window.append((weight, met))
            self._sum_weight += weight
            self._sum_met += met

    # ---- exposition --------------------------------------------------------------------
    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Expose the registry over HTTP (`/metrics`); returns the bound port.

        Binds 127.0.0.1 unless told otherwise (prometheus_client would bind 0.0.0.0).
        Calling it again returns the port already serving.
        """
        if self._server is not None:
            return self.port
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}") from e
        self.port = self._server.server_port
        log.info("serving metrics on http://%s:%d/metrics", addr, self.port)
        return self.port

    def close(self) -> None:
        """Stop the HTTP server, if any."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.port = None


def _observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for every v, with each bucket and the sum incremented once
    (one locked increment per bucket touched, not two per value: a batch's latencies fall
    in one or two buckets). Falls back to `observe` per value if the histogram's internals
    (prometheus_client's `_upper_bounds`, `_buckets`, `_sum`) are not there, or a value is NaN."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = math.fsum(values)
    if bounds is None or buckets is None or not hasattr(histogram, "_sum") or math.isnan(total):
        for v in values:
            histogram.observe(v)
        return
    histogram._sum.inc(total)
    first = bisect.bisect_left(bounds, values[0])  # the first bucket whose bound is >= v (the last is +Inf)
    if bounds[first] >= max(values) and (first == 0 or bounds[first - 1] < min(values)):
        buckets[first].inc(len(values))  # the common case: a batch's values share one bucket
        return
    counts: dict[int, int] = {}
    for v in values:
        i = bisect.bisect_left(bounds, v)
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        buckets[i].inc(n)
