"""The demo's figure: accuracy against FLOPs and against measured latency (SN-Net's Fig. 1 style).

SN-Net (Pan et al., CVPR 2023) shows stitched subnets as a cloud between the anchors with
their Pareto front on top; this draws the same from a demo report: anchors as stars with
their names, stitched subnets as dots, the Pareto front as a step line, and the straight
line between neighbouring anchors the front should follow. matplotlib is imported lazily
with the non-interactive Agg backend, so the library works without it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elastic.checkpoint import atomic_write

log = logging.getLogger(__name__)


def plot_pareto(report: Mapping[str, Any], path: str | Path, batch_size: str = "1") -> Path:
    """Draw accuracy vs MFLOPs (left) and vs latency at `batch_size` (right) to `path` (PNG).

    Args:
        report: a demo report (`subnets` with accuracy, flops, latency_ms; `pareto`).
        path: output file.
        batch_size: which latency column to plot, as a string key of `latency_ms`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elastic.subnet import Subnet, pareto

    rows = [s for s in report["subnets"] if s.get("accuracy") is not None]
    subnets = [Subnet.from_dict(s) for s in rows]
    latency = {s["id"]: s["latency_ms"][batch_size] for s in rows if batch_size in s.get("latency_ms", {})}
    axes_spec = [("flops", "MFLOPs per image", lambda s: s.flops / 1e6)]
    if latency:
        axes_spec.append(("latency", f"latency at batch {batch_size} (ms, this CPU)", lambda s: latency[s.id]))
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(6.2 * len(axes_spec), 4.6), squeeze=False)
    for ax, (kind, label, cost) in zip(axes[0], axes_spec, strict=True):
        front = pareto(subnets, key=cost)
        by_id = {s.id: s for s in subnets}
        stitched = [s for s in subnets if s.kind != "anchor"]
        anchors = sorted((s for s in subnets if s.kind == "anchor"), key=cost)
        ax.scatter(
            [cost(s) for s in stitched],
            [100 * s.accuracy for s in stitched],
            s=16,
            color="tab:blue",
            alpha=0.45,
            label="stitched subnets",
        )
        fx = [cost(by_id[i]) for i in front]
        fy = [100 * by_id[i].accuracy for i in front]
        ax.step(fx, fy, where="post", color="tab:green", lw=1.4, label="Pareto front")
        ax.scatter(fx, fy, s=22, color="tab:green", zorder=3)
        if kind == "flops":  # the line `elastic.demo.report.interpolation` measures against
            ax.plot(
                [cost(a) for a in anchors],
                [100 * a.accuracy for a in anchors],
                ls="--",
                color="gray",
                lw=1,
                label="anchor line",
            )
        ax.scatter(
            [cost(a) for a in anchors],
            [100 * a.accuracy for a in anchors],
            marker="*",
            s=180,
            color="tab:red",
            zorder=4,
            label="anchors",
        )
        for a in anchors:
            ax.annotate(
                a.description,
                (cost(a), 100 * a.accuracy),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
                color="tab:red",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        if kind == "flops":
            ax.legend(loc="lower right", fontsize=8)
    name = report.get("dataset", {}).get("name", "") if isinstance(report.get("dataset"), Mapping) else ""
    fig.suptitle(
        f"SN-Net stitched subnets on {name or 'the test set'}: {len(subnets)} subnets, "
        f"{len(pareto(subnets))} on the FLOPs front",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    log.info("wrote %s", path)
    return path
