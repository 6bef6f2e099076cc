"""targets: issue 9's targets across the suites of one run, met or missed, point by point.

Reads what the timed suites wrote under `--out` — `load.json` (real runs), `load_sim.json`
(simulated), `scheduler.json` and `overhead.json` — and writes `targets.{json,md}`: for
every target and scope, how many points or rows meet it and the value of each one that
does not. It measures nothing itself: it is the summary the README renders instead of
counts copied by hand, and `elastic bench all` runs it last. A file that is missing (a run
of some suites only) leaves its rows out and is named in the table's note.

The load targets are the load suite's own per-point verdicts (`bench/load.py`, "targets"):
`elastic` not below the oracle best static (the upper end of the 95 % interval of their
difference ≥ 0), ≥ 5 points above it in the middle range (the mean), ≥ 99 % of admitted
requests within budget and ≤ 1 % shed after admission (pooled over seeds). The timed ones
are the scheduler's (µs per decision at 100 and 1,000 subnets) and the overhead's (µs added
at batch 1, the ratio to a direct forward at batch 8), whose rows say pass, FAIL or within
noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .harness import markdown_table, write_results
from .overhead import EVICTED

LOAD_TARGETS = {  # key in each point's "targets" -> (what it asks, how to print a value)
    "not_below_oracle": ("`elastic` ≥ the oracle best static", lambda v: f"{100 * v:+.1f} upper end"),
    "five_points_above_oracle": ("≥ 5 points above it (middle range)", lambda v: f"{100 * v:+.1f} points"),
    "admitted_within_budget": ("≥ 99 % of admitted requests in budget", lambda v: f"{100 * v:.1f} %"),
    "shed_after_admission": ("≤ 1 % shed after admission", lambda v: f"{100 * v:.1f} %"),
}
SOURCES = ("load", "load_sim", "scheduler", "overhead")


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    found = {name: _read(out / f"{name}.json") for name in SOURCES}
    rows: list[dict[str, Any]] = []
    for name, mode in (("load", "real"), ("load_sim", "simulated")):
        if found[name] is not None:
            rows += load_rows(found[name], mode)
    if found["scheduler"] is not None:
        rows += scheduler_rows(found["scheduler"])
    if found["overhead"] is not None:
        rows += overhead_rows(found["overhead"])
    sources = {name: {"commit": d["commit"], "date": d["date"]} for name, d in found.items() if d is not None}
    missing = [name for name, d in found.items() if d is None]
    table = tables(rows, sources, missing)
    write_results(args.out, "targets", {"sources": sources, "missing": missing, "rows": rows}, table, args.command)
    return {"rows": rows, "table": table}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_rows(load: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """One row per (load target, scenario): the points it applies to, those that meet it,
    and the misses with their values."""
    rows = []
    for key, (asks, shown) in LOAD_TARGETS.items():
        for name, sc in load["scenarios"].items():
            judged = [(p, p["targets"][key]) for p in sc["points"] if p["targets"].get(key) is not None]
            missed = [f"{p['pattern']} {p['load']:g}× ({shown(t['value'])})" for p, t in judged if not t["pass"]]
            rows.append(_row(asks, f"{name}, {mode}", len(judged) - len(missed), len(judged), missed))
    return rows


def scheduler_rows(scheduler: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per subnet count: the queue depths whose decision time meets its target; one
    within noise (its interval over rounds contains the target) counts as neither met nor
    missed and is named with its value, as in the overhead rows."""
    rows = []
    for n in sorted({t["subnets"] for t in scheduler["targets"]}):
        ts = [t for t in scheduler["targets"] if t["subnets"] == n]
        missed = [
            f"depth {t['queue_depth']} ({t['decision_us']:.1f} µs"
            f"{', within noise' if t.get('verdict') == 'within noise' else ''})"
            for t in ts
            if not t["pass"]
        ]
        target = f"decision ≤ {ts[0]['target_us']:g} µs"
        rows.append(_row(target, f"{n} subnets", len(ts) - len(missed), len(ts), missed))
    return rows


def overhead_rows(overhead: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (batch size, call, model): the subnets meeting the overhead target; a
    row within noise counts as neither met nor missed and is named with its value. The
    diagnostic row (caches evicted) has no target."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in overhead["rows"]:
        if r["model"] != EVICTED and r["target"].get("verdict") in ("pass", "FAIL", "within noise"):
            groups.setdefault((r["batch"], r["call"], r["model"]), []).append(r)
    rows = []
    for (batch, call, model), rs in sorted(groups.items()):
        if batch == 1:
            target = f"≤ {rs[0]['target']['added_us_per_request']:g} µs added at batch 1"
            value = [f"{r['added_us_per_request']:.0f} µs" for r in rs]
        else:
            target = f"≤ {rs[0]['target']['ratio']:g}× a direct forward at batch {batch}"
            value = [f"{r['ratio']:.2f}×" for r in rs]
        missed = [
            f"subnet {r['subnet']} ({v}{'' if r['target']['verdict'] == 'FAIL' else ', within noise'})"
            for r, v in zip(rs, value, strict=True)
            if r["target"]["verdict"] != "pass"
        ]
        met = sum(r["target"]["verdict"] == "pass" for r in rs)
        rows.append(_row(target, f"{model}, {call}", met, len(rs), missed))
    return rows


def _row(target: str, scope: str, met: int, of: int, missed: list[str]) -> dict[str, Any]:
    return {"target": target, "scope": scope, "met": met, "of": of, "missed": missed}


def tables(rows: list[dict[str, Any]], sources: dict[str, dict[str, str]], missing: list[str]) -> str:
    body = markdown_table(
        ["target", "scope", "met", "missed (value)"],
        [[r["target"], r["scope"], f"{r['met']} of {r['of']}", "; ".join(r["missed"]) or "–"] for r in rows],
    )
    note = "Read from " + ", ".join(f"{name}.json ({s['commit']}, {s['date']})" for name, s in sources.items())
    if missing:
        note += "; not found: " + ", ".join(f"{name}.json" for name in missing)
    return (
        f"{body}\n\n{note}. Load targets per point as the load suite judges them (`bench/load.py`); "
        "scheduler and overhead rows 'within noise' meet neither verdict (their interval contains the target)."
    )
