"""The demo's results: subnet table, Pareto fronts, and SN-Net's interpolation check.

SN-Net (Pan et al., CVPR 2023) claims that stitched subnets fill the accuracy/FLOPs gap
between anchors: their Pareto front runs close to the straight line between neighbouring
anchors. `interpolation` measures exactly that on the evaluated subnets — for every
stitched subnet on the accuracy-vs-FLOPs front strictly between the cheapest and the most
expensive anchor, how far its accuracy falls below the line joining the two anchors around
it (FLOPs on a linear axis) — so the claim is checked by code, not by eye.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elastic.checkpoint import atomic_write, atomic_write_json
from elastic.subnet import Subnet, pareto

log = logging.getLogger(__name__)

INTERPOLATION_TOLERANCE = 1.5  # accuracy points below the anchor line still counted as interpolating


def anchor_line(anchors: Sequence[Subnet], flops: float) -> float | None:
    """Accuracy of the straight line between the anchors on either side of `flops`.

    Returns None outside [cheapest, most expensive anchor] or without accuracies.
    """
    pts = sorted((a.flops, a.accuracy) for a in anchors if a.accuracy is not None)
    for (f0, a0), (f1, a1) in zip(pts, pts[1:], strict=False):
        if f0 <= flops <= f1:
            return a0 if f1 == f0 else a0 + (a1 - a0) * (flops - f0) / (f1 - f0)
    return None


def interpolation(subnets: Sequence[Subnet], tolerance: float = INTERPOLATION_TOLERANCE) -> dict[str, Any]:
    """How well the stitched accuracy-vs-FLOPs front interpolates between the anchors.

    Args:
        subnets: evaluated subnets, anchors (`kind == "anchor"`) included.
        tolerance: allowed shortfall below the anchor line, in accuracy points.

    Returns:
        {"front_between_anchors": stitched front subnets strictly between the cheapest and the
        most expensive anchor in FLOPs, "max_shortfall_points": the largest (line - accuracy)
        over them in points (negative: all above the line; None: no such subnet),
        "tolerance_points", "holds", "intervals": per pair of neighbouring anchors, the front
        subnets in (cheaper, dearer] and their worst shortfall (a front that skips an interval
        shows there), "per_subnet": [{id, flops, accuracy, line, shortfall_points}]}.
    """
    anchors = [s for s in subnets if s.kind == "anchor" and s.accuracy is not None]
    if len(anchors) < 2:
        raise ValueError("interpolation needs at least two evaluated anchors")
    lo, hi = min(a.flops for a in anchors), max(a.flops for a in anchors)
    by_id = {s.id: s for s in subnets}
    rows = []
    for sid in pareto(subnets):
        s = by_id[sid]
        if s.kind == "anchor" or not lo < s.flops < hi:
            continue
        line = anchor_line(anchors, s.flops)
        rows.append(
            {
                "id": sid,
                "flops": s.flops,
                "accuracy": s.accuracy,
                "line": line,
                "shortfall_points": round(100 * (line - s.accuracy), 4),
            }
        )
    worst = max((r["shortfall_points"] for r in rows), default=None)
    ordered = sorted(anchors, key=lambda a: a.flops)
    intervals = []
    for a, b in zip(ordered, ordered[1:], strict=False):
        inside = [r for r in rows if a.flops < r["flops"] <= b.flops]
        stitched = [s for s in subnets if s.kind != "anchor" and a.flops < s.flops < b.flops]
        intervals.append(
            {
                "from": a.description,
                "to": b.description,
                "front": len(inside),  # front subnets in (a, b], so a gap in the front shows up
                "stitched": len(stitched),  # all stitched subnets with FLOPs strictly inside
                "max_shortfall_points": max((r["shortfall_points"] for r in inside), default=None),
            }
        )
    return {
        "front_between_anchors": len(rows),
        "max_shortfall_points": worst,
        "tolerance_points": tolerance,
        "holds": worst is not None and worst <= tolerance,
        "intervals": intervals,
        "per_subnet": rows,
    }


def subnet_rows(subnets: Sequence[Subnet], latency: Mapping[int, Mapping[int, float]] | None) -> list[dict]:
    """The report's "subnets" entries: the Subnet fields plus latency_ms per batch size."""
    rows = []
    for s in subnets:
        row = s.to_dict()
        if latency is not None and s.id in latency:
            row["latency_ms"] = {str(b): round(ms, 4) for b, ms in sorted(latency[s.id].items())}
        rows.append(row)
    return rows


def latency_fronts(subnets: Sequence[Subnet], latency: Mapping[int, Mapping[int, float]]) -> dict[str, list[int]]:
    """Accuracy-vs-latency Pareto front per batch size, as {"1": ids, "8": ids}."""
    batch_sizes = sorted({b for per in latency.values() for b in per})
    timed = [s for s in subnets if s.id in latency]
    return {str(b): pareto(timed, key=lambda s, b=b: latency[s.id][b]) for b in batch_sizes}


