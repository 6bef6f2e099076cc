"""Shared pieces of the benchmark suites: interleaved timing, summaries, result files."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from elastic import provenance

log = logging.getLogger(__name__)


def interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 3,
    inner: int = 1,
    before: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Time each contender `repeats` times, alternating between them every repeat.

    Interleaving spreads the machine's drift (other processes, frequency changes) evenly over
    the contenders, so their ratio is meaningful even when absolute times are not.

    Args:
        contenders: name -> zero-argument callable.
        repeats: timed rounds; each round runs every contender once, in rotating order.
        warmup: untimed rounds first.
        inner: calls per timed sample (the sample is their mean).
        before: run, untimed, before each timed sample (e.g. to put the caches in a
            given state).

    Returns:
        name -> per-call seconds, one entry per round.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = contenders[name]
            if before is not None:
                before()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90 and mean of per-call seconds, in milliseconds."""
    ordered = sorted(samples)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "median_ms": 1e3 * statistics.median(ordered),
        "p10_ms": 1e3 * q(0.10),
        "p90_ms": 1e3 * q(0.90),
        "mean_ms": 1e3 * statistics.fmean(ordered),
        "n": len(ordered),
    }


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[r] / b[r]: the ratio of two interleaved contenders."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def git_commit(repo: str | Path | None = None) -> str:
    """The checkout's commit, "-dirty" when its source differs (`elastic.provenance.commit`);
    "unknown" outside a git checkout."""
    return provenance.commit(repo) or "unknown"


def environment() -> dict[str, Any]:
    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        **cpu_info(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU the numbers were measured on: its model name, logical cores, and which of the
    vector extensions torch's CPU kernels pick from it has (results from two machines
    differ by more than their noise: the same scheduler code took 19 µs a decision on one
    and 38-68 on another). Empty where `cpuinfo` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first core's
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name", "unknown"),
        "cpu_count": os.cpu_count(),
        "cpu_vector": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return vars(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def write_results(out_dir: str | Path, suite: str, data: dict[str, Any], table: str, command: str) -> Path:
    """Write `<suite>.json` and `<suite>.md` (the table, the command, commit and date).

    Call it once a suite has finished: a file written is a complete result.
    """
    from elastic.checkpoint import atomic_write, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    commit = git_commit()
    data = {"suite": suite, "command": command, "commit": commit, "date": env["date"], "environment": env, **data}
    data = json.loads(json.dumps(data, default=_jsonable))
    atomic_write_json(out / f"{suite}.json", data)
    cpu = f", {env['cpu_model']} ({env['cpu_count']} cores)" if "cpu_model" in env else ""
    md = f"# {suite}\n\n`{command}` — commit {commit}, {env['date']}{cpu}\n\n{table}\n"
    atomic_write(out / f"{suite}.md", md.encode())
    log.info("wrote %s", out / f"{suite}.json")
    return out / f"{suite}.json"
