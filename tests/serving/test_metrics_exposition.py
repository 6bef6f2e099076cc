"""`ServingMetrics` keeps plain counts and builds its Prometheus families at scrape time; what
a scrape sees must be what prometheus_client's own `Counter` / `Histogram` / `Gauge` would
expose for the same events: same series, labels, buckets, counts and sums.

The reference below records every event the way the runtime's metrics did before
(one prometheus_client object per metric, `inc` / `observe` per value), from the same
random sequence of events; the two registries' samples are compared, `_created` aside.
"""

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from elastic.serving.metrics import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS,
    OUTCOMES,
    RATIO_BUCKETS,
    REJECTION_REASONS,
    SHED_REASONS,
    Buckets,
    ServingMetrics,
)
from elastic.serving.predictor import TAIL_QUANTILE


class _Reference:
    """The same events on prometheus_client's own metric objects."""

    def __init__(self, subnets, window):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("elastic_requests", "d", ["outcome"], registry=r)
        self.rejections = Counter("elastic_rejections", "d", ["reason"], registry=r)
        self.sheds = Counter("elastic_shed", "d", ["reason"], registry=r)
        hist = {
            "latency": ("elastic_request_latency_seconds", LATENCY_BUCKETS),
            "queue": ("elastic_queue_latency_seconds", LATENCY_BUCKETS),
            "exec": ("elastic_execution_latency_seconds", LATENCY_BUCKETS),
            "budget": ("elastic_request_budget_seconds", LATENCY_BUCKETS),
            "batch": ("elastic_batch_size", BATCH_BUCKETS),
            "ratio": ("elastic_prediction_error_ratio", RATIO_BUCKETS),
        }
        self.h = {k: Histogram(name, "d", buckets=b, registry=r) for k, (name, b) in hist.items()}
        self.selections = Counter("elastic_subnet_selections", "d", ["subnet"], registry=r)
        self.depth = Gauge("elastic_queue_depth", "d", registry=r)
        self.eff = Gauge("elastic_effective_accuracy", "d", registry=r)
        self.slo = Gauge("elastic_slo_attainment", "d", registry=r)
        self.correction = Gauge("elastic_latency_correction", "d", ["subnet"], registry=r)
        self.per_batch = Gauge("elastic_overhead_per_batch_seconds", "d", registry=r)
        self.per_request = Gauge("elastic_overhead_per_request_seconds", "d", registry=r)
        self.resets = Counter("elastic_latency_resets", "d", registry=r)
        Gauge("elastic_planning_quantile", "d", registry=r).set(TAIL_QUANTILE)
        for o in OUTCOMES:
            self.requests.labels(o)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for reason in SHED_REASONS:
            self.sheds.labels(reason)
        for sid in subnets:
            self.selections.labels(str(sid))
            self.correction.labels(str(sid)).set(1.0)
        self.window: list[tuple[float, bool]] = []
        self.size = window

    def roll(self, w, met):
        self.window = (self.window + [(w, met)])[-self.size :]
        n = len(self.window)
        self.eff.set(max(0.0, sum(x for x, _ in self.window)) / n)
        self.slo.set(sum(m for _, m in self.window) / n)


def _samples(registry):
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-12), (k, a[k], b[k])


