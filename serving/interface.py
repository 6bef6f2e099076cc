"""The scheduler contract, after vLLM v1's `vllm/v1/core/sched/interface.py`.

A scheduler owns the queue of admitted requests and decides, one step at a time, which
subnet to run on which requests. It is pure Python and single-threaded: the runtime calls
it under its own lock, passes the clock in (so tests drive time by hand), and reports every
batch's observed latency back. Every request it admits leaves it exactly once: in a
`ScheduledBatch`, or as a `ShedRequest`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .output import ScheduledBatch, SchedulerOutput, ShedRequest
from .request import Request


class SchedulerInterface(ABC):
    @abstractmethod
    def add_request(self, request: Request, now: float) -> list[ShedRequest]:
        """Admit `request` into the queue.

        Returns:
            queued requests evicted to make room (lower priority than `request`).

        Raises:
            BudgetInfeasible: no eligible subnet can finish in time (unless best effort), the
                budget is not positive, or no subnet meets `min_accuracy`.
            Overloaded: the queue is full of requests of at least the same priority.
        """

    @abstractmethod
    def schedule(self, now: float) -> SchedulerOutput:
        """Shed requests that can no longer make their deadline, then pick the next batch."""

    @abstractmethod
    def update_from_output(self, batch: ScheduledBatch, exec_ms: float | None) -> float | None:
        """Report a finished batch; `exec_ms` None means its forward failed.

        Returns:
            observed / predicted latency, or None if the batch failed.
        """

    @abstractmethod
    def abort_all(self, reason: str = "closed") -> list[ShedRequest]:
        """Empty the queue; every removed request is returned to be failed."""

    @abstractmethod
    def get_num_waiting(self) -> int:
        """Requests admitted and not yet scheduled."""

    def has_waiting(self) -> bool:
        return self.get_num_waiting() > 0
