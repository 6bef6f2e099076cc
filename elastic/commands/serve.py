"""`elastic serve --replicas N MODEL_DIR`: serve a saved model on Ray Serve until Ctrl-C.

Starts a Ray cluster on this machine bound to 127.0.0.1 (no dashboard) — or joins an
existing one with `--address` — deploys N replicas of the runtime behind the budget-aware
router (`elastic.serving.ray`), and serves HTTP on 127.0.0.1:`--http-port` (POST JSON
`{"x": [[[...]]], "budget_ms": 20}`) and Python callers through the deployment handle
(`serve.get_app_handle("elastic")`). docs/ray.md has the multi-machine setup.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from pathlib import Path

from elastic.commands.serve_demo import _device, _positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a saved model on Ray Serve: N replicas behind budget-aware routing")
    p.add_argument("model_dir", help="checkpoint directory written by elastic.save (same path on every node)")
    p.add_argument("--replicas", type=_positive(int), default=1, help="replicas (the minimum when autoscaling)")
    p.add_argument(
        "--max-replicas", type=_positive(int), default=None, help="autoscale up to this many on queue length"
    )
    p.add_argument(
        "--target-ongoing", type=_positive(float), default=4.0, help="autoscaler target: queued + running per replica"
    )
    p.add_argument("--cpus-per-replica", type=_positive(float), default=1.0, help="CPUs Ray reserves per replica")
    p.add_argument("--threads", type=_positive(int), default=1, help="torch threads per replica")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (with --device cuda)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device of each replica (default cpu)")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="most requests per forward (default 8)")
    p.add_argument("--router", choices=("budget", "round_robin", "pow2"), default="budget", help="request routing")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port on 127.0.0.1 (default 8000)")
    p.add_argument("--num-cpus", type=_positive(int), default=None, help="CPUs of the local cluster (default: all)")
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. 10.0.0.1:6379) instead of a local one")
    p.add_argument(
        "--metrics-dir", default=None, help="write a Prometheus file_sd target per replica here (label replica=<tag>)"
    )
    p.set_defaults(func=run)


@contextlib.contextmanager
def _joined(address: str, http_port: int):
    """Join an existing cluster (its head started with `ray start --head`); Serve's HTTP on 127.0.0.1."""
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield "elastic"
    finally:
        ray.shutdown()  # the cluster, and the deployment on it, keep running


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from elastic.errors import ConfigError

    if not Path(args.model_dir, "manifest.json").is_file():
        raise ConfigError(f"{args.model_dir} holds no saved model (no manifest.json)")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ConfigError(f"--max-replicas {args.max_replicas} < --replicas {args.replicas}")
    if not 0 < args.http_port < 65536:
        raise ConfigError(f"--http-port must be in 1..65535, got {args.http_port}")
    try:
        from ray import serve
    except ImportError:
        raise ConfigError('elastic serve needs Ray Serve: pip install -e ".[ray]"') from None

    from elastic.serving.ray import build_app, local_cluster

    app = build_app(
        args.model_dir,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing,
        num_cpus=args.cpus_per_replica,
        num_gpus=args.gpus_per_replica,
        router=args.router,
        device=args.device,
        max_batch_size=args.max_batch,
        torch_threads=args.threads,
        metrics_sd_dir=str(Path(args.metrics_dir).resolve()) if args.metrics_dir else None,
    )
    if args.address:
        cluster = _joined(args.address, args.http_port)
    else:
        cluster = local_cluster(num_cpus=args.num_cpus or os.cpu_count() or 1, http_port=args.http_port)
    with cluster as name:
        serve.run(app, name=name, route_prefix="/")
        scale = f"{args.replicas}..{args.max_replicas}" if args.max_replicas else str(args.replicas)
        print(f"serving {args.model_dir}: {scale} replica(s), router {args.router}")
        print(f'  HTTP:   POST http://127.0.0.1:{args.http_port}/  {{"x": [...], "budget_ms": 20}}')
        print(f'  Python: serve.get_app_handle("{name}") -> elastic.serving.ray.ElasticClient')
        if args.metrics_dir:
            print(f"  metrics: Prometheus file_sd targets in {args.metrics_dir} (one per replica)")
        print("Ctrl-C to stop")
        signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop also shuts Ray down cleanly
        while True:
            time.sleep(1.0)
