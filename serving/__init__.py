"""The serving runtime: latency profiles, scheduler and policies, executor, metrics.

    from elastic.serving import Runtime

    with Runtime(model, device="cpu", max_batch_size=8) as rt:
        rt.profile(example, path=model_dir)      # measured once, saved as profile-cpu.json
        result = rt.infer(x, budget_ms=20)        # the most accurate subnet that makes it
        rt.serve_metrics(port=9400)               # Prometheus on 127.0.0.1

Pieces: `LatencyProfile` (profile.py) and `measure_latency` (profiler.py);
`LatencyModel` = corrected forward + fitted engine overhead (latency_model.py), planned at
a quantile of the forwards' spread that follows the SLO (slo_margin.py);
`BudgetScheduler` (scheduler.py: queue-aware admission, expiry; its fronts in
cost_table.py, the plan admission checks in queue_plan.py, batch holds in batch_hold.py,
its side of preemption in preemption.py) behind
`SchedulerInterface` (interface.py), emitting `SchedulerOutput` (output.py); policies
`elastic`, `slackfit`, `static:<id>` (policies.py); `Runtime` (runtime.py), a front end
(argument checks in admission.py) over `EngineCore` (engine.py: worker, deadline
watchdog; intake.py: submits and caller-runs steps; batch_run.py: a batch's forward and
answers; pending.py: a request's input and future); executors `eager`, `compiled`,
`traced`, `traced_staged` (executor.py, compiled_executor.py, traced_executor.py); the worker's torch
threading (worker_threads.py);
`ServingMetrics` (metrics.py) with the Grafana dashboard in dashboards/elastic.json
(`dashboard_path()`); `replay` (loadgen.py).

The scheduler side (scheduler, policies, profile, predictor, request, output) never
imports torch, and neither does this package: its names are resolved lazily (PEP 562), so
`import elastic.serving.scheduler` stays pure Python.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# public name -> module (relative to this package) that defines it
_LAZY = {
    "BudgetScheduler": "scheduler",
    "Decision": "policies",
    "ElasticPolicy": "policies",
    "Policy": "policies",
    "SlackFitPolicy": "policies",
    "StaticPolicy": "policies",
    "make_policy": "policies",
    "LatencyPredictor": "predictor",
    "LatencyProfile": "profile",
    "profile_path": "profile",
    "Request": "request",
    "Result": "request",
    "ScheduledBatch": "output",
    "SchedulerOutput": "output",
    "ShedRequest": "output",
    "SchedulerInterface": "interface",
    "ServingMetrics": "metrics",
    "measure_latency": "profiler",
    "Runtime": "runtime",
    "EngineCore": "engine",
    "Executor": "executor",
    "EagerExecutor": "executor",
    "EXECUTORS": "executor",
    "make_executor": "executor",
    "CompiledExecutor": "compiled_executor",
    "TracedExecutor": "traced_executor",
    "StagedTracedExecutor": "traced_executor",
    "LatencyModel": "latency_model",
    "OverheadModel": "latency_model",
    "SampleCheck": "admission",
    "ServedCapacity": "capacity",
    "served_capacity": "capacity",
    "budget_range": "capacity",
    "replay": "loadgen",
    "replay_schedule": "loadgen",
}


def dashboard_path() -> Path:
    """The Grafana dashboard over the runtime's metrics (shipped as package data)."""
    return Path(__file__).parent / "dashboards" / "elastic.json"


__all__ = ["dashboard_path", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
