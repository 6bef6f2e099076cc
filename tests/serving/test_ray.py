"""elastic.serving.ray: routing predictions (pure), error unwrapping, and a real local Ray cluster.

The cluster tests start Ray on 127.0.0.1 (no dashboard, no HTTP proxy), deploy 2 replicas of
the tiny stitched model saved to a temporary directory, and check the serving contract across
the hop: every request ends with a `Result` or a typed `ElasticError`, also when a replica is
killed with requests in flight.
"""

import math
import random
import threading
import time

import pytest
import torch

from elastic.errors import BudgetInfeasible, ElasticError, ExecutionError, InvalidInput, Overloaded
from elastic.serving.ray.stats import drain_ms, predict, replica_stats, usable


def _stats(service, accuracy, B=2, queued=0):
    fastest = [0.0] + [min(row[b - 1] for row in service) for b in range(1, B + 1)]
    return {
        "v": 2,
        "drain_ms_per_request": service[-1][B - 1] / B,
        "subnets": list(range(len(service))),
        "accuracy": accuracy,
        "accuracy_known": True,
        "service_ms": service,
        "fastest_ms": fastest,
        "max_batch_size": B,
        "queued": queued,
    }


# ---- pure: what the router predicts ---------------------------------------------------------------
def test_predict_picks_most_accurate_subnet_within_budget():
    stats = _stats([[1.0, 1.5], [4.0, 6.0], [10.0, 15.0]], [0.5, 0.7, 0.9])
    assert predict(stats, 0, 12.0).subnet == 2
    assert predict(stats, 0, 5.0).subnet == 1
    p = predict(stats, 0, 5.0, hop_ms=2.0)  # the hop eats into the budget
    assert (p.subnet, p.completion_ms) == (0, 3.0)


def test_predict_queue_ahead_moves_to_cheaper_subnet_or_none():
    stats = _stats([[1.0, 1.5], [4.0, 6.0], [10.0, 15.0]], [0.5, 0.7, 0.9])
    assert drain_ms(stats, 1) == 7.5  # at the most accurate subnet's full-batch rate, 15 ms / 2
    assert predict(stats, 1, 15.0).subnet == 1  # 7.5 ahead: 7.5 + 10 > 15, 7.5 + 4 <= 15
    late = predict(stats, 4, 12.0)
    assert late.subnet is None and late.accuracy == -math.inf and late.completion_ms == 4 * 7.5 + 1.0


def test_predict_accuracy_floor_and_ranking():
    stats = _stats([[1.0, 1.5], [4.0, 6.0], [10.0, 15.0]], [0.5, 0.7, 0.9])
    assert predict(stats, 0, 5.0, min_accuracy=0.8).subnet is None
    assert predict(stats, 0, 50.0, min_accuracy=0.8).subnet == 2
    idle, busy = predict(stats, 0, 12.0), predict(stats, 3, 12.0)
    assert sorted([busy, idle], key=lambda p: p.rank_key())[0] is idle  # more accurate wins
    a, b = predict(stats, 0, 50.0), predict(stats, 1, 50.0)  # same subnet: earlier completion wins
    assert a.subnet == b.subnet and a.rank_key() < b.rank_key()


def test_replica_stats_from_a_real_scheduler(served_model, served_profile):
    from elastic.serving import BudgetScheduler

    sched = BudgetScheduler(served_model.subnets(), served_profile, max_batch_size=4)
    stats = replica_stats(sched, queued=5, replica="r0", metrics_port=1234)
    assert usable(stats) and stats["subnets"] == list(sched.candidates)
    assert stats["service_ms"][0][0] == pytest.approx(sched.predict_ms(sched.candidates[0], 1), abs=1e-3)
    top = max(sched.candidates, key=sched.accuracy)
    assert stats["drain_ms_per_request"] == pytest.approx(sched.predict_ms(top, 4) / 4, abs=1e-3)
    assert stats["backlog_ms"] == pytest.approx(5 * stats["drain_ms_per_request"])
    assert not usable(replica_stats(None, 0))


# ---- the router's ranking, on stand-in replicas (no cluster) -------------------------------------
class _Replica:
    """What the router reads of a `RunningReplica`: id, published stats, queue probe."""

    def __init__(self, name, stats, queue_len):
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(name, DeploymentID("d", "app"))
        self.routing_stats = stats
        self.queue_len = queue_len
        self.probes = 0

    async def get_queue_len(self, *, deadline_s):
        self.probes += 1
        return self.queue_len


