"""`LatencyProfile`: measured latency of every (subnet, batch size) on one device.

The scheduler plans with this table, as Clockwork (Gujarati et al., OSDI'20) and SuperServe
(Khare et al., NSDI'25) do: inference latency of a fixed network on a fixed device is
predictable enough to plan deadlines with, once measured. INFaaS (Romero et al., ATC'21)
keeps the same kind of per-variant, per-batch profile. Measuring needs torch and lives in
`elastic.serving.profiler`; this module is pure Python (the scheduler imports it) and holds
the table, its interpolation, the Pareto candidates and its JSON file
(`profile-<device>.json` beside the model, written atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elastic.manifest import profile_problems
from elastic.subnet import Subnet, pareto

log = logging.getLogger(__name__)

FORMAT = "elastic-latency-profile/1"
QUANTILES = ("p50", "p99")


def device_tag(device: str) -> str:
    """File-name form of a device string: "cpu" -> "cpu", "cuda:0" -> "cuda0"."""
    return re.sub(r"[^A-Za-z0-9_-]", "", str(device)) or "device"


def profile_path(model_dir: str | Path, device: str) -> Path:
    """Where the profile of the model in `model_dir` on `device` is stored."""
    return Path(model_dir) / f"profile-{device_tag(device)}.json"


def fingerprint(subnets: Iterable[Subnet]) -> str:
    """Hash of the subnet table's structure: a profile only fits the model it was made on."""
    rows = [[s.id, s.description, s.flops] for s in subnets]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def quantile(samples: Sequence[float], q: float) -> float:
    """The q-quantile of `samples` with linear interpolation (numpy's default method)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class LatencyProfile:
    """Latency quantiles per subnet and batch size, in milliseconds, on one device.

    Batch sizes between measured ones are interpolated linearly; larger ones are
    extrapolated from the last two measured sizes (batched latency is close to affine in
    the batch size until the device saturates).
    """

    device: str  # torch device string the model ran on, e.g. "cpu", "cuda:0"
    device_name: str  # CPU model or GPU name; a different name means re-measure
    batch_sizes: tuple[int, ...]  # measured batch sizes, ascending
    p50_ms: dict[int, dict[int, float]]  # subnet id -> batch size -> median ms
    p99_ms: dict[int, dict[int, float]]  # subnet id -> batch size -> 99th percentile ms
    fingerprint: str = ""  # `fingerprint(model.subnets())` of the profiled model
    repeats: int = 0  # timed runs per (subnet, batch size)
    warmup: int = 0  # untimed runs per (subnet, batch size) before timing
    meta: dict[str, Any] = field(default_factory=dict)  # torch version, threads, date, ...

    def __post_init__(self) -> None:
        self.batch_sizes = tuple(sorted(int(b) for b in self.batch_sizes))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        for name in ("p50_ms", "p99_ms"):
            table = getattr(self, name)
            for sid, row in table.items():
                missing = [b for b in self.batch_sizes if b not in row]
                if missing:
                    raise ValueError(f"{name} of subnet {sid} lacks batch sizes {missing}")
        if set(self.p50_ms) != set(self.p99_ms):
            raise ValueError("p50_ms and p99_ms cover different subnets")

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_table(
        cls,
        p50_ms: Mapping[int, Mapping[int, float]],
        p99_ms: Mapping[int, Mapping[int, float]] | None = None,
        device: str = "synthetic",
        tail: float = 1.0,
    ) -> LatencyProfile:
        """A profile from a hand-written cost table (tests, simulations).

        Args:
            p50_ms: subnet id -> batch size -> median ms.
            p99_ms: the tail table; defaults to `tail` times the median.
            device: a label for the device.
            tail: p99 / p50 ratio when `p99_ms` is not given.
        """
        p50 = {int(s): {int(b): float(v) for b, v in row.items()} for s, row in p50_ms.items()}
        if p99_ms is None:
            p99 = {s: {b: v * tail for b, v in row.items()} for s, row in p50.items()}
        else:
            p99 = {int(s): {int(b): float(v) for b, v in row.items()} for s, row in p99_ms.items()}
        sizes = sorted(set.intersection(*(set(row) for row in p50.values())))
        return cls(device=device, device_name=device, batch_sizes=tuple(sizes), p50_ms=p50, p99_ms=p99)

    # ---- lookup ------------------------------------------------------------------------
    @property
    def subnet_ids(self) -> list[int]:
        return sorted(self.p50_ms)

    def latency_ms(self, subnet: int, batch: int, quantile: str = "p99") -> float:
        """Predicted latency of one forward of `subnet` on `batch` samples.

        Raises:
            KeyError: the subnet was not profiled.
            ValueError: unknown quantile or batch < 1.
        """
        if quantile not in QUANTILES:
            raise ValueError(f"quantile must be one of {QUANTILES}, got {quantile!r}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        row = (self.p50_ms if quantile == "p50" else self.p99_ms)[subnet]
        sizes = self.batch_sizes
        if batch in row:
            return row[batch]
        if batch < sizes[0]:
            return row[sizes[0]]
        if batch > sizes[-1]:
            if len(sizes) == 1:
                return row[sizes[0]] * batch / sizes[0]
            b0, b1 = sizes[-2], sizes[-1]
            slope = max(0.0, (row[b1] - row[b0]) / (b1 - b0))
            return row[b1] + slope * (batch - b1)
        hi = next(b for b in sizes if b > batch)
        lo = max(b for b in sizes if b < batch)
        return row[lo] + (row[hi] - row[lo]) * (batch - lo) / (hi - lo)

    def candidates(self, subnets: Sequence[Subnet], value: Mapping[int, float] | None = None) -> list[int]:
        """Ids on the accuracy/latency Pareto front at any measured batch size.

        A subnet no other one beats on both median latency and accuracy, at batch size 1 or
        any other measured size, stays a candidate; the union covers the (rare) case where
        the ranking by latency changes with the batch size.

        Args:
            subnets: the model's subnets (only profiled ones count).
            value: subnet id -> the accuracy to compare; defaults to `Subnet.accuracy`
                (subnets without one are skipped).

        Returns:
            ids sorted by median latency at batch size 1.
        """
        profiled = [s for s in subnets if s.id in self.p50_ms]
        value_of = (lambda s: s.accuracy) if value is None else (lambda s: value.get(s.id))
        front: set[int] = set()
        for b in self.batch_sizes:
            front.update(pareto(profiled, key=lambda s, b=b: self.p50_ms[s.id][b], value=value_of))
        return sorted(front, key=lambda sid: (self.p50_ms[sid][self.batch_sizes[0]], sid))

    # ---- files -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "device": self.device,
            "device_name": self.device_name,
            "batch_sizes": list(self.batch_sizes),
            "fingerprint": self.fingerprint,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "meta": self.meta,
            "p50_ms": {str(s): {str(b): v for b, v in row.items()} for s, row in self.p50_ms.items()},
            "p99_ms": {str(s): {str(b): v for b, v in row.items()} for s, row in self.p99_ms.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyProfile:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} document")
        problem = profile_problems(d)  # NaN / non-positive latencies, p99 < p50, bad sizes
        if problem is not None:
            raise ValueError(problem)

        def table(t: Mapping[str, Mapping[str, float]]) -> dict[int, dict[int, float]]:
            return {int(s): {int(b): float(v) for b, v in row.items()} for s, row in t.items()}

        return cls(
            device=d["device"],
            device_name=d["device_name"],
            batch_sizes=tuple(d["batch_sizes"]),
            p50_ms=table(d["p50_ms"]),
            p99_ms=table(d["p99_ms"]),
            fingerprint=d.get("fingerprint", ""),
            repeats=int(d.get("repeats", 0)),
            warmup=int(d.get("warmup", 0)),
            meta=dict(d.get("meta", {})),
        )

    def save(self, model_dir: str | Path) -> Path:
        """Write `profile-<device>.json` into `model_dir` atomically; returns the file."""
        from elastic.checkpoint import atomic_write_json

        path = profile_path(model_dir, self.device)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        log.info("saved latency profile of %d subnets to %s", len(self.p50_ms), path)
        return path

    @classmethod
    def load(cls, model_dir: str | Path, device: str) -> LatencyProfile | None:
        """The profile saved in `model_dir` for `device`, or None if absent or unreadable."""
        path = profile_path(model_dir, device)
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
            log.warning("ignoring unreadable latency profile %s: %s", path, e)
            return None

    def fits(self, subnets: Sequence[Subnet], device_name: str, batch_sizes: Iterable[int]) -> str | None:
        """Why this profile cannot be reused for the given model and device; None if it can."""
        if self.fingerprint != fingerprint(subnets):
            return "it was measured on a different subnet table"
        if self.device_name != device_name:
            return f"it was measured on {self.device_name!r}, not {device_name!r}"
        missing = sorted(set(batch_sizes) - set(self.batch_sizes))
        if missing:
            return f"it lacks batch sizes {missing}"
        unprofiled = sorted({s.id for s in subnets} - set(self.p50_ms))
        if unprofiled:
            return f"it lacks subnets {unprofiled[:8]}"
        return None
