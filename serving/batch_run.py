"""One batch's forward and its answers: the part of `EngineCore` that runs a scheduled batch.

`BatchRunner._execute` stacks the members' samples (or slices their common `submit_many`
copy), runs the forward through the executor — stage by stage when the scheduler lets the
batch pause for urgent requests (`_run_pausing`) — checks the outputs, feeds the latency
model (forward time, then the engine's own time around it) and answers every member with
its row, or fails them with `ExecutionError`; how many ended late feeds the scheduler's
planning margin (`observe_outcomes`, folded with the overhead). A mixin of `EngineCore`
(serving/engine.py), over its lock, pending table, executor, metrics and clock.
"""

from __future__ import annotations

import contextlib
import logging
import math
from concurrent.futures import Future

import torch

from elastic.errors import ExecutionError

from .output import ScheduledBatch
from .pending import Pending, fail_future
from .request import Result
from .scheduler import BudgetScheduler

log = logging.getLogger(__name__)


class BatchRunner:
    """`_execute` and `_run_pausing` of `EngineCore` (a mixin: see the module docstring)."""

    def _execute(
        self,
        scheduler: BudgetScheduler,
        batch: ScheduledBatch,
        members: list[Pending],
        t_sched: float,
        woken_at: float | None,
        inner: bool = False,
    ) -> None:
        """One forward for the batch; answer each member with its row, or fail them.

        A batch the scheduler lets pause (`stages_of`) runs stage by stage, with the urgent
        batches the scheduler hands out at its boundaries run in between (`inner`: such a
        batch, run while another is paused); its forward time excludes theirs."""
        clock = self.clock
        error: Exception | None = None
        bad: set[int] = set()
        start = clock()
        paused = 0.0  # seconds the batch spent paused for urgent batches
        try:
            x = members[0].sample() if len(members) == 1 else stack_members(members)
            stages = scheduler.stages_of(batch) if self.executor.pausable else ()
            if stages:
                y, paused = self._run_pausing(scheduler, batch, x)
            else:
                y = self.executor.run(batch.subnet, x)
            if not y.is_cpu:
                y = y.to("cpu")  # on CUDA, also waits
            if y.requires_grad:  # not in inference mode (a custom executor): hand out no graph
                y = y.detach()
            # a finite sum means every output is finite (one reduction, no mask); else find the rows
            if self.check_outputs and not math.isfinite(y.sum().item()):
                finite = torch.isfinite(y.reshape(len(members), -1)).all(dim=1)
                bad = {i for i, ok in enumerate(finite.tolist()) if not ok}
        except Exception as e:
            error = e
        end = clock()
        exec_ms = 1e3 * (end - start - paused)
        with self._lock:
            ratio = scheduler.update_from_output(batch, None if error else exec_ms, end)
            if not inner:
                self._running = None
        metrics = self.metrics
        if error is not None:
            log.warning("forward of subnet %d on %d requests failed: %r", batch.subnet, batch.size, error)
            metrics.failed(len(members))
            for m in members:
                fail_future(m.future, execution_error(batch, error))
        else:
            metrics.batch(batch.size, exec_ms / 1e3, ratio)
            accuracy = scheduler.real_accuracy(batch.subnet)
            subnet, size = batch.subnet, batch.size
            rows: list[tuple[float, float, bool]] = []
            answers: list[tuple[Future, Result]] = []
            ended = late = 0  # admitted, not best effort: what the planning margin answers for
            outputs = y.unbind(0) if size > 1 else (y[0],)  # views, no copies
            answered_at = clock()  # one instant for the batch: every answer is ready now
            for i, m in enumerate(members):
                r = m.request
                if i in bad:
                    metrics.failed(1)
                    fail_future(
                        m.future,
                        ExecutionError(
                            f"subnet {subnet} gave non-finite outputs for request {r.id} (inputs too large?)"
                        ),
                    )
                    continue
                output = outputs[i] if m.squeeze else (y if size == 1 else outputs[i].unsqueeze(0))
                latency_ms = 1e3 * (answered_at - r.arrival)
                queue_ms = 1e3 * (start - r.arrival)
                met = latency_ms <= r.budget_ms
                if not r.best_effort:
                    ended += 1
                    late += not met
                rows.append((latency_ms / 1e3, queue_ms / 1e3, met))
                answers.append((m.future, Result(output, subnet, queue_ms, exec_ms, latency_ms, met, size, r.id)))
            if rows:
                metrics.answered_batch(subnet, accuracy, rows)  # counted before anyone is told
            for future, result in answers:
                future.set_result(result)
        # the worker's wake-up for this batch (a submit woke it) is its own part of the overhead
        wake_ms = 1e3 * (t_sched - woken_at) if woken_at is not None and t_sched > woken_at else 0.0
        overhead_ms = 1e3 * (clock() - t_sched - paused) - exec_ms + wake_ms
        if error is not None:
            ended = late = 0
        if inner:  # the paused batch's own overhead is stashed after this one's: fold this one now
            with self._lock:
                scheduler.observe_overhead(batch.size, overhead_ms)
                scheduler.observe_outcomes(late, ended)
        else:
            self._overhead = (batch.size, overhead_ms, wake_ms, late, ended)

    def _run_pausing(
        self, scheduler: BudgetScheduler, batch: ScheduledBatch, x: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """Run `batch` stage by stage (`Executor.run_stages`); at each boundary tell the
        scheduler (`boundary`, without the lock) and, when urgent requests wait, take the
        lock, ask for their batch (`interrupt`), shed what it sheds, and run the urgent batch
        to its end before going on. Returns the logits and the seconds spent paused."""
        clock = self.clock
        stages = self.executor.run_stages(batch.subnet, x)
        paused, k = 0.0, 0
        # a caller-runs step may already be in inference mode: entering it again costs ~2 µs
        with contextlib.nullcontext() if torch.is_inference_mode_enabled() else torch.inference_mode():
            while True:
                try:
                    next(stages)
                except StopIteration as stop:
                    return stop.value, paused
                stage, k = k, k + 1
                if not scheduler.boundary(stage, clock()):
                    continue  # nobody urgent: on without the lock (`boundary`)
                with self._lock:
                    t = clock()
                    out = scheduler.interrupt(t, stage)
                    shed = [(self._pending.pop(s.request_id), s) for s in out.shed]
                    urgent = out.batch
                    members = [self._pending.pop(rid) for rid in urgent.request_ids] if urgent is not None else []
                if shed:
                    self._shed(shed)
                if urgent is not None:
                    try:
                        self._execute(scheduler, urgent, members, t, None, inner=True)
                    except Exception as e:  # metrics or result assembly: still answer everyone
                        log.exception("finishing urgent batch %s failed", urgent)
                        left = [m for m in members if not m.future.done()]
                        for m in left:
                            fail_future(m.future, execution_error(urgent, e))
                        self.metrics.failed(len(left))
                    paused += clock() - t


def stack_members(members: list[Pending]) -> torch.Tensor:
    """The members' samples as one batch: a slice of their common `submit_many` copy when
    they are consecutive rows of it (no copy), else stacked."""
    base, first = members[0].base, members[0].row
    if base is not None and all(m.base is base and m.row == first + i for i, m in enumerate(members)):
        return base[first : first + len(members)]
    return torch.cat([m.sample() for m in members])


def execution_error(batch: ScheduledBatch, cause: BaseException) -> ExecutionError:
    error = ExecutionError(
        f"forward of subnet {batch.subnet} on a batch of {batch.size} failed: {type(cause).__name__}: {cause}"
    )
    error.__cause__ = cause
    return error
