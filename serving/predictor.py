"""`LatencyPredictor`: the profile, corrected online from observed latencies.

A profile is measured once; the machine then drifts (other tenants, clocks, thermal state,
the threads that submit requests). Clockwork (OSDI'20) keeps per-model latency estimates
updated from every execution; INFaaS (ATC'21) re-profiles variants whose observed latency
departs from the profile. Here one exponentially weighted moving average (EWMA) of

    ratio = observed ms / profiled median ms   (at the subnet and batch size that ran)

over every batch, the machine factor (`shared`), scales every subnet's profile: the
prediction is `profiled <quantile> ms × machine factor`. Scaling the chosen quantile (p99
by default) by a ratio taken against the median keeps the profile's tail margin while the
level follows the machine.

Why one factor for all subnets, not one per subnet: what moves a forward's time on a
shared CPU moves every subnet alike (on the development machine the demo's subnets ran
1.5–2.3× their profile while requests arrived, at every load), and a subnet's own offset
from its profile cannot be told apart from the machine's state in serving data. A
load-following policy runs its fast subnets in busy spells and its accurate ones in quiet
ones, so per-subnet averages learn the spells as costs: the fast subnet looks slow, is
passed over for a less accurate one that only looks faster, and is not run again to
correct it. Where subnets cost nearly the same (the demo's five fastest candidates lie
within 10 % of each other at batch 1) that noise alone reorders them. A per-subnet factor
on top of the machine's (a slow EWMA of each subnet's ratio over it) would drift the same
way wherever the spells follow the subnet: within one spell the two factors are
indistinguishable. So the profile, measured with every subnet under the same conditions,
fixes the subnets' relative costs, and the machine factor their level; what a subnet
deviates from that is in the residuals, and so in the measured tail below.

A profile's p99 of a few repeats is a noisy tail, and the serving machine's spread is not
the profiling run's. So once `TAIL_MIN` batches have run (planning quantile "p99"), the
prediction becomes `profiled median × ratio × tail`, where `tail` is a high quantile
(`tail_quantile`, 0.95 to start) of the recent residuals observed / (profiled median ×
ratio): the margin the machine really needs, measured while serving, the same for every
subnet (so it never reorders them). The scheduler moves the quantile itself to keep the
share of admitted requests that end late on its SLO target (serving/slo_margin.py).
Until then the profiled quantile is capped at `COLD_TAIL_CAP` medians: one outlier in the
profiling run must not make a subnet look unusable, or nothing is ever admitted to correct it.

Two machine states, two factors. A forward that runs while requests arrive shares the
interpreter lock with the threads that submit them, and on a small CPU it runs 2–3× as
long as the same forward run alone (the demo in an on/off burst: 5–7 ms for batches the
profile times at 2–3 ms). One factor averaged over both states was wrong at each switch:
after a quiet spell it had decayed (or been forgotten, below), so the first batches of
the next burst were planned at profile speed, the requests admitted meanwhile ran 2–3×
later than planned, and most of the late and shed requests were those admitted then.
So the factor is kept per state (`loaded`: requests are arriving), the scheduler says
which state the engine is in now (`set_loaded`: the last two arrivals came within the
fastest forward of each other and of now), and each observation corrects the factor of
the state its batch was planned in: the first requests of a burst are planned with what
the last burst measured. A state with no evidence yet follows the other.

Evidence that is not renewed is dropped (`forget`, called by the scheduler): a correction
and a tail learned in a burst can put every subnet past every budget. Then nothing is
admitted, nothing runs, and no observation ever corrects it, long after the burst. The
scheduler forgets when it is about to refuse a request that an idle engine cannot serve,
on a correction no forward has renewed for a while (`BudgetScheduler.stale_s`): the tail
and the factor of the state the engine is in. Such a request usually arrives alone, in the
quiet state, and the loaded factor stays for the next burst (its first request always
runs, alone and quiet, and the forward it shares with the burst's next arrivals corrects
it). But only a batch planned while requests arrive renews the loaded factor: a burst
whose every request it puts past its budget runs no such batch, so a stale loaded factor
is what that burst's refused requests forget, or every burst after it would be refused too.
"""

