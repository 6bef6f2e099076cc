"""GPU check of `CUDAGraphExecutor` (`elastic.serving`): eager vs captured graphs per subnet.

On SN-Net DeiT Ti/S/B (Pan et al., CVPR 2023; random weights, least-squares stitches) it
measures, for a spread of subnets over FLOPs at batch 1 and 8, interleaved:

- the latency of the eager forward and of the graph replay (`EagerExecutor` vs
  `CUDAGraphExecutor`, each `run` + synchronize), and the graph's largest difference from eager;
- at batch 1, the rank correlation (Spearman) of latency with FLOPs for each: issue 16 asks
  that the accuracy-latency trade-off be visible, i.e. graph latency ordered like FLOPs;
- the cost of switching graphs: alternating two subnets' replays against running each in a
  block, per switch, as a fraction of the smallest subnet's replay (target <= 1 %);
- the profile measured through the graph executor (`measure_latency(executor=...)`), and the
  graph memory the executor holds.

Writes JSON to `--out` (with the command, commit and date). Needs CUDA: exits 2 without it.

    python bench/cuda_graphs_gpu.py --out bench/results/gpu/cuda_graphs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DEIT = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results path")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--subnets", type=int, default=12, help="how many subnets, spread over FLOPs")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--budget-s", type=float, default=150.0, help="stop timing new cases after this")
    return p.parse_args(argv)


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation of two equally long lists (ties get their mean rank)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("spearman needs two lists of the same length >= 2")

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0


def spread(ids_by_flops: list[int], k: int) -> list[int]:
    """`k` ids evenly spaced over a list sorted by FLOPs, always keeping both ends."""
    if k >= len(ids_by_flops):
        return list(ids_by_flops)
    step = (len(ids_by_flops) - 1) / max(1, k - 1)
    return sorted({ids_by_flops[round(i * step)] for i in range(k)}, key=ids_by_flops.index)


def switch_cost(alternating_s: float, blocked_s: float, switches: int) -> float:
    """Extra seconds per switch: alternating two subnets vs running each in one block."""
    return (alternating_s - blocked_s) / switches


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 2
    import elastic
    from elastic.anchors import AnchorFamily
    from elastic.serving import measure_latency
    from elastic.serving.cuda_graph_executor import CUDAGraphExecutor
    from elastic.serving.executor import EagerExecutor

    start = time.monotonic()
    torch.manual_seed(0)
    net = elastic.StitchedNet(AnchorFamily.from_timm(list(DEIT))).eval().cuda()
    net.init_stitches(torch.randn(16, 3, 224, 224, device="cuda"))
    by_flops = sorted(net.subnets(), key=lambda s: s.flops)
    ids = spread([s.id for s in by_flops], args.subnets)
    flops = {s.id: s.flops for s in by_flops}
    batches = [int(b) for b in args.batches.split(",")]
    eager = EagerExecutor(net, "cuda")
    graphs = CUDAGraphExecutor(net, "cuda", buckets=batches)
    deadline = start + args.budget_s

    rows, skipped = [], []
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        for sid in ids:
            if time.monotonic() > deadline:
                skipped.append(dict(subnet=sid, batch=b))
                continue
            graphs.warmup(sid, b)
            eager.warmup(sid, b)
            diff = float((graphs.run(sid, x) - eager.run(sid, x)).abs().max())
            t_eager, t_graph = [], []
            for _ in range(args.repeats):  # interleaved
                t_eager += _timed(lambda sid=sid, x=x: eager.run(sid, x), 1)
                t_graph += _timed(lambda sid=sid, x=x: graphs.run(sid, x), 1)
            rows.append(
                dict(
                    subnet=sid,
                    batch=b,
                    gflops=flops[sid] / 1e9,
                    eager_ms=1e3 * statistics.median(t_eager),
                    graph_ms=1e3 * statistics.median(t_graph),
                    speedup=statistics.median(t_eager) / statistics.median(t_graph),
                    max_abs_diff=diff,
                    captured=(sid, b) in graphs.graphs,
                )
            )
            print(
                f"b{b} subnet {sid:>2} {flops[sid] / 1e9:6.2f} GFLOPs: eager {rows[-1]['eager_ms']:.3f} ms, "
                f"graph {rows[-1]['graph_ms']:.3f} ms (x{rows[-1]['speedup']:.2f}), max diff {diff:.2e}"
            )

    order = {}
    for name in ("eager_ms", "graph_ms"):
        b1 = [r for r in rows if r["batch"] == batches[0]]
        if len(b1) >= 2:
            order[name] = spearman([r["gflops"] for r in b1], [r[name] for r in b1])

    switching = None
    if len(ids) >= 2 and time.monotonic() < deadline + 30:
        a, z = ids[0], ids[-1]
        x = torch.randn(batches[0], 3, 224, 224)
        n = 50

        def alternating():
            for _ in range(n):
                graphs.run(a, x)
                graphs.run(z, x)

        def blocked():
            for _ in range(n):
                graphs.run(a, x)
            for _ in range(n):
                graphs.run(z, x)

        alt, blk, one = [], [], []
        for _ in range(5):
            alt += _timed(alternating, 1)
            blk += _timed(blocked, 1)
            one += _timed(lambda: graphs.run(a, x), 1)
        per_switch = switch_cost(statistics.median(alt), statistics.median(blk), 2 * n - 1)
        switching = dict(
            subnets=[a, z],
            batch=batches[0],
            per_switch_ms=1e3 * per_switch,
            smallest_graph_ms=1e3 * statistics.median(one),
            fraction_of_smallest=per_switch / statistics.median(one),
        )
        print(
            f"switching {a}<->{z}: {switching['per_switch_ms']:.4f} ms per switch "
            f"({100 * switching['fraction_of_smallest']:.2f} % of subnet {a})"
        )

    profile = None
    if time.monotonic() < deadline + 60:
        prof = measure_latency(net, torch.zeros(3, 224, 224), batches, "cuda", repeats=10, subnets=ids, executor=graphs)
        profile = {sid: {b: prof.latency_ms(sid, b, "p50") for b in batches} for sid in ids}

    result = dict(
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        commit=_git_commit(),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        anchors=list(DEIT),
        weights="random (timm init), stitches by least squares on random images",
        rows=rows,
        skipped=skipped,
        spearman_latency_vs_flops_batch1=order,
        switching=switching,
        profile_p50_ms_through_graphs=profile,
        graph_memory_bytes=graphs.memory_bytes,
        refused=[dict(subnet=k[0], batch=k[1], why=v) for k, v in graphs.refused.items()],
        elapsed_s=time.monotonic() - start,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}; Spearman(latency, FLOPs) at batch {batches[0]}: {order}")
    return 0


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
