"""refit: how often the latency model folds what the forwards teach it, simulated on the load suite's calibration.

The scheduler keeps what every batch teaches its latency model (forward time, the engine's
overhead, late requests) and folds it together once the oldest is `refit_ms` old
(serving/refit.py): the runtime adds less to a request the less often it folds (the
"refit_ms" table of `elastic bench overhead`), and plans with a model up to `refit_ms` old.
This suite measures what that lag costs: `elastic` folding after every batch
(`refit_ms=0`), every 5 ms (the default before 20) and at the default, on the same seeds.

It reads the load suite's results (`<out>/load.json`), each scenario's calibration, and
simulates (`bench/simulate.py`: the real scheduler on a virtual clock, forwards drawn around
the profile, batches pausing at the model's block boundaries as the runtime's do by default,
refits grouped as the runtime groups them) runs of `REQUESTS` requests. Reported per point:
the expected effective accuracy (mean and 95 % interval over seeds), the share of admitted
requests answered within budget, the rejected share, and the paired difference of
effective accuracy against per-batch folding. Simulated only: no real forwards, so the
cost of a fold itself is not in it (the overhead suite measures that).
"""

from __future__ import annotations

import argparse
import logging

from elastic.serving.refit import REFIT_MS

from . import policy_variants
from .pricing import stage_fractions

log = logging.getLogger(__name__)
LOADS = {"poisson": (0.5, 1.5, 2.0, 3.0), "on_off": (0.5, 1.5)}
SETTINGS = tuple(dict.fromkeys((0.0, 5.0, REFIT_MS)))  # ms; the first is the base
REQUESTS = 3000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 1000  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate


def name_of(ms: float) -> str:
    return f"refit_ms={ms:g}" + (" (default)" if ms == REFIT_MS else "")


def run(args: argparse.Namespace) -> dict:
    return policy_variants.variant_suite(
        args,
        "refit",
        {name_of(ms): {"refit_ms": ms} for ms in SETTINGS},
        LOADS,
        seeds=(3, 2),
        requests=(REQUESTS, QUICK_REQUESTS),
        min_seconds=MIN_SECONDS,
        stages=stage_fractions,
        diff_key="minus_per_batch",
        diff_label="− per batch (points, 95 % CI)",
        note=lambda load, requests: (
            f"Simulated on the calibration of the load suite's run of commit {load['commit']} ({load['date']}), "
            f"runs of about {requests} requests, batches pausing at block boundaries, the latency model folded "
            "after every batch (refit_ms=0) or in groups: expected effective accuracy (mean ± 95 % t-interval over "
            "seeds), admitted requests answered within budget, rejected share, and the paired difference against "
            "per-batch folding, in points."
        ),
        extra={"settings_ms": list(SETTINGS), "default_ms": REFIT_MS},
    )
