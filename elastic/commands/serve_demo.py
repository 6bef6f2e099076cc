"""`elastic serve-demo --model DIR`: serve Fashion-MNIST test images under random budgets.

Loads a saved model, profiles it on the device (or reuses `profile-<device>.json` beside
it), replays the test images as an open-loop Poisson stream with random latency budgets
through `elastic.serving.Runtime`, prints the score and adds `"serving": {...}` to
report.json (SLO attainment and effective accuracy as in SuperServe, NSDI'25).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _policy(text: str) -> str:
    """argparse type: a policy name `make_policy` knows (checked before anything loads)."""
    from elastic.serving.policies import make_policy

    try:
        make_policy(text)
    except ValueError as e:  # ConfigError is one
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _device(text: str) -> str:
    """argparse type: a torch device string that exists on this machine."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device here")
    return text


def _budgets(text: str) -> list[float]:
    """argparse type: comma-separated budgets in ms, each a finite number > 0."""
    try:
        budgets = [float(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers of ms, got {text!r}") from None
    if not all(math.isfinite(b) and b > 0 for b in budgets):
        raise argparse.ArgumentTypeError(f"every budget must be a finite number of ms > 0, got {text!r}")
    return budgets


def _positive(kind: type) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    check.__name__ = f"positive {kind.__name__}"
    return check


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-demo", help="replay Fashion-MNIST through the runtime under latency budgets")
    p.add_argument("--model", required=True, help="checkpoint directory written by elastic.save")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    p.add_argument("--requests", type=_positive(int), default=2000, help="requests to replay (default 2000)")
    p.add_argument(
        "--report",
        default=None,
        help="report.json to add 'serving' to (default: beside the model folder)",
    )
    p.add_argument("--policy", type=_policy, default="elastic", help="elastic | slackfit | static:<subnet id>")
    p.add_argument("--device", type=_device, default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="most requests per forward (default 8)")
    p.add_argument(
        "--budgets",
        type=_budgets,
        default=None,
        help="comma-separated budgets in ms (default: spread over the served latencies)",
    )
    p.add_argument(
        "--rate",
        type=_positive(float),
        default=None,
        help="arrivals per second (default: half the most accurate subnet's served throughput)",
    )
    p.add_argument("--profile-repeats", type=_positive(int), default=10, help="timed runs per (subnet, batch size)")
    p.add_argument("--reprofile", action="store_true", help="measure again even if a saved profile fits")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve Prometheus metrics on 127.0.0.1:PORT",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=_positive(int),
        default=1,
        help="torch intra-op threads of the runtime (default 1: on a small CPU the worker's team beside the "
        "caller's makes GNU OpenMP throttle its barrier spin; docs/serving.md 'Worker threading')",
    )
    p.set_defaults(func=run)


def default_load(model, example, profile, candidates: list[int], max_batch: int) -> tuple[list[float], float]:
    """Six budgets, geometric over `budget_range` (barely feasible to relaxed), and an
    arrival rate of half the largest-accuracy candidate's served throughput: enough load
    that the runtime must trade accuracy for speed at times."""
    from elastic.serving import budget_range, served_capacity

    accurate = max(candidates, key=lambda s: (model.subnets()[s].accuracy or 0.0, s))
    fastest = min(candidates, key=lambda s: profile.latency_ms(s, 1, "p50"))
    top = served_capacity(model, example, accurate, profile, max_batch)
    lo, hi = budget_range(profile, fastest, accurate, top.per_request_ms, top.per_batch_ms, max_batch)
    return [round(lo * (hi / lo) ** (k / 5), 3) for k in range(6)], 0.5 * top.throughput_per_s


def usable_profile(file: Path) -> bool:
    """False when a saved profile holds latencies the scheduler cannot plan with (NaN, <= 0):
    it is measured again instead (a missing or unreadable file is the loader's to judge)."""
    from elastic.manifest import profile_problems

    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError):
        return True
    why = profile_problems(doc)
    if why is not None:
        print(f"not reusing {file}: {why}")
    return why is None