def _router():
    from ray.serve._private.request_router.common import ReplicaQueueLengthCache

    from elastic.serving.ray.router import BudgetAwareRouter

    router = BudgetAwareRouter.__new__(BudgetAwareRouter)  # Ray builds it with a live deployment
    router._replica_queue_len_cache = ReplicaQueueLengthCache()
    router.initialize_state(hop_ms=0.0)
    return router


def _pending(**kwargs):
    from types import SimpleNamespace

    return SimpleNamespace(args=[], kwargs=kwargs, created_at=time.time())


def test_router_ranks_by_accuracy_then_queue_and_falls_back_without_a_budget():
    pytest.importorskip("ray.serve")
    import asyncio

    stats = _stats([[1.0, 1.5], [4.0, 6.0], [10.0, 15.0]], [0.5, 0.7, 0.9])
    idle, busy, busier = _Replica("idle", stats, 0), _Replica("busy", stats, 1), _Replica("busier", stats, 2)
    router = _router()
    order = lambda ranks: [rank[0].replica_id.unique_id for rank in ranks]  # noqa: E731
    # budget 15: subnet 2 only on the idle replica (7.5 ms per queued request), 1 on busy, 0 on busier
    ranks = asyncio.run(router.choose_replicas([busier, busy, idle], _pending(budget_ms=15.0, sent_at=time.time())))
    assert order(ranks) == ["idle", "busy", "busier"] and idle.probes == 1  # probed once, then cached
    # a loose budget: every replica serves subnet 2, so the shorter queue wins
    ranks = asyncio.run(router.choose_replicas([busier, idle, busy], _pending(budget_ms=1e4, sent_at=time.time())))
    assert order(ranks) == ["idle", "busy", "busier"] and idle.probes == 1
    # equal accuracy: the shorter queue beats a replica whose own latency estimate is lower
    fast = _Replica("fast", _stats([[0.1, 0.15], [0.4, 0.6], [1.0, 1.5]], [0.5, 0.7, 0.9]), 1)
    ranks = asyncio.run(router.choose_replicas([fast, idle], _pending(budget_ms=1e4, sent_at=time.time())))
    assert order(ranks) == ["idle", "fast"]
    # equal accuracy and queue: a random order, not the replica whose own latency estimate is
    # lower every time (that sent one replica 66-90 % of a light load)
    fast.queue_len = 0
    router._replica_queue_len_cache.update(fast.replica_id, 0)
    random.seed(0)
    firsts = [
        order(asyncio.run(router.choose_replicas([fast, idle], _pending(budget_ms=1e4, sent_at=time.time()))))[0]
        for _ in range(200)
    ]
    assert 60 <= firsts.count("fast") <= 140
    # no budget (HTTP) or a replica without a cost table: power of two choices, one rank of two
    for candidates, pending in (
        ([idle, busy, busier], _pending()),
        ([idle, _Replica("new", {}, 0)], _pending(budget_ms=9.0)),
    ):
        ranks = asyncio.run(router.choose_replicas(candidates, pending))
        assert len(ranks) == 1 and len(ranks[0]) == 2
    assert router.decisions == {"budget": 203, "fallback": 2}


# ---- typed errors survive the hop --------------------------------------------------------------
def test_unwrap_error_restores_elastic_types():
    ray_ex = pytest.importorskip("ray.exceptions")
    from elastic.serving.ray.client import unwrap_error

    wrapped = ray_ex.RayTaskError("infer", "traceback", Overloaded("queue full")).as_instanceof_cause()
    got = unwrap_error(wrapped)
    assert type(got) is Overloaded and str(got) == "queue full"
    got = unwrap_error(ray_ex.RayTaskError("infer", "tb", ZeroDivisionError("x")))
    assert type(got) is ExecutionError and isinstance(got.__cause__, ZeroDivisionError)
    assert type(unwrap_error(ray_ex.RayActorError())) is Overloaded
    assert type(unwrap_error(TimeoutError())) is Overloaded


# ---- configuration (no cluster) ----------------------------------------------------------------
def test_build_app_autoscaling_router_and_refusals(tmp_path, served_model):
    pytest.importorskip("ray.serve")
    import elastic
    from elastic.errors import ConfigError
    from elastic.serving.ray import build_app

    elastic.save(served_model, tmp_path / "m")
    deployment = build_app(tmp_path / "m", replicas=1, max_replicas=3, target_ongoing_requests=2)._bound_deployment
    config = deployment._deployment_config
    scaling = config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 3, 2.0)
    assert config.request_router_config.request_router_class.endswith("router.BudgetAwareRouter")
    fixed = build_app(tmp_path / "m", replicas=2, router="round_robin", num_gpus=1)._bound_deployment
    assert fixed.num_replicas == 2 and fixed.ray_actor_options["num_gpus"] == 1
    assert fixed._deployment_config.request_router_config.request_router_class.endswith("RoundRobinRouter")
    with pytest.raises(ConfigError, match="router"):
        build_app(tmp_path / "m", router="random")
    with pytest.raises(ConfigError, match="max_replicas"):
        build_app(tmp_path / "m", replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match="manifest"):
        build_app(tmp_path / "nothing")


