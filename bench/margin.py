"""margin: the planning quantile held fixed against following the SLO, simulated on the load suite's calibration.

Every batch is planned at a quantile of the forwards' recent spread (`LatencyPredictor`).
By default that quantile follows the share of admitted requests that end late, aiming at
half of what `slo_target` (0.99) allows (`TailQuantile`, serving/slo_margin.py); with
`slo_target=None` it stays at 0.95, the value it starts from. This suite measures what the
feedback buys: `elastic` both ways, at loads around the middle range, on the same seeds.

It reads the load suite's results (`<out>/load.json`), each scenario's calibration, and
simulates (`bench/simulate.py`: the real scheduler on a virtual clock, forwards drawn around
the profile, batches pausing at the model's block boundaries as the runtime's do by default)
runs of `REQUESTS` requests: the feedback needs thousands of endings to see
a late share of half a percent, so the runs are longer than the load suite's. Reported per
point: the expected effective accuracy (mean and 95 % interval over seeds), the share of
admitted requests answered within budget, the rejected share, the planning quantile at
the end of the run, and the paired difference of effective accuracy against the fixed
quantile. Simulated only: no real forwards.
"""

from __future__ import annotations

import argparse
import logging

from elastic.serving.predictor import TAIL_QUANTILE

from . import policy_variants
from .pricing import stage_fractions

log = logging.getLogger(__name__)
LOADS = {"poisson": (1.5, 2.0, 3.0), "on_off": (1.5,)}
CONTENDERS = {"fixed quantile": None, "SLO feedback (0.99)": 0.99}  # name -> slo_target
REQUESTS = 8000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 1500  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate
FINAL = ("final_quantile", "final quantile (per seed)")  # read off each run's scheduler at its end


def run(args: argparse.Namespace) -> dict:
    return policy_variants.variant_suite(
        args,
        "margin",
        {name: {"slo_target": slo} for name, slo in CONTENDERS.items()},
        LOADS,
        seeds=(3, 2),
        requests=(REQUESTS, QUICK_REQUESTS),
        min_seconds=MIN_SECONDS,
        stages=stage_fractions,
        diff_key="minus_fixed",
        diff_label="− fixed (points, 95 % CI)",
        note=lambda load, requests: (
            f"Simulated on the calibration of the load suite's run of commit {load['commit']} ({load['date']}), "
            f"runs of about {requests} requests, batches pausing at block boundaries: expected effective accuracy "
            "(mean ± 95 % t-interval over seeds), admitted requests answered within budget, rejected share, the "
            "planning quantile at the end of each "
            f"run (both start at {TAIL_QUANTILE}), and the paired difference against the fixed quantile, in points."
        ),
        extra={"contenders": CONTENDERS, "start_quantile": TAIL_QUANTILE},
        at_end=(*FINAL, lambda sched: sched.latency.forward.tail_quantile),
    )
