"""What a simulation of a load-suite scenario reads from that run's calibration.

The suites that replay a real run's scenario on a virtual clock (`pricing`, `margin`, `ride_along`)
rebuild the same pieces from its `load.json` entry: the profile (medians and p99s), the
runtime's fitted per-request / per-batch cost, the budget range, and a subnet table with
the accuracies the scenario judges by.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic.errors import ConfigError
from elastic.serving.profile import LatencyProfile
from elastic.subnet import Subnet

from .arrivals import BudgetDistribution
from .simulate import ServiceModel


def read_load_run(args: argparse.Namespace) -> tuple[Path, dict[str, Any], list[str]]:
    """The load run under `--out` (`<out>/load.json`), and the names of the scenarios the
    command asks for (`--scenario`, default all): (file, its contents, names).

    Raises:
        ConfigError: no load run there.
    """
    source = Path(args.out) / "load.json"
    if not source.is_file():
        raise ConfigError(f"{source} does not exist: run `elastic bench load --out {args.out}` first")
    load = json.loads(source.read_text())
    only = getattr(args, "scenario", None) or "all"
    return source, load, [n for n in load["scenarios"] if only in ("all", n)]


@dataclass
class CalibratedScenario:
    """One scenario's simulation inputs (`from_calibration`)."""

    calibration: dict[str, Any]
    subnets: list[Subnet]  # every profiled subnet with an accuracy: the front and both anchors at least
    accuracy: dict[int, float]  # id -> accuracy, of `subnets`
    service: ServiceModel
    budgets: BudgetDistribution


def from_calibration(sc: dict[str, Any], accuracy: dict[int, float]) -> CalibratedScenario:
    """The simulation inputs of one scenario of a load run (`load.json["scenarios"][name]`),
    judged with `accuracy` (id -> top-1, `headroom.accuracy_of`)."""
    calib = sc["calibration"]
    p50 = {int(s): row for s, row in calib["profile_p50_ms"].items()}
    p99 = {int(s): row for s, row in calib["profile_p99_ms"].items()}
    profile = LatencyProfile.from_table(p50, p99)
    over = calib["overhead_ms"]
    known = [s for s in profile.subnet_ids if s in accuracy]
    subnets = [Subnet(s, "stitch", f"s{s}", flops=1, params=1, accuracy=accuracy[s]) for s in known]
    return CalibratedScenario(
        calibration=calib,
        subnets=subnets,
        accuracy={s.id: s.accuracy for s in subnets},
        service=ServiceModel(profile, over["per_request"], over["per_batch"]),
        budgets=BudgetDistribution(*calib["budget_bounds_ms"]),
    )
