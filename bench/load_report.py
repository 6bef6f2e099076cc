"""What the load suite reports: per (pattern, load) every contender's mean and 95 % interval,
the oracle best static and elastic's targets (`summarize`, `target_summary`), the markdown
tables (`tables`) and the plot (`plot`). The runs themselves are `bench/load.py`'s.

Targets (issue 9), per point for `elastic`: effective accuracy not below the oracle (the
upper end of the paired difference's interval >= 0); in the middle range at least
`TARGET_DELTA` above it (mean difference); >= `TARGET_ADMITTED` of admitted requests within
budget; sheds after admission <= `TARGET_SHED` of admitted (both pooled over seeds).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .harness import markdown_table
from .stats import mean_interval, paired_difference

if TYPE_CHECKING:
    from .load_calibration import Calibration

METRICS = (
    "effective_accuracy",
    "slo_attainment",
    "admitted_slo_attainment",
    "rejected_share",
    "shed_share",
    "p50_ms",
    "p99_ms",
    "mean_batch_size",
)
TARGET_DELTA = 0.05  # elastic's margin over the oracle in the middle range (5 points)
# `elastic` with the planning quantile held at its start (`Runtime(slo_target=None)`): what
# following the SLO buys, measured interleaved on the same seeds
FIXED_MARGIN = "elastic-fixed-margin"
TARGET_ADMITTED = 0.99  # share of admitted requests answered within budget
TARGET_SHED = 0.01  # sheds after admission, as a share of admitted requests


def summarize(runs: list[dict[str, Any]], calib: Calibration) -> list[dict[str, Any]]:
    """Per (pattern, load): every contender's intervals, the oracle, and elastic's targets."""
    points = []
    keys = list(dict.fromkeys((r["pattern"], r["load"]) for r in runs))
    for pattern, load in keys:
        here = [r for r in runs if r["pattern"] == pattern and r["load"] == load]
        by_policy: dict[str, list[dict]] = {}
        for r in sorted(here, key=lambda r: r["repeat"]):
            by_policy.setdefault(r["policy"], []).append(r)
        contenders = {}
        for policy in sorted(by_policy, key=lambda p: _display_rank(p, calib)):
            rs = by_policy[policy]
            entry = {"contender": rs[0]["contender"], "seeds": len(rs)}
            for m in METRICS:
                values = [r[m] for r in rs if r[m] is not None]
                entry[m] = mean_interval(values).to_dict() if values else None
            entry["requests"] = sum(r["requests"] for r in rs)
            entry["admitted"] = sum(r["admitted"] for r in rs)
            entry["shed"] = sum(r["shed"] for r in rs)
            entry["rejected"] = sum(r["rejected"] for r in rs)
            entry["late"] = sum(r["late"] for r in rs)
            lags = [r["submit_lag_ms"]["p50"] for r in rs if r.get("submit_lag_ms")]
            entry["submit_lag_ms_p50_worst"] = max(lags) if lags else None  # real runs: driver behind schedule
            contenders[policy] = entry
        statics = [p for p in by_policy if p.startswith("static:")]
        oracle = max(statics, key=lambda p: contenders[p]["effective_accuracy"]["mean"])
        elastic_runs, oracle_runs = by_policy["elastic"], by_policy[oracle]
        diff = paired_difference(
            [r["effective_accuracy"] for r in elastic_runs], [r["effective_accuracy"] for r in oracle_runs]
        )
        fixed_margin = by_policy.get(FIXED_MARGIN)
        vs_fixed = (
            paired_difference(
                [r["effective_accuracy"] for r in elastic_runs], [r["effective_accuracy"] for r in fixed_margin]
            ).to_dict()
            if fixed_margin
            else None
        )
        admitted = sum(r["admitted"] for r in elastic_runs)
        on_time = sum(r["answered"] - r["late"] for r in elastic_runs)
        shed = sum(r["shed"] for r in elastic_runs)
        middle = calib.in_middle(load)
        targets = {
            "not_below_oracle": {"value": diff.hi, "pass": bool(diff.hi >= 0)},
            "five_points_above_oracle": (
                {"value": diff.mean, "pass": bool(diff.mean >= TARGET_DELTA)} if middle else None
            ),
            "admitted_within_budget": {
                "value": on_time / admitted if admitted else None,
                "pass": bool(admitted and on_time / admitted >= TARGET_ADMITTED),
            },
            "shed_after_admission": {
                "value": shed / admitted if admitted else 0.0,
                "pass": bool((shed / admitted if admitted else 0.0) <= TARGET_SHED),
            },
        }
        points.append(
            {
                "pattern": pattern,
                "load": load,
                "rate_per_s": load * calib.capacity_per_s,
                "middle_range": middle,
                "statics_run": [int(p.split(":")[1]) for p in statics],
                "oracle": {"policy": oracle, "subnet": int(oracle.split(":")[1])},
                "elastic_minus_oracle": diff.to_dict(),
                "elastic_minus_fixed_margin": vs_fixed,
                "contenders": contenders,
                "targets": targets,
            }
        )
    return points


def _display_rank(policy: str, calib: Calibration) -> tuple[int, float]:
    """Table order: elastic, elastic with a fixed margin, slackfit, infaas, then statics fastest first."""
    fixed = {"elastic": 0, FIXED_MARGIN: 1, "slackfit": 2, "infaas": 3}
    if policy in fixed:
        return fixed[policy], 0.0
    return 4, calib.candidates_order(int(policy.split(":")[1]))


def target_summary(scenarios: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pass / fail counts per target over every point of every scenario."""
    summary: dict[str, dict[str, int]] = {}
    for sc in scenarios.values():
        for p in sc["points"]:
            for name, t in p["targets"].items():
                if t is None:
                    continue
                s = summary.setdefault(name, {"pass": 0, "fail": 0})
                s["pass" if t["pass"] else "fail"] += 1
    return summary


