"""`BatchHold`: holding a partial batch back for more arrivals (`batch_wait_ms`).

A batch that could take more members may wait for them when every member keeps its
deadline with the fuller batch's service time, for at most `batch_wait_ms` since its oldest
member arrived, only when requests arrive faster than that, and only while holds do bring
more requests (a client that waits for each answer before sending the next would only be
delayed). A hold ends early enough for a worker that wakes late: by the latest lateness of
the last 32 holds.

A mixin of `BudgetScheduler`: it keeps its own state (`_init_holds`), is told of every
admitted arrival (`_arrived`) and asked by `schedule` (`_hold`, `_hold_ended`). Pure Python.
"""

from __future__ import annotations

from collections import deque


class BatchHold:
    """When to hold a partial batch back to fill it (a mixin: see the module docstring)."""

    def _init_holds(self) -> None:
        self._gap_s: float | None = None  # EWMA of the time between arrivals (fast: for holds)
        self._last_arrival: float | None = None
        self._arrivals = 0
        self._wait_useful = 1.0  # EWMA: did holding a batch back bring another request?
        self._waiting_for: int | None = None  # arrivals counted when the last hold began
        self._held_until: float | None = None  # when the last hold was to end
        self._wake_late: deque[float] = deque(maxlen=32)  # how late recent holds ended (s)
        self._since_hold = 0  # decisions since the last hold (to probe again now and then)

    def _arrived(self, now: float) -> None:
        """An admitted request arrived at `now`: the arrival gap, and the count a hold waits on."""
        if self._last_arrival is not None:
            gap = max(0.0, now - self._last_arrival)
            self._gap_s = gap if self._gap_s is None else self._gap_s + 0.2 * (gap - self._gap_s)
        self._last_arrival = now
        self._arrivals += 1

    def _hold_ended(self, now: float) -> None:
        """The last hold ended at `now` (a `schedule` call): did it bring anyone, and how
        late did the worker wake?"""
        useful = float(self._arrivals > self._waiting_for)
        self._wait_useful += 0.2 * (useful - self._wait_useful)
        self._waiting_for = None
        if now > self._held_until:  # it ran to its end (an arrival did not end it early)
            self._wake_late.append(now - self._held_until)

    def _hold(self, now: float, subnet: int, size: int, predicted_ms: float) -> float | None:
        """Hold the partial batch (`size` requests on `subnet`) until the time returned, or
        None to run it now (`_fill_wait_until`)."""
        until = self._fill_wait_until(now, subnet, size, predicted_ms)
        if until is not None:
            self._waiting_for = self._arrivals
            self._held_until = until
            self._since_hold = 0
        return until

    def _fill_wait_until(self, now: float, subnet: int, size: int, predicted_ms: float) -> float | None:
        """Until when to hold a partial batch back for more arrivals, or None to run now.

        Only while every member keeps its deadline with the batch's predicted service time;
        for at most `batch_wait_ms` since the oldest member arrived; only when requests
        arrive faster than that (on average, or one arrived within the last half of it);
        and only while holds do bring more requests (a client that waits for each answer
        before sending the next would only be delayed).

        The hold ends early enough for a worker that wakes late: by the latest of the last
        32 holds' observed lateness (a timed wait returns when the thread gets the CPU and
        the interpreter lock back, not at its timeout)."""
        recent = self._last_arrival is not None and (now - self._last_arrival) * 2e3 < self.batch_wait_ms
        if not recent and (self._gap_s is None or self._gap_s * 1e3 >= self.batch_wait_ms):
            return None  # nobody arrived just now, and arrivals are not that frequent
        self._since_hold += 1
        if self._wait_useful < 0.5 and self._since_hold < 64:  # holds bring nobody (a closed
            return None  # loop of single requests): stop holding, probe again every 64 batches
        oldest = min(r.arrival for r in self._reqs[:size])
        latest_start = min(self._hard[:size]) - predicted_ms / 1e3
        # a fuller batch takes longer: keep the margin of one more request's service
        latest_start -= (self.predict_ms(subnet, size + 1) - predicted_ms) / 1e3
        if self._wake_late:
            latest_start -= max(self._wake_late)
        until = min(oldest + self.batch_wait_ms / 1e3, latest_start)
        return until if until > now else None
