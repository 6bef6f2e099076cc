"""The Ray Serve deployment: replicas that each hold a `Runtime` over the same saved model.

Each replica loads the model directory (`elastic.load`), builds a `Runtime` on its device
(CPU by default, `num_gpus=1` per replica on a GPU cluster), reuses the latency profile saved
beside the model (`profile-<device>.json`) or measures one, and serves:

- `infer(x, budget_ms, sent_at=..., min_accuracy=..., best_effort=...)`, called through a
  `DeploymentHandle` (client.py wraps it and returns `elastic.serving.Result`). The budget
  counts from the caller's submit (`sent_at`, wall clock), so the hop and any wait in Ray's
  router come out of it; a request whose budget ran out on the way is refused with
  `Overloaded` (served best-effort if asked);
- `__call__(request)`, an HTTP ingress: POST JSON `{"x": nested list, "budget_ms": ...}`;
- `record_routing_stats()`, polled by Ray's controller: the replica's cost table and queue
  (stats.py), which `BudgetAwareRouter` (router.py) routes by;
- Prometheus metrics: the runtime's own endpoint on 127.0.0.1 at an OS-chosen port per
  replica; with `metrics_sd_dir`, each replica writes a Prometheus file-based service
  discovery target there labelled `replica=<tag>`, so one Prometheus scrapes the cluster
  and the dashboard's panels split by replica.

Autoscaling (`max_replicas > replicas`) uses Ray Serve's queue-based autoscaler:
`target_ongoing_requests` per replica (queued + running, the same count the router reads).

Ray is imported inside functions only: `import elastic.serving.ray` works without the extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elastic.errors import ConfigError, InvalidInput, Overloaded

from .stats import replica_stats

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "ElasticReplica"
ROUTERS = ("budget", "round_robin", "pow2")


class ElasticReplica:
    """One replica: a `Runtime` over the saved model at `model_dir`.

    Args:
        model_dir: a directory written by `elastic.save` (the same path on every node).
        device: where the model runs ("cpu", "cuda").
        max_batch_size: most requests per forward.
        max_queue: most requests the runtime holds.
        policy: the runtime's subnet policy.
        torch_threads: torch intra-op threads of this replica (match `num_cpus`).
        profile_batch_sizes: batch sizes of the latency profile (measured if no saved one fits).
        profile_repeats: timed runs per (subnet, batch size) when measuring.
        serve_metrics: expose the runtime's Prometheus metrics on 127.0.0.1 (OS-chosen port).
        metrics_sd_dir: where to write a Prometheus file_sd target for this replica (None: don't).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "cpu",
        max_batch_size: int = 8,
        max_queue: int = 256,
        policy: str = "elastic",
        torch_threads: int = 1,
        profile_batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
        profile_repeats: int = 5,
        serve_metrics: bool = True,
        metrics_sd_dir: str | None = None,
    ):
        import torch

        import elastic
        from elastic.serving import Runtime

        torch.set_num_threads(torch_threads)
        self.tag = _replica_tag()
        model = elastic.load(model_dir)
        self.runtime = Runtime(
            model, device, max_batch_size, max_queue, policy, worker_threads=torch_threads, caller_runs=False
        )
        self.runtime.profile(batch_sizes=profile_batch_sizes, repeats=profile_repeats, path=model_dir)
        self.metrics_port = self.runtime.serve_metrics(0) if serve_metrics else None
        self._sd_file: Path | None = None
        if metrics_sd_dir is not None and self.metrics_port is not None:
            self._sd_file = _write_sd_target(Path(metrics_sd_dir), self.tag, self.metrics_port)
        log.info("replica %s serving %s on %s (metrics port %s)", self.tag, model_dir, device, self.metrics_port)

    async def infer(
        self,
        x: Any,
        budget_ms: float,
        *,
        sent_at: float | None = None,
        min_accuracy: float | None = None,
        best_effort: bool = False,
        priority: int = 0,
    ) -> dict[str, Any]:
        """Serve one sample (a numpy array, (C, H, W) or (1, C, H, W)) within what is left of
        `budget_ms` since `sent_at` (time.time() at the caller). Returns the `Result`'s fields
        with the output as a numpy array, plus `replica`; raises the runtime's typed errors."""
        import numpy as np
        import torch

        if not isinstance(x, np.ndarray):
            raise InvalidInput(f"x must arrive as a numpy array, got {type(x).__name__}")
        remaining = budget_ms
        if sent_at is not None and isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms):
            spent = max(0.0, (time.time() - float(sent_at)) * 1e3)
            remaining = budget_ms - spent
            if remaining <= 0:
                if not best_effort:
                    raise Overloaded(f"budget {budget_ms:.3g} ms ran out on the way to replica {self.tag}")
                remaining = 1e-3
        result = await self.runtime.infer_async(
            torch.tensor(x), remaining, min_accuracy=min_accuracy, priority=priority, best_effort=best_effort
        )
        return {
            "output": result.output.numpy(),
            "subnet": result.subnet,
            "queue_ms": result.queue_ms,
            "exec_ms": result.exec_ms,
            "replica_ms": result.latency_ms,
            "batch_size": result.batch_size,
            "request_id": result.request_id,
            "replica": self.tag,
        }

    async def __call__(self, request: Any) -> dict[str, Any]:
        """HTTP ingress: POST {"x": nested list, "budget_ms": ..., "min_accuracy": ..., "best_effort": ...}."""
        import numpy as np

        from elastic.errors import ElasticError

        try:
            body = await request.json()
            x = np.asarray(body["x"], dtype=np.float32)
            out = await self.infer(
                x,
                body["budget_ms"],
                min_accuracy=body.get("min_accuracy"),
                best_effort=bool(body.get("best_effort", False)),
            )
        except ElasticError as e:
            return {"error": type(e).__name__, "message": str(e)}
        except (KeyError, ValueError, TypeError) as e:
            return {"error": "InvalidInput", "message": f"bad request body: {e}"}
        out["output"] = out["output"].tolist()
        return out

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray's routing-stats hook: this replica's cost table and queue (stats.py)."""
        scheduler = self.runtime.scheduler
        queued = scheduler.get_num_waiting() if scheduler is not None else 0
        return replica_stats(scheduler, queued, replica=self.tag, metrics_port=self.metrics_port)

    def metrics_endpoint(self) -> dict[str, Any]:
        """This replica's tag and Prometheus port (on 127.0.0.1 of its node)."""
        return {"replica": self.tag, "port": self.metrics_port}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._sd_file is not None:
                self._sd_file.unlink(missing_ok=True)
            self.runtime.close(drain=False, timeout=5)