def _cell(entry: dict | None, pct: bool = False) -> str:
    if entry is None:
        return "–"
    k = 100.0 if pct else 1.0
    hw = entry["half_width"]
    return f"{k * entry['mean']:.3g}" + ("" if hw != hw else f" ± {k * hw:.2g}")  # hw != hw: nan


def tables(scenarios: dict[str, dict[str, Any]], mode: str) -> str:
    label = "REAL runs (forwards on this machine)" if mode == "real" else "SIMULATED runs (virtual clock)"
    out = []
    for name, sc in scenarios.items():
        lo, hi = sc["calibration"]["middle_range"]
        out.append(
            f"## {label}: {name} — {sc['label']}\n\nAccuracy: {sc['accuracy_source']}.\n"
            f"Capacity (1×) = {sc['calibration']['capacity_per_s']:.1f} req/s (largest anchor served); "
            f"budgets {sc['calibration']['budgets']}; middle range (largest anchor cannot keep up, smallest can): "
            f"{lo:.2g}× < load ≤ {hi:.2g}×. Mean ± 95 % t-interval over {sc['seeds']} seeds."
            + _warmup_note(sc.get("warmup"))
            + "\n"
            + _bound_line(sc["calibration"].get("no_queue_bound"))
        )
        rows = []
        for p in sc["points"]:
            for policy, c in p["contenders"].items():
                name_ = c["contender"]
                if policy == p["oracle"]["policy"]:
                    name_ = f"oracle best static = {name_}"
                rows.append(
                    [
                        p["pattern"],
                        p["load"],
                        "middle" if p["middle_range"] else "",
                        name_,
                        _cell(c["effective_accuracy"]),
                        _cell(c["slo_attainment"]),
                        _cell(c["admitted_slo_attainment"]),
                        _cell(c["rejected_share"], pct=True),
                        _cell(c["shed_share"], pct=True),
                        _cell(c["p50_ms"]),
                        _cell(c["p99_ms"]),
                        _cell(c["mean_batch_size"]),
                    ]
                )
        out.append(
            markdown_table(
                [
                    "pattern",
                    "load ×",
                    "range",
                    "contender",
                    "eff. acc",
                    "SLO",
                    "admitted SLO",
                    "rejected %",
                    "shed % of admitted",
                    "p50 ms",
                    "p99 ms",
                    "batch",
                ],
                rows,
            )
        )
        trows = []
        for p in sc["points"]:
            t = p["targets"]
            five = t["five_points_above_oracle"]
            d = p["elastic_minus_oracle"]
            trows.append(
                [
                    p["pattern"],
                    p["load"],
                    "middle" if p["middle_range"] else "",
                    p["oracle"]["subnet"],
                    f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                    "pass" if t["not_below_oracle"]["pass"] else "FAIL",
                    "–" if five is None else ("pass" if five["pass"] else "FAIL"),
                    f"{_pct(t['admitted_within_budget']['value'])} "
                    + ("pass" if t["admitted_within_budget"]["pass"] else "FAIL"),
                    f"{_pct(t['shed_after_admission']['value'])} "
                    + ("pass" if t["shed_after_admission"]["pass"] else "FAIL"),
                    "–"
                    if (v := p.get("elastic_minus_fixed_margin")) is None
                    else f"{v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]",
                ]
            )
        out.append(f"\nTargets ({label.split(' ')[0].lower()}): elastic vs the oracle best static\n")
        out.append(
            markdown_table(
                [
                    "pattern",
                    "load ×",
                    "range",
                    "oracle subnet",
                    "elastic − oracle (95 % CI)",
                    "≥ oracle",
                    "≥ +5 pts (middle)",
                    "admitted in budget ≥ 99 %",
                    "shed ≤ 1 % of admitted",
                    "elastic − fixed margin (95 % CI)",
                ],
                trows,
            )
        )
        if mode == "real":
            out.append(_machine_table(sc))
        out.append("")
    return "\n".join(out)


