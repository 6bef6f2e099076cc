"""What a request is to the scheduler (`Request`) and what the caller gets back (`Result`).

Pure Python: the scheduler never sees tensors, only deadlines, accuracy floors and
priorities — the split of Clockwork (OSDI'20), whose controller plans over request metadata
while workers hold the data, and of vLLM v1's scheduler, which plans over request ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as the scheduler sees it (times in seconds, scheduler clock)."""

    id: int  # unique per runtime, increasing in arrival order
    arrival: float  # when it was submitted
    budget_ms: float  # latency budget, end to end; may be math.inf
    min_accuracy: float | None = None  # serve only with subnets at least this accurate
    priority: int = 0  # higher goes first among equal deadlines and is shed last
    best_effort: bool = False  # run even when the budget cannot be met (result marked late)

    @property
    def deadline(self) -> float:
        return self.arrival + self.budget_ms / 1e3 if math.isfinite(self.budget_ms) else math.inf

    def order_key(self) -> tuple[int, float, int]:
        """Queue order: priority (higher first), then earliest deadline, then arrival."""
        return (-self.priority, self.deadline, self.id)


@dataclass(slots=True)
class Result:
    """The answer to one request.

    Shape:
        output: (num_classes,) for a (C, H, W) input, (1, num_classes) for (1, C, H, W)
    """

    output: Any  # torch.Tensor: logits of the chosen subnet, on the CPU
    subnet: int  # id of the subnet that ran
    queue_ms: float  # submit -> start of its batch's forward
    exec_ms: float  # the batch's forward (and copy back to the CPU)
    latency_ms: float  # submit -> result ready
    met_budget: bool  # latency_ms <= the request's budget
    batch_size: int = 1  # requests in the batch it ran in
    request_id: int = -1  # the runtime's id of the request
