"""`elastic demo`: the main job on real data — train anchors on Fashion-MNIST, stitch, report.

Runs `elastic.demo.pipeline.run_demo` (SN-Net, Pan et al., CVPR 2023, over a timm ViT family it
trains itself) and prints the subnet table; the files land in `--out`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import time

# --builder NAME -> the module whose `run_builder_demo(args, on_stage) -> str` runs that builder's
# demo and returns the summary to print;
# "stitched" (SN-Net) is this file's own `run`
_DEFAULTS: dict[str, dict] = {}  # the demo parser's defaults, to rebuild the command line

BUILDER_DEMOS = {
    "stitched": None,
    "sorted": "elastic.demo.sorted",
    "learngene": "elastic.demo.learngene",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train ViT anchors on Fashion-MNIST, stitch them (SN-Net), report accuracy/FLOPs/latency",
        description="Train three timm ViTs (DeiT Ti/S/B shapes, sized for 28x28) on Fashion-MNIST, "
        "stitch them into an SN-Net, train it, and evaluate and time every subnet. "
        "Writes DIR/report.json, DIR/pareto.png and the model in DIR/model/.",
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller anchors, a data subset and fewer epochs (a few minutes)"
    )
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument(
        "--data",
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: $ELASTIC_DATA or /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--epochs", type=float, default=None, help="epochs of each anchor's training")
    p.add_argument("--stitch-epochs", type=float, default=None, help="epochs of SN-Net training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="anchor cache folder (default: $ELASTIC_CACHE or ~/.cache/elastic)")
    p.add_argument("--no-cache", action="store_true", help="train the anchors even if cached; store nothing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores, at least 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--builder",
        choices=sorted(BUILDER_DEMOS),
        default="stitched",
        help="which builder's demo: stitched (SN-Net, default), sorted (SortedNet), learngene (Learngene Pool)",
    )
    p.set_defaults(func=run)
    _DEFAULTS["demo"] = {k: v for k, v in vars(p.parse_args([])).items() if k != "func"}


def invocation(args: argparse.Namespace) -> str:
    """The command that ran, rebuilt from the parsed options that differ from the defaults
    (`elastic demo --quick --out DIR`), prefixed "make demo:" when `make` ran it."""
    defaults = _DEFAULTS.get("demo", {})
    words = ["elastic", "demo"]
    for key, value in vars(args).items():
        if key == "func" or key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    line = shlex.join(words)
    return f"make demo: {line}" if os.environ.get("MAKELEVEL") else line


def run(args: argparse.Namespace) -> int:
    from elastic.cli import require_writable_dir

    require_writable_dir(args.out)  # fails now, not after minutes of training
    module = BUILDER_DEMOS[getattr(args, "builder", "stitched")]
    if module is not None:
        t0 = time.perf_counter()

        def on_stage(name: str) -> None:
            print(f"[{time.perf_counter() - t0:6.0f} s] {name}", flush=True)

        print(importlib.import_module(module).run_builder_demo(args, on_stage))
        return 0
    from elastic.demo.pipeline import DemoConfig, run_demo
    from elastic.demo.report import format_table, summary_lines

    overrides = {"seed": args.seed}
    if args.epochs is not None:
        overrides["anchor_epochs"] = args.epochs
    if args.stitch_epochs is not None:
        overrides["stitch_epochs"] = args.stitch_epochs
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig.full(**overrides)
    t0 = time.perf_counter()

    def on_stage(name: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {name}", flush=True)

    report = run_demo(
        cfg,
        out=args.out,
        data_root=args.data,
        cache_dir=args.cache,
        use_cache=not args.no_cache,
        progress=not args.no_progress,
        on_stage=on_stage,
        threads=args.threads,
        command=invocation(args),
    )
    print()
    print(
        f"{len(report['subnets'])} subnets on {report['dataset']['eval_images']} "
        f"{report['dataset']['eval_split']} images (FLOPs per image; * = accuracy/FLOPs Pareto front; "
        f"latency = median ms on this CPU)"
    )
    print(format_table(report))
    print()
    for line in summary_lines(report):
        print(line)
    print(f"wrote {args.out}/report.json, {args.out}/pareto.png, {args.out}/model/")
    return 0
