"""Scale the runtime out on Ray Serve: replicas of one saved model behind budget-aware routing.

    from elastic.serving.ray import ElasticClient, build_app, local_cluster
    from ray import serve

    with local_cluster(num_cpus=2) as app:
        handle = serve.run(build_app(model_dir, replicas=2), name=app)
        result = ElasticClient(handle).infer(x, budget_ms=20)   # elastic.serving.Result

Pieces: `ElasticReplica` and `build_app` / `local_cluster` (deployment.py);
`BudgetAwareRouter` and `RoundRobinRouter` (router.py, Ray's custom request-router API);
`replica_stats` / `predict` (stats.py, pure Python); `ElasticClient` (client.py). Needs the
`ray` extra (`pip install -e ".[ray]"`); names resolve lazily, so importing this package
does not import ray. See docs/ray.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ElasticReplica": "deployment",
    "build_app": "deployment",
    "local_cluster": "deployment",
    "ROUTERS": "deployment",
    "BudgetAwareRouter": "router",
    "RoundRobinRouter": "router",
    "ElasticClient": "client",
    "PendingResult": "client",
    "unwrap_error": "client",
    "Prediction": "stats",
    "predict": "stats",
    "replica_stats": "stats",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