@pytest.mark.parametrize("seed", range(5))
def test_a_scrape_shows_what_prometheus_clients_own_metrics_would(seed):
    rng = random.Random(seed)
    subnets = [0, 3, 7]
    metrics = ServingMetrics(subnets, window=50)
    ref = _Reference(subnets, window=50)
    for _ in range(400):
        event = rng.choice(["rejected", "admitted", "shed", "failed", "batch", "answered", "reset"])
        budget_ms = rng.choice([rng.uniform(0.1, 20000.0), 5.0, math.inf, 0.0])
        if event == "rejected":
            reason = rng.choice(REJECTION_REASONS)
            with_budget = rng.random() < 0.7
            metrics.rejected(reason, budget_ms if with_budget else None)
            ref.requests.labels("rejected").inc()
            ref.rejections.labels(reason).inc()
            if with_budget and 0 < budget_ms < math.inf:
                ref.h["budget"].observe(budget_ms / 1e3)
            if reason != "invalid":
                ref.roll(0.0, False)
        elif event == "admitted":
            n = rng.randint(1, 8)
            metrics.admitted(budget_ms, n)
            if 0 < budget_ms < math.inf:
                for _ in range(n):
                    ref.h["budget"].observe(budget_ms / 1e3)
        elif event == "shed":
            reason = rng.choice(SHED_REASONS)
            metrics.shed(reason)
            ref.requests.labels("shed").inc()
            ref.sheds.labels(reason).inc()
            ref.roll(0.0, False)
        elif event == "failed":
            n = rng.randint(1, 4)
            metrics.failed(n)
            ref.requests.labels("error").inc(n)
            for _ in range(n):
                ref.roll(0.0, False)
        elif event == "batch":
            size, exec_s = rng.randint(1, 40), rng.choice([rng.uniform(0, 12.0), 0.005, 0.001])
            ratio = rng.choice([None, rng.uniform(0.1, 5.0), 1.0])
            metrics.batch(size, exec_s, ratio)
            ref.h["batch"].observe(size)
            ref.h["exec"].observe(exec_s)
            if ratio is not None:
                ref.h["ratio"].observe(ratio)
        elif event == "answered":
            sid = rng.choice(subnets + [11])  # 11: never declared, selected anyway
            accuracy = rng.choice([None, rng.uniform(0.5, 0.9)])
            rows = [(rng.uniform(0, 3.0), rng.choice([0.0, 0.002, rng.uniform(0, 1.0)]), rng.random() < 0.8)]
            rows *= rng.randint(1, 3)
            metrics.answered_batch(sid, accuracy, rows)
            if sid not in subnets:  # selected without being declared: its correction series appears too
                ref.correction.labels(str(sid)).set(1.0)
            for latency_s, queue_s, met in rows:
                ref.requests.labels("ok" if met else "late").inc()
                ref.selections.labels(str(sid)).inc()
                ref.h["latency"].observe(latency_s)
                ref.h["queue"].observe(queue_s)
                ref.roll(accuracy if (met and accuracy is not None) else 0.0, met)
        else:
            metrics.latency_reset()
            ref.resets.inc()
    got, want = _samples(metrics.registry), _samples(ref.registry)
    _same(got, want)
    assert b"elastic_requests_total" in generate_latest(metrics.registry)  # the text exposition works


@pytest.mark.parametrize(
    "values",
    [
        [0.005, 0.005],  # on a bound
        [0.0002, 0.0001],  # the first bucket
        [20.0, math.inf, 11.0],  # the +Inf bucket
        [0.0, 0.001, 0.005, 0.0051, 0.7, 3.0, 1e9, math.inf],  # on bounds, between, past the last
    ],
)
def test_buckets_count_like_a_prometheus_histogram(values):
    registry = CollectorRegistry()
    h = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=registry)
    b = Buckets(LATENCY_BUCKETS)
    for v in values:
        h.observe(v)
        b.observe(v)
    want = _samples(registry)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in b.family("x_seconds", "doc").samples}
    _same(got, want)


def test_the_gauges_read_the_engine_at_scrape_time():
    metrics = ServingMetrics([0, 1])
    depth = [3]
    metrics.track_queue_depth(lambda: depth[0])
    quantile = [0.95]
    metrics.track_latency_model(lambda: (0.25, 0.05), lambda sid: 1.5 + sid, lambda: quantile[0])
    reg = metrics.registry
    assert reg.get_sample_value("elastic_planning_quantile") == 0.95
    quantile[0] = 0.9
    assert reg.get_sample_value("elastic_planning_quantile") == 0.9
    assert reg.get_sample_value("elastic_queue_depth") == 3
    depth[0] = 9
    assert reg.get_sample_value("elastic_queue_depth") == 9
    assert reg.get_sample_value("elastic_latency_correction", {"subnet": "1"}) == 2.5
    assert reg.get_sample_value("elastic_overhead_per_batch_seconds") == pytest.approx(0.25e-3)
    assert reg.get_sample_value("elastic_overhead_per_request_seconds") == pytest.approx(0.05e-3)


def test_a_nan_observation_is_dropped():
    b = Buckets(LATENCY_BUCKETS)
    b.observe(float("nan"))
    b.observe(0.003)
    assert sum(b.counts) == 1 and b.sum == 0.003
