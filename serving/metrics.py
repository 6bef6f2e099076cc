"""Every Prometheus metric of the serving runtime, defined in this one module.

After vLLM v1's `vllm/v1/metrics/loggers.py`: each metric has an `elastic_` name, a
documentation string, fixed label names with values from fixed sets, and explicit buckets.
Each `Runtime` owns a `CollectorRegistry`, so several runtimes (or tests) in one process
never collide; `serve()` exposes it on 127.0.0.1. The grouping of request outcomes and
the rolling goodput gauges follow what Triton Inference Server and SuperServe (NSDI'25)
report: success, SLO misses and rejections apart, and accuracy delivered within the SLO.

Cost per request: the counters and histograms are plain numbers in this object, updated
once per batch under one lock (a bisect and an increment per observation), and turned into
Prometheus metric families only when the registry is scraped (`collect`); the gauges that
move with every batch (queue depth, the rolling goodput gauges, the fitted overhead, the
latency corrections) are read then too, from the engine's own state. prometheus_client's
own `Counter` and `Histogram` take a lock per increment and walk the buckets per value:
about 21 µs of every batch-1 request in a tight loop on a 2-core CPU, against about 7 here. The exposition
is the same series with the same names, labels and buckets (histograms carry no `_created`
series; a NaN observation is dropped, where prometheus_client counted it in the sum only).

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
| elastic_planning_quantile | gauge | (quantile of the forwards' spread batches are planned at) |
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from elastic.errors import ConfigError

from .predictor import TAIL_QUANTILE

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


class Buckets:
    """One histogram's state: the count per bucket and the sum, exposed as a Prometheus
    histogram (cumulative `_bucket{le=...}`, `_count`, `_sum`) by `family`.

    A value lands in the first bucket whose upper bound is >= it (Prometheus's `le`), the
    last bound being +Inf. Not locked: `ServingMetrics` updates it under its own lock.

    Args:
        bounds: the finite upper bounds, increasing.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = [float(b) for b in bounds] + [math.inf]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """`n` observations of `value` (NaN is dropped)."""
        if value == value:
            self.counts[bisect.bisect_left(self.bounds, value)] += n
            self.sum += n * value

    def snapshot(self) -> Buckets:
        """A copy of the counts and sum (the bounds shared), to expose outside the lock."""
        copy = Buckets.__new__(Buckets)
        copy.bounds, copy.counts, copy.sum = self.bounds, list(self.counts), self.sum
        return copy

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation)
        cumulative, total = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            total += n
            cumulative.append((floatToGoString(bound), total))
        family.add_metric([], cumulative, self.sum)
        return family


