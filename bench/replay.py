"""One real open-loop load run through a `Runtime`, recorded request by request.

Requests arrive on their own schedule (open loop, as in the evaluations of Clockwork, OSDI'20,
and SuperServe, NSDI'25): request k is submitted at `arrivals_s[k]` with budget
`budgets_ms[k]` and image k mod N, whether or not earlier ones are answered. Unlike
`elastic.serving.replay_schedule`, which scores against labels as it goes, this keeps one
`Outcome` per request, judged by a `Judge` — real labels for the demo model, published
accuracies for random-weight DeiTs — so the load suite scores real and simulated runs with
the same `score`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait

import torch

from elastic.errors import BudgetInfeasible, ElasticError, Overloaded

from .outcomes import ANSWERED, FAILED, REJECTED, SHED, Judge, Outcome

log = logging.getLogger(__name__)


def replay_outcomes(
    runtime,
    images: torch.Tensor,
    arrivals_s: Sequence[float],
    budgets_ms: Sequence[float],
    judge: Judge,
    timeout_s: float = 60.0,
    lag: list[float] | None = None,
    forward_ms: list[float] | None = None,
    scored_from: int = 0,
) -> list[Outcome]:
    """Submit request k at `arrivals_s[k]` seconds from now; one `Outcome` per request from
    `scored_from` on.

    Args:
        runtime: a profiled `elastic.serving.Runtime`.
        images: the stream; request k sends image k mod N.
        arrivals_s: submit times, ascending, seconds from the start.
        budgets_ms: each request's budget.
        judge: decides correctness of an answer.
        timeout_s: most seconds to wait for the last answers; a request still unanswered
            then counts as failed ("unanswered") and is logged.
        lag: if given, receives how many seconds each submit came after its arrival time
            (a driver that falls behind offers less load than asked).
        forward_ms: if given, receives the forward time (`Result.exec_ms`) of each answered
            request's batch: what the machine gave the worker under this load.
        scored_from: the requests before it warm the runtime up: they run and are waited
            for like the others, but get no `Outcome`, lag or forward time.

    Shape:
        images: (N, C, H, W)
    """
    if len(arrivals_s) != len(budgets_ms):
        raise ValueError(f"{len(arrivals_s)} arrival times for {len(budgets_ms)} budgets")
    if len(images) == 0:
        raise ValueError("no images to send")
    outcomes: list[Outcome | None] = [None] * len(arrivals_s)
    sent: list[tuple[int, Future]] = []
    refused: list[tuple[int, str]] = []
    # the driver shares the interpreter with the runtime's worker, so its own per-request
    # work is kept to the least: samples split once (indexing a tensor is a tensor operation,
    # which lets go of the interpreter lock mid-turn), and a
    # refusal's outcome is written after the run
    samples, n = images.unbind(0), len(images)
    t0 = time.perf_counter()
    for k, (at, budget) in enumerate(zip(arrivals_s, budgets_ms, strict=True)):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if lag is not None and k >= scored_from:
            lag.append(time.perf_counter() - t0 - at)
        try:
            future = runtime.submit(samples[k % n], budget)
        except BudgetInfeasible:
            refused.append((k, "infeasible"))
            continue
        except Overloaded:
            refused.append((k, "overloaded"))
            continue
        sent.append((k, future))
    for k, reason in refused:
        outcomes[k] = Outcome(REJECTED, budgets_ms[k], reason=reason)
    _, not_done = wait([f for _, f in sent], timeout=timeout_s)
    if not_done:
        log.warning("%d requests still unanswered after %s s", len(not_done), timeout_s)
    for k, future in sent:
        budget = budgets_ms[k]
        if not future.done():
            outcomes[k] = Outcome(FAILED, budget, reason="unanswered")
            continue
        error = future.exception()
        if isinstance(error, Overloaded):
            outcomes[k] = Outcome(SHED, budget, reason=shed_reason(error))
        elif isinstance(error, ElasticError):
            outcomes[k] = Outcome(FAILED, budget, reason=type(error).__name__)
        elif error is not None:  # not a typed error: the runtime broke its contract
            raise RuntimeError(f"request {k} failed with an untyped error") from error
        elif k >= scored_from:
            r = future.result()
            if forward_ms is not None:
                forward_ms.append(r.exec_ms)
            index = k % len(images)
            correct = judge(k, index, r.subnet, r.output)
            outcomes[k] = Outcome(ANSWERED, budget, r.subnet, r.latency_ms, r.batch_size, correct)
    return [o for o in outcomes[scored_from:] if o is not None]


def shed_reason(error: Exception) -> str:
    """Why the runtime shed a request, from its `Overloaded` message (`ShedRequest.message`:
    "request 7 shed (deadline): ..."); "shed" when the message names none."""
    found = re.search(r" shed \((\w+)\)", str(error))
    return found.group(1) if found else "shed"
