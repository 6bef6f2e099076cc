"""The serving runtime: latency profiles, scheduler and policies, executor, metrics.

    from elastic.serving import Runtime

    with Runtime(model, device="cpu", max_batch_size=8) as rt:
        rt.profile(example, path=model_dir)      # measured once, saved as profile-cpu.json
        result = rt.infer(x, budget_ms=20)        # the most accurate subnet that makes it
        rt.serve_metrics(port=9400)               # Prometheus on 127.0.0.1

Pieces: `LatencyProfile` (profile.py) and `measure_latency` (profiler.py);
`BudgetScheduler` (scheduler.py) behind `SchedulerInterface` (interface.py), emitting
`SchedulerOutput` (output.py); policies `elastic`, `slackfit`, `static:<id>`
(policies.py); `Runtime` (runtime.py); `ServingMetrics` (metrics.py) with the Grafana
dashboard in dashboards/elastic.json (`dashboard_path()`); `replay` (replay.py).
The scheduler side (scheduler, policies, profile, predictor, request, output) never
imports torch.
"""

from pathlib import Path

from .capacity import ServedCapacity, budget_range, served_capacity
from .interface import SchedulerInterface
from .metrics import ServingMetrics
from .output import ScheduledBatch, SchedulerOutput, ShedRequest
from .policies import Decision, ElasticPolicy, Policy, SlackFitPolicy, StaticPolicy, make_policy
from .predictor import LatencyPredictor
from .profile import LatencyProfile, profile_path
from .profiler import measure_latency
from .replay import replay, replay_schedule
from .request import Request, Result
from .runtime import Runtime
from .scheduler import BudgetScheduler


def dashboard_path() -> Path:
    """The Grafana dashboard over the runtime's metrics (shipped as package data)."""
    return Path(__file__).parent / "dashboards" / "elastic.json"


__all__ = [
    "BudgetScheduler",
    "Decision",
    "ElasticPolicy",
    "LatencyPredictor",
    "LatencyProfile",
    "Policy",
    "Request",
    "Result",
    "Runtime",
    "ScheduledBatch",
    "SchedulerInterface",
    "SchedulerOutput",
    "ServingMetrics",
    "ShedRequest",
    "SlackFitPolicy",
    "StaticPolicy",
    "dashboard_path",
    "make_policy",
    "measure_latency",
    "profile_path",
    "ServedCapacity",
    "served_capacity",
    "budget_range",
    "replay",
    "replay_schedule",
]
