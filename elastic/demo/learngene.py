"""`elastic demo --builder learngene`: Learngene Pool (Shi et al., AAAI 2024) on Fashion-MNIST.

The demo's largest SN-Net anchor (vit-b: width 64, depth 6) is the ancestor. It comes from
the SN-Net demo's anchor cache when that holds it (`pipeline.load_anchors`), else from this
demo's own teacher cache, else it is trained here with the SN-Net demo's recipe and seed
(bit-for-bit the same initialisation: the whole family is built, only vit-b is trained).
Then:

1. distil it into three auxiliary ViTs of half its depth and widths 16 / 32 / 64
   (`LearngenePool.distill`, resumable cache);
2. build the pool: every auxiliary model alone plus the paired-stitching descendants, the
   stitches initialised from the distillation's width transforms; the accuracy of the
   transform init and of SN-Net's least-squares init is measured before fine-tuning;
3. fine-tune the pool one uniformly drawn descendant per step, distilling from the teacher;
4. evaluate every descendant on the test set, time it, save the pool;
5. compare with SN-Net: stored weight bytes against the SN-Net family that covers the same
   FLOPs range, and accuracy against the SN-Net demo's Pareto front (`results/demo/report.json`).

Writes `OUT/report.json`, `OUT/report.md` and the model in `OUT/model/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from elastic import provenance
from elastic.anchors import AnchorFamily, read_state_dict
from elastic.builders.learngene import LearngenePool
from elastic.builders.learngene_distill import DistillConfig
from elastic.builders.stitched import StitchedNet
from elastic.checkpoint import atomic_write, atomic_write_json, save
from elastic.demo.data import fingerprint
from elastic.demo.evaluate import accuracy, evaluate_subnets
from elastic.demo.latency import measure_latency
from elastic.demo.pipeline import (
    TIMM_NAME,
    DemoConfig,
    StageTimer,
    anchor_fit_config,
    cache_root,
    default_threads,
    load_anchors,
    split_data,
)
from elastic.demo.report import format_table, subnet_rows, write_report
from elastic.demo.train import FitConfig, fit
from elastic.subnet import Subnet, pareto

log = logging.getLogger(__name__)

# stitch inits compared before fine-tuning: the paper's from the width transforms (pseudo-inverse,
# or the transpose the official code copies), SN-Net's least squares, and nn.Linear's default
# DemoConfig fields that must agree for the SN-Net report's front to be comparable
SAME_CONFIG = ("widths", "depth", "anchor_epochs", "train_size", "test_size", "val_size", "seed")
STITCH_INITS = ("random", "least_squares", "transforms_transpose", "transforms")

SNNET_REPORT = Path("results/demo/report.json")
DEFAULT_OUT = "out/demo"  # the `elastic demo --out` default; this demo then writes out/learngene


@dataclass
class LearngeneConfig:
    """The Learngene stage (saved in report.json); the teacher comes from `DemoConfig`."""

    widths: tuple[int, ...] = (16, 32, 64)  # auxiliary models' widths (the teacher's is 64)
    depth: int | None = None  # auxiliary models' depth; None = half the teacher's (paper: 6 of 12)
    distill_epochs: float = 2.0  # epochs of distillation
    positions: int = 3  # matched block positions per student (official "[front,end]")
    alpha: float = 0.1  # label cross-entropy weight in distillation (official 0.1)
    nearest: bool = True  # stitch neighbouring auxiliary models only
    stitch_init: str = "transforms"  # one of STITCH_INITS: the pool keeps this one
    finetune_epochs: float = 3.0  # epochs of pool fine-tuning (one descendant per step)
    finetune_lr: float = 1e-3  # auxiliary blocks' peak learning rate while fine-tuning
    stitch_lr: float = 2e-3  # stitching layers' peak learning rate
    distill_alpha: float = 0.5  # teacher-logit distillation weight while fine-tuning
    init_eval_images: int = 2000  # test images for the before-fine-tuning init comparison (0 = skip)
    calibration_size: int = 256  # training images for the least-squares init


def student_specs(cfg: DemoConfig, lg: LearngeneConfig) -> list[tuple[str, dict[str, Any], str]]:
    """(timm name, kwargs, label) of the auxiliary models: the demo's ViT, narrower and shallower."""
    depth = lg.depth or max(1, cfg.depth // 2)
    return [
        (
            TIMM_NAME,
            dict(
                embed_dim=w,
                num_heads=max(1, w // cfg.head_dim),
                depth=depth,
                img_size=28,
                patch_size=cfg.patch_size,
                in_chans=1,
                num_classes=10,
            ),
            f"aux-{w}x{depth}",
        )
        for w in lg.widths
    ]


# ---- the teacher --------------------------------------------------------------------------
def teacher_anchor(cfg: DemoConfig, train, evalset, data_root, cache_dir, use_cache: bool, progress: bool):
    """The demo's largest anchor, trained: (adapter, info), from a cache when possible."""
    key = cfg.anchor_key(fingerprint(data_root))
    root = cache_root(cache_dir)
    label = cfg.labels[-1]
    if use_cache:
        cached = load_anchors(cfg, root / "anchors" / key)
        if cached is not None:
            family, meta = cached
            info = {
                "source": "sn-net anchor cache",
                "key": key,
                "accuracy": meta.get("accuracy", {}).get(label),
                "seconds": meta.get("seconds", {}).get(label),
            }
            return family[len(family) - 1], info
        own = root / "learngene" / "teacher" / key
        if (own / "meta.json").is_file():
            try:
                family = _family(cfg)
                family[len(family) - 1].model.load_state_dict(read_state_dict(own / f"{label}.safetensors"))
                meta = json.loads((own / "meta.json").read_text())
                return family[len(family) - 1], {"source": "learngene teacher cache", "key": key, **meta}
            except (OSError, ValueError, RuntimeError) as e:
                log.warning("ignoring the teacher cache in %s: %s", own, e)
    family = _family(cfg)
    k = len(family) - 1
    teacher = family[k]
    t0 = time.perf_counter()
    fit(teacher.model, train, cfg.anchor_epochs, anchor_fit_config(cfg, k, progress))
    meta = {"seconds": round(time.perf_counter() - t0, 1), "accuracy": accuracy(teacher.model, *evalset)}
    if use_cache:
        from safetensors.torch import save_file

        own = root / "learngene" / "teacher" / key
        own.mkdir(parents=True, exist_ok=True)
        tmp = own / f".{label}.safetensors.tmp"
        save_file({n: t.detach().cpu().contiguous() for n, t in teacher.model.state_dict().items()}, str(tmp))
        os.replace(tmp, own / f"{label}.safetensors")
        atomic_write_json(own / "meta.json", meta)
    return teacher, {"source": "trained here", "key": key, **meta}


def _family(cfg: DemoConfig) -> AnchorFamily:
    torch.manual_seed(cfg.seed)  # as pipeline.train_anchors: the same initial weights
    return AnchorFamily.from_timm(cfg.anchor_specs())


# ---- comparison with SN-Net ---------------------------------------------------------------
def snnet_family_bytes(cfg: DemoConfig, max_flops: int) -> dict[str, Any]:
    """Stored bytes of the SN-Net family (the demo's anchors + stitches) covering up to `max_flops`.

    The cheapest anchors up to the first one at least as costly as `max_flops` (an SN-Net
    reaches no further than its largest anchor), built as `StitchedNet` with the demo's
    defaults; random weights: only the sizes count.
    """
    specs = cfg.anchor_specs()
    torch.manual_seed(0)
    full = AnchorFamily.from_timm(specs)
    flops = [c.flops for c in full.costs]
    n = next((i + 1 for i, f in enumerate(flops) if f >= max_flops), len(flops))
    family = AnchorFamily.from_timm(specs[:n]) if n < len(specs) else full
    net = StitchedNet(family) if n > 1 else None
    state = net.state_dict() if net is not None else family[0].model.state_dict()
    return {
        "anchors": [a.name for a in family],
        "anchor_flops": flops[:n],
        "bytes": sum(t.numel() * t.element_size() for t in state.values()),
    }


def pareto_points(report: dict[str, Any]) -> list[tuple[int, float]]:
    """(FLOPs, accuracy) of a report's Pareto front, cheapest first."""
    by_id = {s["id"]: s for s in report["subnets"]}
    return sorted((by_id[i]["flops"], by_id[i]["accuracy"]) for i in report["pareto"])


def compare_fronts(subnets: list[Subnet], snnet: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """For each pool Pareto descendant: SN-Net's best accuracy at no more FLOPs (None below its range)."""
    by_id = {s.id: s for s in subnets}
    rows = []
    for sid in pareto(subnets):
        s = by_id[sid]
        best = max((a for f, a in snnet if f <= s.flops), default=None)
        rows.append(
            {
                "id": sid,
                "description": s.description,
                "flops": s.flops,
                "accuracy": s.accuracy,
                "snnet_best_at_or_below": best,
                "delta_points": None if best is None else round(100 * (s.accuracy - best), 2),
            }
        )
    return rows


# ---- the demo -----------------------------------------------------------------------------
def run_learngene_demo(
    cfg: DemoConfig,
    lg: LearngeneConfig,
    out: str | Path,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = False,
    on_stage=None,
    threads: int | None = None,
    snnet_report: str | Path = SNNET_REPORT,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the whole Learngene demo; returns the report written to `out/report.json`."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        return _run(
            cfg, lg, Path(out), data_root, cache_dir, use_cache, progress, StageTimer(on_stage), snnet_report, command
        )
    finally:
        torch.set_num_threads(saved_threads)


def _run(cfg, lg, out: Path, data_root, cache_dir, use_cache, progress, timer, snnet_report, command):
    out.mkdir(parents=True, exist_ok=True)
    commit = provenance.commit()  # the code this run starts with
    load_before = os.getloadavg()
    threads = torch.get_num_threads()

    timer.start("data")
    train, evalset, split = split_data(cfg, data_root)

    timer.start("teacher")
    teacher, teacher_info = teacher_anchor(cfg, train, evalset, data_root, cache_dir, use_cache, progress)
    teacher.eval().requires_grad_(False)
    teacher_info["eval_accuracy"] = accuracy(teacher.model, *evalset)

    timer.start("distill")
    specs = student_specs(cfg, lg)
    torch.manual_seed(cfg.seed + 200)
    recipe = DistillConfig(
        batch_size=cfg.batch_size,
        lr=cfg.anchor_lr,
        weight_decay=cfg.weight_decay,
        alpha=lg.alpha,
        positions=lg.positions,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        seed=cfg.seed,
    )
    pick = torch.randperm(train[0].shape[0], generator=torch.Generator().manual_seed(cfg.seed + 7))
    calibration = train[0][pick[: lg.calibration_size]]
    pool = LearngenePool.distill(
        teacher.model,
        specs,
        train,
        lg.distill_epochs,
        recipe,
        cache_dir=cache_root(cache_dir) / "learngene" / "distill" if use_cache else None,
        progress=progress,
        stitch_init="random",
        nearest=lg.nearest,
    )
    distilled = pool.distill_result
    student_accuracy = {a.name: accuracy(a.model, *evalset) for a in pool.family}

    timer.start("stitch_init")
    init_accuracy = {}
    n_init = min(lg.init_eval_images, evalset[0].shape[0])
    inits = [i for i in STITCH_INITS if i != lg.stitch_init] + [lg.stitch_init]
    for init in inits:  # the chosen init last, so the pool keeps it
        if init.startswith("transforms"):
            inverse = "transpose" if init == "transforms_transpose" else "pinv"
            pool.init_stitches_from_transforms(distilled.transforms, inverse)
        elif init == "least_squares":
            pool.init_stitches(calibration)
        else:
            torch.manual_seed(cfg.seed + 300)
            for layer in pool.stitches.values():
                layer.reset_parameters()
        if n_init > 0:
            acc = evaluate_subnets(pool, evalset[0][:n_init], evalset[1][:n_init], progress=False, store=False)
            init_accuracy[init] = _stitched_summary(pool, acc)

    timer.start("finetune")
    fine = FitConfig(
        batch_size=cfg.batch_size,
        lr=lg.finetune_lr,
        stitch_lr=lg.stitch_lr,
        weight_decay=cfg.weight_decay,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        sampling="uniform",
        distill_alpha=lg.distill_alpha,
        seed=cfg.seed + 100,
        progress=progress,
        description="pool fine-tuning",
    )
    history = fit(pool, train, lg.finetune_epochs, fine, teacher=teacher.model) if lg.finetune_epochs > 0 else {}

    timer.start("evaluate")
    evaluate_subnets(pool, *evalset, progress=progress)
    subnets = pool.subnets()

    timer.start("latency")
    latency = measure_latency(pool, cfg.latency_batch_sizes, cfg.latency_repeats, progress=progress)

    timer.start("save")
    save(pool, out / "model")
    timings = timer.stop()

    snnet = json.loads(Path(snnet_report).read_text()) if Path(snnet_report).is_file() else None
    max_flops = max(s.flops for s in subnets)
    family_bytes = snnet_family_bytes(cfg, max_flops)
    pool_bytes = pool.weight_bytes()
    smallest_anchor = min(a["flops"] for a in snnet["anchors"]) if snnet else None
    comparison: dict[str, Any] = {
        "pool_weight_bytes": pool_bytes,
        "snnet_family_covering_range": family_bytes,
        "bytes_ratio": round(pool_bytes / family_bytes["bytes"], 4),
        "bytes_goal": 0.65,
        "pool_flops_range": [min(s.flops for s in subnets), max_flops],
    }
    if snnet is not None:
        points = pareto_points(snnet)
        same = {k: snnet.get("config", {}).get(k) for k in SAME_CONFIG} == json.loads(
            json.dumps({k: asdict(cfg)[k] for k in SAME_CONFIG})
        )
        if not same:
            log.warning("%s comes from another demo configuration: its front is not comparable", snnet_report)
        comparison.update(
            snnet_report=str(snnet_report),
            snnet_same_demo_config=same,
            snnet_commit=snnet.get("commit"),
            snnet_pareto=[{"flops": f, "accuracy": a} for f, a in points],
            snnet_smallest_anchor_flops=smallest_anchor,
            smaller_than_smallest_anchor=[s.id for s in subnets if s.flops < smallest_anchor],
            front=compare_fronts(subnets, points),
        )

    report: dict[str, Any] = {
        "command": command,
        "commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "builder": "LearngenePool",
        "dataset": {
            "name": "fashion-mnist",
            "eval_split": split,
            "train_images": int(train[0].shape[0]),
            "eval_images": int(evalset[0].shape[0]),
        },
        "teacher": {"name": teacher.name, "flops": _flops(teacher), **teacher_info},
        "auxiliary_models": [
            {"name": a.name, "spec": s, "accuracy_after_distillation": student_accuracy[a.name]}
            for a, s in zip(pool.family, [sp.to_dict() for sp in pool.family.specs], strict=True)
        ],
        "subnets": subnet_rows(subnets, latency),
        "pareto": pareto(subnets),
        "comparison": comparison,
        "training": {
            "distill_loss_per_epoch": distilled.history,
            "distill_resumed_from_epoch": distilled.resumed_from_epoch,
            "stitch_init_accuracy_before_finetune": init_accuracy,
            "finetune_loss_per_epoch": history.get("loss"),
            "finetune_subnet_steps": history.get("subnet_steps"),
        },
        "timings": timings,
        "config": {"demo": asdict(cfg), "learngene": asdict(lg)},
        "environment": {
            "torch": torch.__version__,
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_start": [round(v, 2) for v in load_before],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "flops_unit": "FLOPs per image (not MACs), fused attention off while counting",
        "model": "model",
    }
    write_report(out / "report.json", report)
    atomic_write(out / "report.md", markdown(report).encode())
    return report


def _stitched_summary(pool: LearngenePool, acc: dict[int, float]) -> dict[str, float]:
    stitched = [acc[s.id] for s in pool.subnets() if pool.path(s) is not None]
    return {
        "stitched_mean": round(sum(stitched) / len(stitched), 4) if stitched else None,
        "stitched_min": round(min(stitched), 4) if stitched else None,
        "stitched_max": round(max(stitched), 4) if stitched else None,
    }


def _flops(adapter) -> int:
    from elastic.anchors import measure_pieces

    return measure_pieces(adapter).flops


def markdown(report: dict[str, Any]) -> str:
    """The report's descendant table and SN-Net comparison as markdown."""
    cmp = report["comparison"]
    front = set(report["pareto"])
    data = report["dataset"]
    lines = [
        f"# Learngene Pool on Fashion-MNIST ({data['eval_images']} {data['eval_split']} images)",
        "",
        f"`{report['command']}` — commit {report['commit']}, {report['date']}",
        "",
        f"Teacher {report['teacher']['name']} ({report['teacher']['source']}): "
        f"{100 * report['teacher']['eval_accuracy']:.2f}% at {report['teacher']['flops'] / 1e6:.2f} MFLOPs.",
        "",
        "| id | descendant | MFLOPs | params | acc % | Pareto |",
        "|---:|---|---:|---:|---:|:---:|",
    ]
    for s in report["subnets"]:
        acc = f"{100 * s['accuracy']:.2f}" if s.get("accuracy") is not None else "-"
        mark = "*" if s["id"] in front else ""
        lines.append(f"| {s['id']} | {s['description']} | {s['flops'] / 1e6:.2f} | {s['params']:,} | {acc} | {mark} |")
    fam = cmp["snnet_family_covering_range"]
    lines += [
        "",
        f"Stored weights: pool {cmp['pool_weight_bytes']:,} B vs SN-Net family {' + '.join(fam['anchors'])} "
        f"(+ stitches) {fam['bytes']:,} B = **{cmp['bytes_ratio']:.2f}x** (goal <= {cmp['bytes_goal']}x).",
    ]
    if "front" in cmp:
        small = cmp["smaller_than_smallest_anchor"]
        lines += [
            f"Descendants below SN-Net's smallest anchor ({cmp['snnet_smallest_anchor_flops'] / 1e6:.2f} MFLOPs): "
            f"{len(small)} (ids {', '.join(map(str, small)) or '-'}).",
            "",
            *(
                []
                if cmp.get("snnet_same_demo_config", True)
                else [f"**{cmp['snnet_report']} comes from another demo configuration: not comparable.**", ""]
            ),
            *(
                [
                    f"SN-Net front from {cmp['snnet_report']} (commit {cmp.get('snnet_commit')}); comparison redone "
                    f"by `{cmp['redone']['command']}` at {cmp['redone']['date']}.",
                    "",
                ]
                if cmp.get("redone")
                else []
            ),
            "| pool Pareto descendant | MFLOPs | acc % | SN-Net front at <= FLOPs | delta (points) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in cmp["front"]:
            best = f"{100 * r['snnet_best_at_or_below']:.2f}" if r["snnet_best_at_or_below"] is not None else "none"
            delta = f"{r['delta_points']:+.2f}" if r["delta_points"] is not None else "-"
            lines.append(
                f"| {r['description']} | {r['flops'] / 1e6:.2f} | {100 * r['accuracy']:.2f} | {best} | {delta} |"
            )
    return "\n".join(lines) + "\n"


def _command(args: argparse.Namespace, out: str) -> str:
    """The `elastic demo` command line these arguments stand for."""
    argv = ["elastic", "demo", "--builder", "learngene"] + (["--quick"] if args.quick else [])
    for flag, value in (("--epochs", args.epochs), ("--stitch-epochs", args.stitch_epochs)):
        if value is not None:
            argv += [flag, str(value)]
    if args.seed:
        argv += ["--seed", str(args.seed)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return shlex.join(argv + ["--out", out] + (["--no-cache"] if args.no_cache else []))


def run_builder_demo(args: argparse.Namespace, on_stage: Callable[[str], None] | None = None) -> str:
    """`elastic demo --builder learngene`: options as `elastic demo`; `--stitch-epochs` sets
    the pool's fine-tuning epochs, `--epochs` the teacher's (when it is trained here). Returns
    the summary the CLI prints."""
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.epochs is not None:
        overrides["anchor_epochs"] = args.epochs
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig.full(**overrides)
    lg = LearngeneConfig()
    if args.quick:
        lg = replace(lg, distill_epochs=1.0, finetune_epochs=0.5, init_eval_images=1000)
    if args.stitch_epochs is not None:
        lg = replace(lg, finetune_epochs=args.stitch_epochs)
    out = "out/learngene" if args.out == DEFAULT_OUT else args.out
    report = run_learngene_demo(
        cfg,
        lg,
        out,
        data_root=args.data,
        cache_dir=args.cache,
        use_cache=not args.no_cache,
        progress=not args.no_progress,
        on_stage=on_stage,
        threads=args.threads,
        command=_command(args, out),
    )
    summary = markdown(report).split("\n\n", 3)[-1]
    return f"\n{format_table(report)}\n\n{summary}\nwrote {out}/report.json, {out}/report.md, {out}/model/"


def refresh_snnet_comparison(report_path: str | Path, snnet_report: str | Path = SNNET_REPORT) -> dict[str, Any]:
    """Redo a saved pool report's comparison with SN-Net's Pareto front against another SN-Net
    demo report, without retraining (the pool's accuracies are the saved ones); records the SN-Net
    report's commit and when the comparison was redone. Rewrites report.json and report.md."""
    path = Path(report_path)
    report = json.loads(path.read_text())
    snnet = json.loads(Path(snnet_report).read_text())
    subnets = [
        Subnet(s["id"], s["kind"], s["description"], s["flops"], s["params"], s["accuracy"]) for s in report["subnets"]
    ]
    points = pareto_points(snnet)
    smallest_anchor = min(a["flops"] for a in snnet["anchors"])
    demo_cfg = report["config"]["demo"]
    report["comparison"].update(
        snnet_report=Path(snnet_report).as_posix(),
        snnet_same_demo_config={k: snnet.get("config", {}).get(k) for k in SAME_CONFIG}
        == {k: demo_cfg.get(k) for k in SAME_CONFIG},
        snnet_commit=snnet.get("run", {}).get("commit") or snnet.get("commit"),
        snnet_pareto=[{"flops": f, "accuracy": a} for f, a in points],
        snnet_smallest_anchor_flops=smallest_anchor,
        smaller_than_smallest_anchor=[s.id for s in subnets if s.flops < smallest_anchor],
        front=compare_fronts(subnets, points),
        redone={
            "command": f"python -m elastic.demo.learngene {path.as_posix()} {Path(snnet_report).as_posix()}",
            "commit": provenance.commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    write_report(path, report)
    atomic_write(path.with_suffix(".md"), markdown(report).encode())
    return report


if __name__ == "__main__":  # python -m elastic.demo.learngene POOL_REPORT [SNNET_REPORT]
    refresh_snnet_comparison(*sys.argv[1:3])