def run(args: argparse.Namespace) -> int:
    import torch

    from elastic.checkpoint import atomic_write_json, load
    from elastic.cli import require_writable_dir
    from elastic.demo.data import fashion_mnist
    from elastic.serving import Runtime, profile_path, replay

    report_path = Path(args.report) if args.report else Path(args.model).resolve().parent / "report.json"
    require_writable_dir(report_path.parent, "--report's folder")  # before minutes of replay
    model = load(args.model, map_location=args.device)
    images, labels = fashion_mnist(root=args.data, split="test")
    model.check_input(images[:1])  # a model for another input size fails here, clearly
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(images), generator=g)[: min(args.requests, len(images))]
    images, labels = images[order], labels[order]

    torch.set_num_threads(args.threads)  # the runtime's worker takes the constructing thread's count
    with Runtime(model, device=args.device, max_batch_size=args.max_batch, policy=args.policy) as rt:
        sizes = sorted({1, 2, 4, args.max_batch} | {b for b in (8, 16) if b <= args.max_batch})
        profile = rt.profile(
            images[0],
            batch_sizes=sizes,
            repeats=args.profile_repeats,
            path=args.model,
            reuse=not args.reprofile and usable_profile(profile_path(args.model, args.device)),
        )
        candidates = rt.candidates
        budgets, rate = default_load(model, images[0], profile, candidates, args.max_batch)
        budgets = args.budgets or budgets
        rate = args.rate if args.rate is not None else rate
        if args.metrics_port is not None:
            print(f"metrics: http://127.0.0.1:{rt.serve_metrics(args.metrics_port)}/metrics")
        print(
            f"replaying {args.requests} requests at {rate:.1f}/s, budgets {budgets} ms, "
            f"policy {rt.policy.name}, candidates {candidates}"
        )
        result = replay(rt, images, labels, budgets, rate, args.seed, requests=args.requests)

    subnets = {s.id: s for s in model.subnets()}
    from elastic.provenance import run_record

    serving = {
        "run": run_record("elastic serve-demo " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])),
        "threads": args.threads,
        **result,
        "policy": rt.policy.name,
        "device": str(rt.device),
        "device_name": profile.device_name,
        "max_batch_size": args.max_batch,
        "candidates": candidates,
        "profile": {
            "file": str(profile_path(args.model, str(rt.device))),
            "batch_sizes": list(profile.batch_sizes),
            "p50_ms_batch1": {str(s): round(profile.latency_ms(s, 1, "p50"), 4) for s in candidates},
            "accuracy": {str(s): subnets[s].accuracy for s in candidates},
        },
    }
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["serving"] = serving
    if "anchors" in report:  # a demo report: JSON and its markdown summary
        from elastic.demo.report import write_report

        write_report(report_path, report, markdown=True)
    else:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(report_path, report)

    print(format_summary(serving))
    print(f"wrote 'serving' to {report_path}")
    return 0


def format_summary(s: dict[str, Any]) -> str:
    def pct(v: float) -> str:
        return f"{100 * v:.1f} %"

    p50, p99 = s["latency_ms"]["p50"], s["latency_ms"]["p99"]
    lat = f"{p50:.2f} / {p99:.2f} ms" if p50 is not None and not math.isnan(p50) else "-"
    lines = [
        f"requests            {s['requests']}",
        f"SLO attainment      {pct(s['slo_attainment'])}",
        f"effective accuracy  {pct(s['effective_accuracy'])}  (correct and on time, of all)",
        f"answered accuracy   {pct(s['answered_accuracy'])}  (correct among answered)",
        f"rejected / shed     {s['rejected']} / {s['shed']}",
        f"late / errors       {s['late']} / {s['errors']}",
        f"latency p50 / p99   {lat}",
        "subnet  requests  accuracy",
    ]
    for sid, n in s["per_subnet_counts"].items():
        acc = s["profile"]["accuracy"].get(sid)
        lines.append(f"{sid:>6}  {n:>8}  {pct(acc) if acc is not None else '-':>8}")
    return "\n".join(lines)