def _machine_table(sc: dict[str, Any]) -> str:
    """What the machine gave the worker during the runs of the smallest anchor served
    statically (one subnet, so its forwards compare with its profile): forward times of its
    answered requests, and how far the submitting thread fell behind its schedule."""
    calib = sc["calibration"]
    smallest = calib["smallest_anchor"]
    profiled = {int(b): ms for b, ms in calib["profile_p50_ms"][str(smallest)].items()}  # JSON keys are strings
    b_max = max(profiled)
    rows = []
    for p in sc["points"]:
        runs = [
            r
            for r in sc["runs"]
            if r["pattern"] == p["pattern"]
            and r["load"] == p["load"]
            and r["policy"] == f"static:{smallest}"
            and r.get("forward_ms")
        ]
        if not runs:
            continue
        rows.append(
            [
                p["pattern"],
                p["load"],
                f"{statistics.median(r['forward_ms']['p50'] for r in runs):.3g}",
                f"{statistics.median(r['forward_ms']['p99'] for r in runs):.3g}",
                f"{max(r['forward_ms']['max'] for r in runs):.3g}",
                f"{statistics.median(r['submit_lag_ms']['p50'] for r in runs):.3g}",
            ]
        )
    if not rows:
        return ""
    head = (
        f"\nThe machine under load: forwards of static smallest (subnet {smallest}; profiled at batch 1"
        f" {profiled[1]:.3g} ms, batch {b_max} {profiled[b_max]:.3g} ms p50), over its answered requests"
        " (median over seeds of each run's p50 and p99; the largest of any run), and the submitting"
        " thread's lag behind its arrival schedule (median over seeds of each run's p50)\n"
    )
    return head + markdown_table(
        ["pattern", "load ×", "forward p50 ms", "forward p99 ms", "forward max ms", "submit lag p50 ms"], rows
    )


def _warmup_note(warmup: dict | None) -> str:
    """How much of each run warmed the runtime up, unscored (nothing for results without it)."""
    if not warmup or not warmup["max_s"]:
        return ""
    return (
        f" Each run is scored after an unscored warm-up of its own trace: {warmup['requests']} requests' worth"
        f" at the offered rate, {warmup['min_s']:g}–{warmup['max_s']:g} s."
    )


def _bound_line(bound: dict | None) -> str:
    if bound is None:
        return ""
    best = bound["best_static"]
    return (
        f"No-queue bound (`bench/bounds.py`: each request alone on the most accurate subnet whose batch-1 "
        f"p99 fits its budget): per-request choice ≤ {bound['per_request']:.3f}, the best static "
        f"(subnet {best}) ≤ {bound['static'][str(best)]:.3f}; gap {100 * bound['gap']:+.1f} points.\n"
    )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def plot(scenarios: dict[str, dict[str, Any]], path: Path, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (name, pattern)
        for name, sc in scenarios.items()
        for pattern in dict.fromkeys(p["pattern"] for p in sc["points"])
    ]
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 3.8 * len(rows)), squeeze=False)
    for ax_row, (name, pattern) in zip(axes, rows, strict=True):
        sc = scenarios[name]
        pts = [p for p in sc["points"] if p["pattern"] == pattern]
        lo, hi = sc["calibration"]["middle_range"]
        series: dict[str, list[tuple[float, dict, dict]]] = {}
        for p in pts:
            for policy, c in p["contenders"].items():
                label = c["contender"]
                if policy.startswith("static:") and "smallest" not in label and "largest" not in label:
                    continue
                series.setdefault(label, []).append((p["load"], c["effective_accuracy"], c["slo_attainment"]))
            oracle = p["contenders"][p["oracle"]["policy"]]
            series.setdefault("oracle best static", []).append(
                (p["load"], oracle["effective_accuracy"], oracle["slo_attainment"])
            )
        for label, values in series.items():
            xs = [v[0] for v in values]
            style = dict(marker="o", capsize=3, lw=2.5 if label in ("elastic", "oracle best static") else 1.0)
            for ax, k in zip(ax_row, (1, 2), strict=True):
                ax.errorbar(
                    xs,
                    [v[k]["mean"] for v in values],
                    yerr=[0 if v[k]["half_width"] != v[k]["half_width"] else v[k]["half_width"] for v in values],
                    label=label,
                    **style,
                )
        for ax, what in zip(ax_row, ("effective accuracy", "SLO attainment"), strict=True):
            if hi > lo:
                ax.axvspan(lo, hi, color="0.9", zorder=0)
            ax.set_xlabel("offered load (× largest anchor's served capacity)")
            ax.set_ylabel(what)
            ax.set_title(f"{mode}: {name}, {pattern} — {what}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