def _replica_tag() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # outside a Serve replica (tests construct it directly)
        return f"local-{os.getpid()}"


def _write_sd_target(folder: Path, tag: str, port: int) -> Path:
    """Write `<folder>/<tag>.json`, a Prometheus file_sd target with a `replica` label (atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"replica": tag}}]))
    os.replace(tmp, path)
    return path


def build_app(
    model_dir: str | Path,
    *,
    replicas: int = 1,
    max_replicas: int | None = None,
    target_ongoing_requests: float = 4.0,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    router: str = "budget",
    hop_ms: float = 2.0,
    routing_stats_period_s: float = 0.5,
    max_ongoing_requests: int = 32,
    **replica_options: Any,
) -> Any:
    """The Ray Serve application: `replicas` × `ElasticReplica` behind the chosen router.

    Args:
        model_dir: the saved model (the same path on every node).
        replicas: replicas to start with (the minimum when autoscaling).
        max_replicas: autoscale between `replicas` and this on queue length (None: fixed).
        target_ongoing_requests: the autoscaler's target of queued + running requests per replica.
        num_cpus: CPUs reserved per replica (set `torch_threads` to match).
        num_gpus: GPUs per replica (pass `device="cuda"` too).
        router: "budget" (BudgetAwareRouter), "round_robin", or "pow2" (Ray's default).
        hop_ms: the budget-aware router's allowance for the hop to a replica and back.
        routing_stats_period_s: how often Ray polls each replica's `record_routing_stats`.
        max_ongoing_requests: most requests Ray sends one replica before queueing at the router.
        **replica_options: keyword arguments of `ElasticReplica`.

    Raises:
        ConfigError: a bad setting.
    """
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from .router import BudgetAwareRouter, RoundRobinRouter

    if router not in ROUTERS:
        raise ConfigError(f"router must be one of {ROUTERS}, got {router!r}")
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be an integer >= 1, got {replicas!r}")
    if max_replicas is not None and (not isinstance(max_replicas, int) or max_replicas < replicas):
        raise ConfigError(f"max_replicas must be an integer >= replicas ({replicas}), got {max_replicas!r}")
    if not Path(model_dir, "manifest.json").is_file():
        raise ConfigError(f"{model_dir} holds no saved model (no manifest.json)")
    router_config: dict[str, Any] = {"request_routing_stats_period_s": routing_stats_period_s}
    if router == "budget":
        router_config.update(request_router_class=BudgetAwareRouter, request_router_kwargs={"hop_ms": hop_ms})
    elif router == "round_robin":
        router_config.update(request_router_class=RoundRobinRouter)
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": max_ongoing_requests,
        "request_router_config": RequestRouterConfig(**router_config),
    }
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        }
    else:
        options["num_replicas"] = replicas
    return serve.deployment(ElasticReplica).options(**options).bind(str(Path(model_dir).resolve()), **replica_options)


@contextlib.contextmanager
def local_cluster(
    num_cpus: int = 2, http_port: int | None = None, object_store_mb: int = 128, app_name: str = "elastic"
) -> Iterator[str]:
    """A Ray cluster on this machine, bound to 127.0.0.1, no dashboard; Serve started, with
    an HTTP proxy on 127.0.0.1:`http_port` (None: no proxy). Shut down on exit.

    Yields:
        the Serve application name to deploy under.
    """
    import ray
    from ray import serve

    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=num_cpus,
        object_store_memory=object_store_mb * 2**20,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        if http_port is None:
            serve.start(proxy_location="Disabled")
        else:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield app_name
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