def format_table(report: Mapping[str, Any]) -> str:
    """Fixed-width table of a report's subnets: cost, accuracy, latency, Pareto mark."""
    from elastic.tables import format_table as text_table

    front = set(report.get("pareto", []))
    batch_sizes = sorted({b for s in report["subnets"] for b in s.get("latency_ms", {})}, key=int)
    headers = ["id", "kind", "MFLOPs", "params", "acc %", *(f"ms@{b}" for b in batch_sizes), "P", "description"]
    rows = []
    for s in report["subnets"]:
        lat = s.get("latency_ms", {})
        rows.append(
            [
                str(s["id"]),
                s["kind"],
                f"{s['flops'] / 1e6:.2f}",
                f"{s['params']:,}",
                f"{100 * s['accuracy']:.2f}" if s.get("accuracy") is not None else "-",
                *(f"{lat[b]:.3f}" if b in lat else "-" for b in batch_sizes),
                "*" if s["id"] in front else "",
                s["description"],
            ]
        )
    align = [">", "<", ">", ">", ">", *(">" for _ in batch_sizes), "<", "<"]
    return text_table(headers, rows, align)


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A few lines on the anchors, the front and the interpolation check."""
    anchors = ", ".join(
        f"{a['name']} {100 * a['accuracy']:.2f}% @ {a['flops'] / 1e6:.1f} MFLOPs" for a in report["anchors"]
    )
    lines = [f"anchors: {anchors}"]
    interp = report.get("interpolation")
    if interp is not None:
        worst = interp["max_shortfall_points"]
        worst_s = "n/a" if worst is None else f"{worst:+.2f}"
        lines.append(
            f"stitched Pareto front: {interp['front_between_anchors']} subnets between the anchors; "
            f"max shortfall below the anchor line {worst_s} points "
            f"(tolerance {interp['tolerance_points']}: {'holds' if interp['holds'] else 'does NOT hold'})"
        )
    for iv in (interp or {}).get("intervals", []):
        worst_iv = "n/a" if iv["max_shortfall_points"] is None else f"{iv['max_shortfall_points']:+.2f}"
        lines.append(
            f"  {iv['from']} -> {iv['to']}: {iv['front']} front subnets of {iv['stitched']} stitched "
            f"in between; max shortfall {worst_iv} points"
        )
    timings = report.get("timings")
    if timings:
        lines.append("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return lines


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report's headline numbers as markdown (what the README renders): anchors, the
    Pareto front and its interpolation check, timings, and the serving stage when present."""
    lines = ["# demo", ""]
    run = report.get("run", {})
    if run:
        lines += [f"`{run.get('command', '?')}` at commit {run.get('commit', '?')}, {run.get('date', '?')}", ""]
    lines += ["| anchor | test accuracy | MFLOPs / image | params |", "|---|---|---|---|"]
    for a in report["anchors"]:
        lines.append(f"| {a['name']} | {100 * a['accuracy']:.2f} % | {a['flops'] / 1e6:.2f} | {a['params']:,} |")
    subnets, front = report["subnets"], report.get("pareto", [])
    interp = report.get("interpolation") or {}
    lines += ["", f"- {len(subnets)} subnets, {len(front)} on the accuracy/FLOPs Pareto front"]
    if interp:
        worst = interp["max_shortfall_points"]
        lines.append(
            f"- {interp['front_between_anchors']} front subnets strictly between the smallest and largest anchor; "
            f"the front stays within {'n/a' if worst is None else f'{worst:.2f}'} points below the line between "
            f"neighbouring anchors (tolerance {interp['tolerance_points']}: "
            f"{'holds' if interp['holds'] else 'does not hold'})"
        )
    before = [a.get("accuracy_standalone") for a in report["anchors"]]
    if all(b is not None for b in before):
        lines.append("- anchors before SN-Net training: " + " / ".join(f"{100 * b:.2f} %" for b in before))
    timings = report.get("timings")
    if timings:
        lines.append("- timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    serving = report.get("serving")
    if serving:
        budgets = serving.get("budgets_ms") or []
        span = f", budgets {min(budgets):.3g}–{max(budgets):.3g} ms" if budgets else ""
        lines += [
            "",
            f"Serving (`{serving.get('run', {}).get('command', 'elastic serve-demo')}`"
            + (f" at commit {serving['run']['commit']}, {serving['run']['date']}" if serving.get("run") else "")
            + f"): {serving['requests']} requests, Poisson at "
            f"{serving['offered_rate_per_s']:.0f}/s{span}, policy {serving['policy']}:",
            "",
            "| SLO attainment | admitted within budget | effective accuracy | rejected | shed | late | mean batch |",
            "|---|---|---|---|---|---|---|",
            f"| {100 * serving['slo_attainment']:.1f} % | {100 * (serving['admitted_slo_attainment'] or 0):.1f} % "
            f"| {100 * serving['effective_accuracy']:.1f} % | {serving['rejected']} | {serving['shed']} "
            f"| {serving['late']} | {serving['mean_batch_size'] or 0:.1f} |",
        ]
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, report: Mapping[str, Any], markdown: bool = False) -> Path:
    """Write the report as JSON, atomically (temp file + rename); with `markdown`, also the
    SN-Net demo's headline numbers as `report.md` beside it (`markdown_report`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, dict(report))
    if markdown:
        atomic_write(path.with_suffix(".md"), markdown_report(report).encode())
    log.info("wrote %s", path)
    return path
