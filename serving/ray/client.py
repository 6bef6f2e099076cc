"""`ElasticClient`: the caller's side of the Ray deployment — the same `Result`, the same typed errors.

A request's budget counts from `submit` on the caller: the client sends `budget_ms` and
`sent_at` (wall clock) with the input, the router and the replica subtract what the hop
and any wait took. The answer is rebuilt as `elastic.serving.Result`, with `latency_ms`
measured by the caller end to end and `met_budget` judged on it.

Errors survive the hop with their type: Ray delivers an exception raised in a replica
wrapped in a `RayTaskError`; the client re-raises the original `elastic.errors` instance
(`BudgetInfeasible`, `Overloaded`, `InvalidInput`, ...). What only Ray can report is mapped
onto the same contract, so no accepted request ends silently: a replica that died with the
request in flight (`RayActorError`), a request Ray refused or cancelled, or no answer within
`timeout_s` is `Overloaded`; any other failure inside the replica is `ExecutionError` with
the original as its cause.

Tensors cross the hop as numpy arrays (Ray's serializer carries them out of band).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from elastic.errors import ElasticError, ExecutionError, InvalidInput, Overloaded
from elastic.serving.request import Result


def unwrap_error(error: BaseException, where: str = "the deployment") -> ElasticError:
    """The typed `ElasticError` a Ray failure stands for (see the module docstring)."""
    import ray.exceptions as rex
    from ray.serve.exceptions import BackPressureError, RequestCancelledError

    if isinstance(error, rex.RayTaskError):  # checked first: Ray's wrapper also subclasses the cause's type
        cause = error.cause
        if isinstance(cause, ElasticError):
            return cause
        if isinstance(cause, (rex.RayActorError, rex.ActorUnavailableError)):
            return unwrap_error(cause, where)
        wrapped = ExecutionError(f"{where} failed: {type(cause).__name__}: {cause}")
        wrapped.__cause__ = cause
        return wrapped
    if isinstance(error, ElasticError):
        return error
    if isinstance(error, (rex.RayActorError, rex.ActorUnavailableError)):
        return Overloaded(f"the replica serving the request died or became unreachable: {type(error).__name__}")
    if isinstance(error, (BackPressureError, RequestCancelledError)):
        return Overloaded(f"{where} refused or cancelled the request: {error}")
    if isinstance(error, (TimeoutError, rex.GetTimeoutError)):
        return Overloaded(f"no answer from {where} in time")
    wrapped = ExecutionError(f"{where} failed: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _as_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InvalidInput(f"x must be a torch.Tensor, got {type(x).__name__}")


class PendingResult:
    """One submitted request: `result()` waits for its `Result` or raises its typed error."""

    def __init__(self, response: Any, budget_ms: float, t0: float, timeout_s: float | None):
        self._response = response
        self.budget_ms = budget_ms
        self._t0 = t0
        self._timeout_s = timeout_s
        self.replica: str | None = None  # the replica that answered, once it has

    def _build(self, out: dict[str, Any]) -> Result:
        latency = (time.perf_counter() - self._t0) * 1e3
        self.replica = out.get("replica")
        return Result(
            output=torch.from_numpy(np.array(out["output"])),
            subnet=out["subnet"],
            queue_ms=out["queue_ms"],
            exec_ms=out["exec_ms"],
            latency_ms=latency,
            met_budget=latency <= self.budget_ms,
            batch_size=out["batch_size"],
            request_id=out["request_id"],
        )

    def result(self, timeout_s: float | None = None) -> Result:
        """Wait (at most `timeout_s`, default the client's) for the answer.

        Raises:
            ElasticError: the replica's typed error, or `Overloaded` / `ExecutionError` for
                what went wrong in Ray (see the module docstring).
        """
        try:
            out = self._response.result(timeout_s=timeout_s if timeout_s is not None else self._timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure becomes a typed error
            raise unwrap_error(e) from None
        return self._build(out)

    async def result_async(self) -> Result:
        try:
            out = await self._response
        except Exception as e:  # noqa: BLE001
            raise unwrap_error(e) from None
        return self._build(out)

    def cancel(self) -> None:
        self._response.cancel()


class ElasticClient:
    """Send requests to the deployment through a Ray Serve `DeploymentHandle`.

    Args:
        handle: the handle `serve.run(build_app(...))` returned (or `serve.get_app_handle`).
        timeout_s: default longest wait for an answer (None: no limit).
    """

    def __init__(self, handle: Any, timeout_s: float | None = 60.0):
        self.handle = handle
        self.timeout_s = timeout_s

    def submit(
        self,
        x: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        best_effort: bool = False,
        priority: int = 0,
    ) -> PendingResult:
        """Send one sample; its budget counts from now. Shape: x (C, H, W) or (1, C, H, W).

        Raises:
            InvalidInput: `x` is not a tensor (the replica checks the rest).
        """
        t0 = time.perf_counter()
        arr = _as_numpy(x)
        response = self.handle.infer.remote(
            arr,
            budget_ms=budget_ms,
            sent_at=time.time(),
            min_accuracy=min_accuracy,
            best_effort=best_effort,
            priority=priority,
        )
        budget = float(budget_ms) if isinstance(budget_ms, (int, float)) else math.nan
        return PendingResult(response, budget, t0, self.timeout_s)

    def infer(
        self,
        x: torch.Tensor,
        budget_ms: float,
        *,
        min_accuracy: float | None = None,
        best_effort: bool = False,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> Result:
        """`submit` and wait: the `Result`, or the typed error."""
        pending = self.submit(x, budget_ms, min_accuracy=min_accuracy, best_effort=best_effort, priority=priority)
        return pending.result(timeout_s)