from __future__ import annotations

from collections import deque

from .profile import LatencyProfile

TAIL_WINDOW = 256  # residuals kept for the tail estimate
TAIL_MIN = 32  # observations before the measured tail replaces the profile's quantile
TAIL_EVERY = 8  # re-estimate the tail every this many observations
TAIL_QUANTILE = 0.95  # planning quantile of observed / expected-median forward time (the start, with an SLO target)
TAIL_CLAMP = (1.0, 5.0)
COLD_TAIL_CAP = 3.0  # until then, the profiled quantile is capped at this many medians


class LatencyPredictor:
    """Predicted latency per (subnet, batch size), corrected online.

    Args:
        profile: the measured table.
        quantile: "p99" (plan for the tail, default) or "p50".
        alpha: EWMA weight of a new observation.
        clamp: bounds on each observation's ratio, so one outlier cannot make the model
            look free or unusable for long.
    """

    def __init__(
        self,
        profile: LatencyProfile,
        quantile: str = "p99",
        alpha: float = 0.2,
        clamp: tuple[float, float] = (0.2, 5.0),
    ):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        profile.latency_ms(profile.subnet_ids[0], 1, quantile)  # validates the quantile
        self.profile = profile
        self.quantile = quantile
        self.alpha = alpha
        self.clamp = clamp
        self.shared = 1.0  # the machine factor of the current state (`set_loaded`); 1.0 before any
        self.loaded = False  # the state predictions are for: requests arriving while forwards run
        self._factors = [1.0, 1.0]  # the machine factor per state: [quiet, loaded]
        self._known = [False, False]  # per state: observed (or forgotten) yet? Else it follows the other
        self._rows: dict[int, list[float]] = {}  # subnet -> profiled ms by batch size (index)
        self._medians: dict[int, list[float]] = {}  # subnet -> profiled median ms by batch size
        self._planned: dict[int, list[float]] = {}  # subnet -> the ms the ratio scales, by batch size
        self._residuals: deque[float] = deque(maxlen=TAIL_WINDOW)  # observed / expected median
        self._seen = 0
        self.tail: float | None = None  # online tail factor once TAIL_MIN observations are in
        self.tail_quantile = TAIL_QUANTILE  # which quantile of the residuals `tail` is (the scheduler may move it)

    def forget(self) -> None:
        """Drop what the current state learned online, and the tail: predict its forwards
        from the profile again, as when new. The other state's factor stays (module docstring)."""
        state = self.loaded
        self._factors[state] = 1.0
        self._known[state] = True  # the profile, on purpose: not the other state's factor
        self.shared = 1.0
        self.tail = None
        self._residuals.clear()
        self._seen = 0
        self._planned.clear()

    @property
    def corrected(self) -> bool:
        """Whether observations have moved the predictions off the profile's."""
        return self.shared != 1.0 or self.tail is not None

    def set_loaded(self, loaded: bool) -> bool:
        """Predict for forwards that run while requests arrive (`loaded`) or alone; returns
        whether the predictions changed (the caller's cached ones are stale then)."""
        if loaded is self.loaded:
            return False
        self.loaded = loaded
        before, self.shared = self.shared, self._factors[loaded]
        return self.shared != before

    def correction(self, subnet: int) -> float:
        """The current observed / profiled ratio used for `subnet`: the machine factor of the
        current state, the same for every subnet (1.0 before any data)."""
        return self.shared

    def _row(self, table: dict[int, list[float]], subnet: int, batch: int, quantile: str) -> list[float]:
        row = table.get(subnet)
        if row is None or batch >= len(row):
            row = table[subnet] = [0.0] + [
                self.profile.latency_ms(subnet, b, quantile) for b in range(1, max(batch, 16) + 1)
            ]
        return row

    def predict_ms(self, subnet: int, batch: int) -> float:
        """Corrected latency prediction for one forward of `subnet` on `batch` samples.

        A table lookup and one or two products: the uncorrected row per subnet is built
        once (until the measured tail replaces the profile's quantile), and `observe` only
        moves the machine factor, so admission and scheduling, which ask for the same few
        entries many times per batch, pay no invalidation.
        """
        row = self._planned.get(subnet)
        if row is None or batch >= len(row):
            row = self._plan_row(subnet, batch)
        ms = row[batch] * self.shared
        tail = self.tail
        return ms * tail if tail is not None else ms

    def predict_in(self, subnet: int, batch: int, loaded: bool) -> float:
        """`predict_ms` in the state `loaded` (`set_loaded`), whichever state is current: a
        batch planned in one state and ended in the other is judged against its plan."""
        ms = self.planned_ms(subnet, batch) * self._factors[loaded]
        tail = self.tail
        return ms * tail if tail is not None else ms

    def planned_ms(self, subnet: int, batch: int) -> float:
        """The uncorrected prediction `predict_ms` scales: `predict_ms(subnet, batch)` is
        exactly `planned_ms(subnet, batch) * shared` (`* tail` once it is measured). It
        changes only when the measured tail replaces the profile's quantile."""
        row = self._planned.get(subnet)
        if row is None or batch >= len(row):
            row = self._plan_row(subnet, batch)
        return row[batch]

    def predict_row(self, subnet: int, batches: int) -> list[float]:
        """`predict_ms(subnet, b)` for b = 0 .. `batches` ([0] is 0), a whole row at once."""
        row = self._planned.get(subnet)
        if row is None or batches >= len(row):
            row = self._plan_row(subnet, batches)
        shared, tail = self.shared, self.tail
        if tail is None:
            return [ms * shared for ms in row[: batches + 1]]
        return [ms * shared * tail for ms in row[: batches + 1]]

    def _plan_row(self, subnet: int, batch: int) -> list[float]:
        """The uncorrected prediction by batch size: the profiled median once the measured
        tail scales it, else the planning quantile (a profiled p99 of a few repeats can hold
        one huge outlier: capped at `COLD_TAIL_CAP` medians)."""
        medians = self._row(self._medians, subnet, batch, "p50")
        if self.tail is not None or self.quantile == "p50":
            row = medians
        else:
            planned = self._row(self._rows, subnet, batch, self.quantile)
            row = [min(p, COLD_TAIL_CAP * m) for p, m in zip(planned, medians, strict=False)]
        self._planned[subnet] = row
        return row

    def observe(self, subnet: int, batch: int, observed_ms: float, loaded: bool | None = None) -> None:
        """Fold one observed forward time into the machine factor of its state (`loaded`: the
        state its batch was planned in; None: the current one), and its residual (observed /
        expected median) into the tail estimate."""
        base = self._row(self._medians, subnet, batch, "p50")[batch]
        if base <= 0 or observed_ms < 0:
            return
        lo, hi = self.clamp
        state = self.loaded if loaded is None else bool(loaded)
        factors = self._factors
        prev = factors[state]
        self._residuals.append(observed_ms / (base * prev))
        self._seen += 1
        if self.quantile != "p50" and self._seen >= TAIL_MIN and self._seen % TAIL_EVERY == 0:
            ordered = sorted(self._residuals)
            q = ordered[min(len(ordered) - 1, int(self.tail_quantile * len(ordered)))]
            if self.tail is None:
                self._planned.clear()  # from now on the ratio scales the median
            self.tail = min(TAIL_CLAMP[1], max(TAIL_CLAMP[0], q))
        ratio = min(hi, max(lo, observed_ms / base))
        factors[state] = prev + self.alpha * (ratio - prev)
        known = self._known
        known[state] = True
        if not known[not state]:  # no evidence of the other state yet: this machine is all there is
            factors[not state] = factors[state]
        self.shared = factors[self.loaded]