def test_serve_command_refuses_a_missing_model_before_starting_ray(tmp_path, capsys):
    from elastic.cli import main

    assert main(["serve", "--replicas", "2", str(tmp_path)]) == 2
    assert "no saved model" in capsys.readouterr().err


# ---- a real local cluster ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(served_model, tmp_path_factory):
    import elastic
    from elastic.serving import Runtime

    path = tmp_path_factory.mktemp("ray") / "model"
    elastic.save(served_model, path)
    with Runtime(served_model, max_batch_size=8) as rt:  # measured once here, reused by every replica
        rt.profile(batch_sizes=(1, 2, 4, 8), repeats=2, warmup=1, path=path)
    return path


@pytest.fixture(scope="module")
def cluster(model_dir):
    pytest.importorskip("ray.serve")
    from ray import serve

    from elastic.serving.ray import ElasticClient, build_app, local_cluster

    with local_cluster(num_cpus=2) as app:
        handle = serve.run(build_app(model_dir, replicas=2, num_cpus=0.5, routing_stats_period_s=0.5), name=app)
        client = ElasticClient(handle, timeout_s=30)
        client.infer(torch.zeros(3, 32, 32), 10_000)  # warm
        yield client


def _drive(client, n_threads, per_thread, budgets, results, errors, others, started=None):
    def worker(k):
        for i in range(per_thread):
            budget = budgets[(k + i) % len(budgets)]
            x = torch.randn(3, 32, 32)
            try:
                pending = client.submit(x, budget, best_effort=(i % 5 == 4), min_accuracy=0.6 if i % 7 == 6 else None)
                if started is not None:
                    started.release()
                r = pending.result()
                results.append((budget, r))
            except ElasticError as e:
                errors.append((budget, e))
            except BaseException as e:  # noqa: BLE001 - anything untyped is a failure of the contract
                others.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
def test_mixed_budgets_from_threads_every_request_answered_or_typed(cluster):
    results, errors, others = [], [], []
    threads = _drive(cluster, 4, 12, [0.5, 5.0, 30.0, 200.0, 2000.0], results, errors, others)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert others == []
    assert len(results) + len(errors) == 48
    assert results, "no request was served"
    for _budget, r in results:
        assert r.output.shape == (10,) and torch.isfinite(r.output).all()
    for _budget, e in errors:
        assert isinstance(e, (BudgetInfeasible, Overloaded)), e


@pytest.mark.slow
def test_typed_errors_cross_the_hop(cluster):
    with pytest.raises(InvalidInput):
        cluster.infer(torch.zeros(3, 16, 16), 1000)  # wrong size, checked in the replica
    with pytest.raises(InvalidInput):
        cluster.infer(torch.zeros(3, 32, 32, dtype=torch.float64), 1000)
    with pytest.raises(BudgetInfeasible):
        cluster.infer(torch.zeros(3, 32, 32), 1000, min_accuracy=0.999)  # no subnet that accurate
    with pytest.raises(InvalidInput):
        cluster.infer("not a tensor", 1000)


@pytest.mark.slow
def test_killed_replica_loses_no_accepted_request(cluster):
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "ElasticReplica" in a["name"]]
    assert len(replicas) == 2
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    results, errors, others = [], [], []
    started = threading.Semaphore(0)
    threads = _drive(cluster, 4, 10, [50.0, 500.0, 5000.0], results, errors, others, started)
    for _ in range(8):  # kill once requests are in flight
        started.acquire(timeout=30)
    ray.kill(victim)
    killed_at = time.perf_counter()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert others == []
    assert len(results) + len(errors) == 40  # none lost: each one a Result or a typed error
    for _budget, e in errors:
        assert isinstance(e, (BudgetInfeasible, Overloaded)), e
    # the deployment keeps serving after the loss (the survivor, or Ray's replacement)
    r = cluster.infer(torch.randn(3, 32, 32), 10_000)
    assert r.output.shape == (10,)
    assert time.perf_counter() - killed_at < 120
