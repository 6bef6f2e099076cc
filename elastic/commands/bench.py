"""`elastic bench <suite>`: run one benchmark suite (see bench/README.md)."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    from elastic.bench import SUITES

    p = sub.add_parser("bench", help="run a latency benchmark suite and write its results")
    p.add_argument("suite", choices=SUITES + ["all"], help="which suite ('all' runs each in turn)")
    p.add_argument("--model", default=None, help="saved model directory (default: out/demo/model)")
    p.add_argument("--out", default="bench/results", help="where <suite>.json / .md / .png go")
    p.add_argument("--quick", action="store_true", help="fewer repeats and loads (minutes, not tens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scenario",
        choices=["all", "demo", "deit"],
        default="all",
        help="load, pricing, margin, ride_along, refit: which scenario (default: both)",
    )
    p.add_argument(
        "--simulate", action="store_true", help="load: only the simulated sweep (virtual clock), no real runs"
    )
    p.add_argument(
        "--no-preempt",
        action="store_true",
        help="load: batches never pause at block boundaries for urgent requests, real and simulated "
        "(Runtime(preempt=False); by default they do, serving/preemption.py)",
    )
    p.add_argument(
        "--executor",
        choices=["eager", "process", "traced", "traced_staged"],
        default="eager",
        help="load: how real runs execute forwards (default eager; process: in a child process, off the "
        "interpreter lock; traced: one TorchScript graph per subnet, run without the lock, so batches cannot "
        "pause; traced_staged: one graph per stage, so they can)",
    )
    p.add_argument(
        "--patterns",
        default=None,
        help="load: only these arrival patterns, comma-separated (poisson, on_off; default both)",
    )
    p.add_argument(
        "--loads",
        default=None,
        help="load: real runs at exactly these loads, comma-separated (x the largest anchor's served "
        "capacity; default 0.25,1,1.5,2,3, --quick 0.5,2, plus the middle range's middle when none lies in it)",
    )
    p.add_argument("--repeats", type=int, default=None, help="load: seeds per real point (default 5; --quick 3)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for every suite (default 1: on a small CPU two teams of two make GNU "
        "OpenMP throttle its barrier spin and forwards run 3-6x slower, docs/serving.md 'Worker threading'; "
        "0 keeps torch's default)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elastic.bench import SUITES
    from elastic.checkpoint import read_manifest
    from elastic.cli import require_writable_dir

    # user errors end the command here (exit 2), before any suite runs
    if args.model is not None:
        read_manifest(args.model)  # a missing or malformed --model
    require_writable_dir(args.out)
    for option in ("no_preempt", "patterns", "loads", "repeats"):
        if getattr(args, option, None) not in (None, False) and args.suite != "load":
            from elastic.errors import ConfigError

            raise ConfigError(f"--{option.replace('_', '-')} goes with the load suite only")
    if args.suite == "load":
        from elastic.bench.load import FULL, QUICK, focused

        focused(QUICK if args.quick else FULL, args.patterns, args.loads, args.repeats)  # exit 2 now, not later
    suites = SUITES if args.suite == "all" else [args.suite]
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    argv = sys.argv[1:]
    options = argv[argv.index(args.suite) + 1 :] if args.suite in argv else []
    for suite in suites:
        args.command = "elastic bench " + shlex.join([suite, *options])
        t0 = time.perf_counter()
        result = importlib.import_module(f"elastic.bench.{suite}").run(args)
        print(f"## {suite} ({time.perf_counter() - t0:.0f} s)\n\n{result['table']}\n")
    return 0