class ServingMetrics:
    """The runtime's metrics, collected into their own registry, plus the rolling goodput window.

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
        self._lock = threading.Lock()  # every update below happens under it
        self._created = time.time()  # the counters' `_created`, as prometheus_client reports it
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._rejections = dict.fromkeys(REJECTION_REASONS, 0)
        self._sheds = dict.fromkeys(SHED_REASONS, 0)
        self._selections: dict[int, int] = {}
        self._resets = 0
        self._latency = Buckets(LATENCY_BUCKETS)
        self._queue_latency = Buckets(LATENCY_BUCKETS)
        self._exec_latency = Buckets(LATENCY_BUCKETS)
        self._budget = Buckets(LATENCY_BUCKETS)
        self._batch_size = Buckets(BATCH_BUCKETS)
        self._prediction_error = Buckets(RATIO_BUCKETS)
        self._window: deque[tuple[float, bool]] = deque(maxlen=window)
        self._sum_weight = 0.0  # running sums over the window
        self._sum_met = 0
        # read at scrape time: plain references, replaced whole
        self._queue_depth: Callable[[], int] = lambda: 0
        self._overhead_ms: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)  # (per batch, per request)
        self._correction: Callable[[int], float] = lambda sid: 1.0
        self._planning_quantile: Callable[[], float] = lambda: TAIL_QUANTILE
        self.set_subnets(subnets)
        self._server = None
        self._thread = None
        self.port: int | None = None
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry.register(self)  # `collect` answers every scrape

    def set_subnets(self, subnets: Iterable[int]) -> None:
        """Create the per-subnet series (at zero) for the candidate ids."""
        with self._lock:
            for sid in subnets:
                self._selections.setdefault(sid, 0)

    # ---- recording ---------------------------------------------------------------------
    def rejected(self, reason: str, budget_ms: float | None = None) -> None:
        """A request refused at submit (`reason` in REJECTION_REASONS)."""
        with self._lock:
            self._outcomes["rejected"] += 1
            self._rejections[reason] += 1
            if budget_ms is not None and 0 < budget_ms < math.inf:
                self._budget.observe(budget_ms / 1e3)
            if reason != "invalid":
                self._roll(0.0, False)

    def latency_reset(self) -> None:
        """The scheduler dropped a stale online correction (`BudgetScheduler.on_forget`)."""
        with self._lock:
            self._resets += 1

    def admitted(self, budget_ms: float, n: int = 1) -> None:
        """`n` requests with `budget_ms` admitted (their budget observed once each); NaN,
        infinite and non-positive budgets are not observed (an infinite sum is useless)."""
        if 0 < budget_ms < math.inf:
            with self._lock:
                self._budget.observe(budget_ms / 1e3, n)

    def shed(self, reason: str) -> None:
        """An admitted request dropped from the queue (`reason` in SHED_REASONS)."""
        with self._lock:
            self._outcomes["shed"] += 1
            self._sheds[reason] += 1
            self._roll(0.0, False)

    def failed(self, n: int = 1) -> None:
        """Requests whose batch's forward raised."""
        with self._lock:
            self._outcomes["error"] += n
            for _ in range(n):
                self._roll(0.0, False)

    def batch(self, size: int, exec_s: float, error_ratio: float | None) -> None:
        """One executed batch."""
        with self._lock:
            self._batch_size.observe(size)
            self._exec_latency.observe(exec_s)
            if error_ratio is not None:
                self._prediction_error.observe(error_ratio)

    def answered(
        self,
        subnet: int,
        accuracy: float | None,
        latency_s: float,
        queue_s: float,
        met_budget: bool,
    ) -> None:
        """One request answered; `accuracy` None (unknown) weighs as 0 in the rolling gauge."""
        self.answered_batch(subnet, accuracy, [(latency_s, queue_s, met_budget)])

    def answered_batch(self, subnet: int, accuracy: float | None, rows: list[tuple[float, float, bool]]) -> None:
        """The answered members of one batch, `(latency_s, queue_s, met_budget)` each: the
        same series as `answered` per request, under one lock."""
        if not rows:
            return
        weight = accuracy if accuracy is not None else 0.0
        latency, queue_latency = self._latency, self._queue_latency
        with self._lock:
            met = 0
            for latency_s, queue_s, m in rows:
                latency.observe(latency_s)
                queue_latency.observe(queue_s)
                met += m
                self._roll(weight if m else 0.0, m)
            self._outcomes["ok"] += met
            self._outcomes["late"] += len(rows) - met
            self._selections[subnet] = self._selections.get(subnet, 0) + len(rows)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read `elastic_queue_depth` from `depth()` at every scrape (the engine passes its
        scheduler's queue length: always current, and no update per request)."""
        self._queue_depth = depth

    def track_latency_model(
        self,
        overhead_ms: Callable[[], tuple[float, float]],
        correction: Callable[[int], float],
        planning_quantile: Callable[[], float] | None = None,
    ) -> None:
        """Read the latency model at every scrape: `overhead_ms()` gives (per batch, per
        request) ms for the `elastic_overhead_*` gauges, `correction(subnet)` the online
        correction of each candidate subnet (`set_subnets`) — the factor the scheduler
        applies now (the machine factor: the same for every subnet, observed or not), and
        `planning_quantile()` the quantile of the forwards' spread it plans batches at (its
        SLO feedback moves it; its starting value when not given)."""
        self._overhead_ms = overhead_ms
        self._correction = correction
        if planning_quantile is not None:
            self._planning_quantile = planning_quantile

    def _roll(self, weight: float, met: bool) -> None:
        """One request into the rolling window (the caller holds the lock)."""
        window = self._window
        if len(window) == window.maxlen:
            old_w, old_met = window[0]
            self._sum_weight -= old_w
            self._sum_met -= old_met
        window.append((weight, met))
        self._sum_weight += weight
        self._sum_met += met

    # ---- collection --------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """Every metric as a Prometheus family, read now (the registry calls this per scrape)."""
        with self._lock:  # a consistent snapshot; the families are built outside the lock
            outcomes, rejections, sheds = dict(self._outcomes), dict(self._rejections), dict(self._sheds)
            selections, resets = dict(self._selections), self._resets
            hists = [
                (name, doc, b.snapshot())
                for name, doc, b in (
                    ("elastic_request_latency_seconds", _DOC["latency"], self._latency),
                    ("elastic_queue_latency_seconds", _DOC["queue_latency"], self._queue_latency),
                    ("elastic_execution_latency_seconds", _DOC["exec_latency"], self._exec_latency),
                    ("elastic_request_budget_seconds", _DOC["budget"], self._budget),
                    ("elastic_batch_size", _DOC["batch_size"], self._batch_size),
                    ("elastic_prediction_error_ratio", _DOC["prediction_error"], self._prediction_error),
                )
            ]
            n = len(self._window)
            effective = max(0.0, self._sum_weight) / n if n else 0.0
            attained = self._sum_met / n if n else 0.0
        created = self._created
        yield _counter("elastic_requests", _DOC["requests"], "outcome", outcomes, created)
        yield _counter("elastic_rejections", _DOC["rejections"], "reason", rejections, created)
        yield _counter("elastic_shed", _DOC["shed"], "reason", sheds, created)
        for name, doc, b in hists:
            yield b.family(name, doc)
        selected = {str(sid): n for sid, n in selections.items()}
        yield _counter("elastic_subnet_selections", _DOC["selections"], "subnet", selected, created)
        yield GaugeMetricFamily("elastic_queue_depth", _DOC["queue_depth"], value=self._queue_depth())
        yield GaugeMetricFamily("elastic_effective_accuracy", _DOC["effective_accuracy"], value=effective)
        yield GaugeMetricFamily("elastic_slo_attainment", _DOC["slo_attainment"], value=attained)
        correction = GaugeMetricFamily("elastic_latency_correction", _DOC["correction"], labels=["subnet"])
        for sid in selections:
            correction.add_metric([str(sid)], self._correction(sid))
        yield correction
        per_batch_ms, per_request_ms = self._overhead_ms()
        yield GaugeMetricFamily("elastic_overhead_per_batch_seconds", _DOC["overhead_batch"], value=per_batch_ms / 1e3)
        yield GaugeMetricFamily(
            "elastic_overhead_per_request_seconds", _DOC["overhead_request"], value=per_request_ms / 1e3
        )
        yield GaugeMetricFamily("elastic_planning_quantile", _DOC["planning_quantile"], value=self._planning_quantile())
        resets_family = CounterMetricFamily("elastic_latency_resets", _DOC["latency_resets"])
        resets_family.add_metric([], resets, created=created)
        yield resets_family

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


_DOC = {
    "requests": "Requests by how they ended: ok (within budget), late (answered after its budget), "
    "rejected (at submit: infeasible budget, full queue, invalid input, closed), "
    "shed (admitted, then dropped with an error), error (forward failed).",
    "rejections": "Requests rejected at submit, by reason.",
    "shed": "Admitted requests shed from the queue, by reason: deadline no longer reachable, "
    "evicted by a higher-priority request, runtime closed without draining.",
    "latency": "End-to-end latency of answered requests, submit to result.",
    "queue_latency": "Time answered requests waited between submit and the start of their batch.",
    "exec_latency": "Forward time of one batch (including the copy of the outputs to the CPU).",
    "budget": "Latency budgets requests asked for (every well-formed request, admitted or not).",
    "batch_size": "Requests per executed batch.",
    "selections": "Requests executed per subnet id.",
    "queue_depth": "Requests admitted and waiting to be scheduled.",
    "effective_accuracy": "Rolling mean over recent requests of the chosen subnet's accuracy if answered "
    "within budget, else 0 (rejected, shed, late and failed requests count as 0; "
    "invalid inputs are not counted).",
    "slo_attainment": "Rolling share of recent requests answered within budget (same window and "
    "denominator as elastic_effective_accuracy).",
    "prediction_error": "Observed / predicted forward time of each batch (1 = exact, < 1 = faster).",
    "correction": "Online correction factor per subnet: the machine factor (EWMA of observed / profiled median "
    "over every batch), the same for every subnet.",
    "overhead_batch": "Latency model: the engine's fitted cost per batch around the forward (wake-up, "
    "scheduling, stacking, answering), added to every prediction.",
    "overhead_request": "Latency model: the engine's fitted cost per request in a batch (slicing, answering).",
    "planning_quantile": "Latency model: the quantile of the forwards' recent spread every batch is planned at; it "
    "rises (up to 0.95) while more admitted requests end late than the SLO target allows for, and falls while "
    "fewer do.",
    "latency_resets": "Times the online latency correction was dropped as stale: an idle engine was about to "
    "refuse a request on a correction no forward had renewed for stale_s (planning from the profile again).",
}


def _counter(name: str, documentation: str, label: str, values: dict[str, int], created: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count, created=created)
    return family
