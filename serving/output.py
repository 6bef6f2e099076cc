"""What a scheduling step decides, as plain dataclasses (no tensors), after vLLM v1's
`vllm/v1/core/sched/output.py`: the executor reads a `SchedulerOutput`, runs its batch, and
reports the observed time back to the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScheduledBatch:
    """One forward pass to run: a subnet and the requests batched into it."""

    subnet: int  # subnet id to run
    request_ids: tuple[int, ...]  # requests in the batch, in queue order
    predicted_ms: float  # the scheduler's (corrected) latency prediction for this batch
    start: float  # scheduler clock (seconds) when it was dispatched
    policy: str  # name of the policy that chose it

    @property
    def size(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class ShedRequest:
    """A queued request the scheduler gave up on; the runtime fails it with `Overloaded`."""

    request_id: int
    reason: str  # "deadline" | "evicted" | "closed" | "timeout" | "error"
    detail: str = ""  # human-readable explanation for the error message

    def message(self) -> str:
        """The `Overloaded` error's text: the reason, then the detail, so that a client that
        only sees the error can still tell a missed deadline from an eviction."""
        return f"request {self.request_id} shed ({self.reason})" + (f": {self.detail}" if self.detail else "")


@dataclass
class SchedulerOutput:
    """Result of one `schedule()` call: at most one batch, and the requests shed on the way;
    with no batch, `wait_until` (scheduler clock, seconds) asks the engine to hold a partial
    batch back until then, or until a new request arrives, to fill it."""

    batch: ScheduledBatch | None = None
    shed: list[ShedRequest] = field(default_factory=list)
    wait_until: float | None = None
