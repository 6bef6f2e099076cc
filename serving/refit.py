"""Grouped refits of the latency model: what the forwards teach it, folded every `refit_ms`.

Every finished batch teaches the scheduler's latency model three things: its forward time
(the online correction, `LatencyPredictor.observe`), the engine's own time around it
(`OverheadModel.observe`), and how many of its requests ended late (`TailQuantile`). Each
fold is cheap on warm caches, but on a small model on a CPU the forward between two
batches evicts the code and data a fold touches, and the cached predictions it invalidates
must be rebuilt. In an interleaved A/B on the demo model (`elastic bench overhead`, its
"refit_ms" rows) the runtime added less per batch-1 request when it folded every 20 ms than
every 5, and less at 5 than after every batch.

So the scheduler keeps the observations, in the order they came, and folds them together
(`refit`) once the oldest is `refit_ms` old — at the end of a batch or at the next
admission, whichever comes first — and rebuilds the cached predictions right there, while
the fold's data is warm, rather than at the next decision. The fold is the same arithmetic
in the same order as one at a time: after a refit the model is exactly the model
per-batch folding would have made; in between, admission and scheduling plan with a model
that lacks at most the last `refit_ms` of forwards. A batch that surprises the model
refits at once: a forward more than `SURPRISE`× off its prediction either way, or a
request that ended late. So does a forward of `refit_ms` or more (DeiT on this CPU): it is
a group of its own, and a fold is microseconds against it, so the decisions after it plan
with it. `refit_ms=0` folds after every batch.

A mixin of `BudgetScheduler` (serving/scheduler.py), over its latency model, overhead
model, tail control and cached fronts.
"""

from __future__ import annotations

import math

from elastic.errors import ConfigError

REFIT_MS = 20.0  # the runtime's default: the model lags the forwards by at most this much
SURPRISE = 2.0  # a forward this many times off its prediction (either way) refits at once

# what an observation is, as the first item of its tuple
_FORWARD, _OVERHEAD, _OUTCOMES = 0, 1, 2


def check_refit_ms(value: object) -> float:
    """`value` as a number of ms >= 0, or `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"refit_ms must be a finite number >= 0, got {value!r}")
    return float(value)


class GroupedRefit:
    """`refit` and the bookkeeping of unfolded observations (see the module docstring)."""

    def _init_refit(self, refit_ms: float) -> None:
        self.refit_ms = check_refit_ms(refit_ms)
        self._refit_s = self.refit_ms / 1e3
        self._unfit: list[tuple] = []  # observations not folded yet, oldest first
        self._unfit_since: float | None = None  # when the oldest of them was made

    def refit(self) -> None:
        """Fold every observation kept so far into the latency model, oldest first."""
        unfit = self._unfit
        if not unfit:
            return
        self._unfit, self._unfit_since = [], None
        forward, overhead, control = self.latency.forward, self.overhead, self.tail_control
        for item in unfit:
            kind = item[0]
            if kind == _FORWARD:
                forward.observe(item[1], item[2], item[3], item[4])
            elif kind == _OVERHEAD:
                overhead.observe(item[1], item[2], item[3])
            elif control is not None:
                forward.tail_quantile = control.observe(item[1], item[2])
        self._fast_any = None
        self._refresh_fronts()
        self.fastest_at()  # rebuilt now, on warm data: the next decision finds it ready

    def _refit_due(self, now: float) -> bool:
        """Is the oldest unfolded observation `refit_ms` old at `now`?"""
        since = self._unfit_since
        return since is not None and now - since >= self._refit_s

    def _keep_forward(self, subnet: int, size: int, exec_ms: float, loaded: bool, surprise: bool, now: float) -> None:
        """A batch's forward took `exec_ms`, ending at `now` (`LatencyPredictor.observe`);
        `surprise`: far off its prediction. A forward of `refit_ms` or more folds at once."""
        self._keep((_FORWARD, subnet, size, exec_ms, loaded), surprise or exec_ms >= self.refit_ms, now)

    def _keep_overhead(self, size: int, overhead_ms: float, wake_ms: float) -> None:
        """The engine's own time around a batch (`OverheadModel.observe`)."""
        self._keep((_OVERHEAD, size, overhead_ms, wake_ms), False)

    def _keep_outcomes(self, late: int, total: int) -> None:
        """`late` of `total` admitted requests ended late (`TailQuantile.observe`): any
        late one folds at once."""
        self._keep((_OUTCOMES, late, total), late > 0)

    def _keep(self, item: tuple, surprise: bool, now: float | None = None) -> None:
        """Keep one observation (made at `now`; None: with the last forward's); fold
        everything kept at once on a surprise, when folding after every batch, or when the
        oldest is due at `now`."""
        self._unfit.append(item)
        if self._unfit_since is None:
            self._unfit_since = now if now is not None else self._observed_at
        if surprise or self._refit_s == 0.0 or self._unfit_since is None or (now is not None and self._refit_due(now)):
            self.refit()
