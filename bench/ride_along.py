"""ride_along: a loose request left for a later batch, credited or not, simulated on the load suite's calibration.

A batch is a prefix of the queue in deadline order, so a loose-budget request queued behind
a tight one rides in the tight one's batch, on the fast subnet the tight deadline allows,
unless the policy leaves it for a later batch on an accurate subnet. `ElasticPolicy` credits
a request left behind with the most accurate subnet it can still get, capped by the worker's
capacity at the recent arrival rate (`later_utilisation`, default 0.8; docs/serving.md,
"Batching"). This suite measures what the credit buys: `elastic` without it
(`later_utilisation=0`, the rest valued at the fastest subnet's accuracy, as before), with it
capped at 0.6 and at the default, and uncapped (any subnet the deadline allows), on the
same seeds.

It reads the load suite's results (`<out>/load.json`), each scenario's calibration, and
simulates (`bench/simulate.py`) runs of `REQUESTS` requests, batches pausing at block
boundaries as the runtime's do. Reported per point: the expected effective accuracy (mean
and 95 % interval over seeds), the share of admitted requests answered within budget, the
rejected share, and the paired difference of expected accuracy against no credit.
Simulated only: no real forwards.
"""

from __future__ import annotations

import argparse
import logging
import math

from elastic.serving.elastic_policy import LATER_UTILISATION, ElasticPolicy

from . import policy_variants
from .pricing import stage_fractions

log = logging.getLogger(__name__)
LOADS = {"poisson": (0.5, 1.0, 1.5, 2.0, 3.0), "on_off": (0.5, 1.0, 1.5, 2.0)}
BASE = "no credit"
CONTENDERS = {  # name -> later_utilisation
    BASE: 0.0,
    "credit, capped (0.6)": 0.6,
    f"credit, capped ({LATER_UTILISATION:g}, the default)": LATER_UTILISATION,
    "credit, uncapped": math.inf,
}
REQUESTS = 3000  # per simulated run, about (the duration follows from the rate)
QUICK_REQUESTS = 800  # with --quick
MIN_SECONDS = 10.0  # shortest simulated run: ten on/off periods, whatever the rate


def run(args: argparse.Namespace) -> dict:
    return policy_variants.variant_suite(
        args,
        "ride_along",
        {name: {"policy": ElasticPolicy(later_utilisation=u)} for name, u in CONTENDERS.items()},
        LOADS,
        seeds=(4, 2),
        requests=(REQUESTS, QUICK_REQUESTS),
        min_seconds=MIN_SECONDS,
        stages=stage_fractions,
        diff_key="minus_no_credit",
        diff_label="− no credit (points, 95 % CI)",
        note=lambda load, requests: (
            f"Simulated on the calibration of the load suite's run of commit {load['commit']} ({load['date']}), "
            f"runs of about {requests} requests, batches pausing at block boundaries: expected effective accuracy "
            "(mean ± 95 % t-interval over seeds), admitted requests answered within budget, rejected share, and the "
            "paired difference against no credit for a request left for a later batch, in points."
        ),
        extra={"contenders": {name: str(u) for name, u in CONTENDERS.items()}},
    )
