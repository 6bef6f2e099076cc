"""`elastic demo --builder sorted`: SortedNet (Valipour et al., 2023) on Fashion-MNIST.

Starts from the SN-Net demo's largest anchor (`elastic.demo.pipeline`: the cached one when
the SN-Net demo has trained it, else trained here with the same `DemoConfig` recipe), and:

1. slices it into a grid of nested subnets (`SortedNet`) and evaluates them as they are;
2. reorders heads, MLP units and embedding channels by Taylor importance (DynaBERT) on
   training images — the full network's output does not change — and evaluates again
   ("sliced before training");
3. trains all subnets at once with the sandwich rule and in-place distillation
   (`elastic.demo.sorted_train`), evaluates every subnet on the test images and times it;
4. compares with SN-Net's accuracy/FLOPs front from the SN-Net demo's report and with its
   weight bytes, and writes `report.json`, `report.md` and the saved model.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from elastic import provenance
from elastic.anchors import AnchorFamily, AnchorSpec, create_anchor, read_state_dict
from elastic.builders.sorted import SortedNet
from elastic.checkpoint import atomic_write, atomic_write_json, save
from elastic.demo.data import fingerprint
from elastic.demo.evaluate import accuracy
from elastic.demo.latency import measure_latency
from elastic.demo.pipeline import (
    DemoConfig,
    StageTimer,
    anchor_fit_config,
    cache_root,
    default_threads,
    load_anchors,
    split_data,
)
from elastic.demo.sorted_train import SortedFitConfig, fit_sorted
from elastic.demo.train import fit
from elastic.subnet import pareto

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SNNET_REPORTS = (REPO / "results" / "demo" / "report.json", Path("out/demo/report.json"))
WEIGHT_GOAL = 0.35  # issue 13: SortedNet weight bytes / SN-Net weight bytes, same FLOPs range


@dataclass
class SortedDemoConfig:
    """The SortedNet stage (the anchor comes from `DemoConfig`); saved in report.json."""

    depth_drop: tuple[int, ...] = (2, 1, 0)  # depths kept: anchor depth minus each of these
    widths: tuple[int, ...] = (16, 32, 48, 64)  # embedding widths (multiples of the head width 16)
    mlp_ratios: tuple[float, ...] = (2.0, 4.0)  # MLP hidden units per embedding channel
    importance: str = "taylor"  # "taylor" (DynaBERT) or "magnitude" (OFA) or "none"
    importance_images: int = 2048  # training images for the Taylor scores
    epochs: float = 3.0  # epochs of sorted training
    lr: float = 1e-3  # its peak learning rate
    schedule: str = "sandwich"  # "sandwich" or "sorted" (SortedNet's sampling)
    random_subnets: int = 2  # k random subnets per step besides the largest and smallest
    distill_alpha: float = 1.0  # in-place distillation weight for the non-largest subnets
    batch_size: int = 256
    latency_repeats: int = 11

    @classmethod
    def quick(cls, **overrides: Any) -> SortedDemoConfig:
        return replace(cls(epochs=1.0, importance_images=512, latency_repeats=3), **overrides)


def run_builder_demo(args: argparse.Namespace, on_stage: Callable[[str], None] | None = None) -> str:
    """The CLI's entry (`elastic demo --builder sorted`): runs the demo, returns the summary
    the CLI prints."""
    out = Path("out/sorted" if args.out == "out/demo" else args.out)  # never overwrite SN-Net's demo
    overrides: dict[str, Any] = {"seed": args.seed}
    if args.epochs is not None:
        overrides["anchor_epochs"] = args.epochs
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig.full(**overrides)
    scfg = SortedDemoConfig.quick() if args.quick else SortedDemoConfig()
    if args.stitch_epochs is not None:
        scfg = replace(scfg, epochs=args.stitch_epochs)
    report = run_sorted_demo(
        cfg,
        scfg,
        out,
        data_root=args.data,
        cache_dir=args.cache,
        use_cache=not args.no_cache,
        progress=not args.no_progress,
        on_stage=on_stage,
        threads=args.threads,
        command=" ".join(["elastic", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("elastic") else None,
    )
    return f"\n{markdown(report)}\nwrote {out}/report.json, {out}/report.md, {out}/model/"


def run_sorted_demo(
    cfg: DemoConfig,
    scfg: SortedDemoConfig,
    out: str | Path = "out/sorted",
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = False,
    on_stage=None,
    threads: int | None = None,
    command: str | None = None,
    snnet_report: str | Path | None = None,
) -> dict[str, Any]:
    """Run the SortedNet demo; returns the report it writes to `out/report.json`."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        return _run(
            cfg, scfg, Path(out), data_root, cache_dir, use_cache, progress, StageTimer(on_stage), command, snnet_report
        )
    finally:
        torch.set_num_threads(saved_threads)


def largest_anchor(cfg: DemoConfig, train, evalset, data_fp: str, cache_dir, use_cache: bool, progress: bool):
    """(timm model, spec, info) of the demo family's largest anchor: cached or trained here.

    Looks in the SN-Net demo's anchor cache first, then in this demo's own cache
    (`<cache>/sorted-anchor/<key>/`), else builds the whole family exactly as the SN-Net demo
    does (same seed, so the same initial weights) and trains only the largest anchor with the
    same recipe, caching it in this demo's own folder (never in the SN-Net family cache,
    which must hold all three trained anchors).
    """
    key = cfg.anchor_key(data_fp)
    k = len(cfg.labels) - 1
    name, kwargs, label = cfg.anchor_specs()[k]
    spec = AnchorSpec(name, kwargs, label)
    family_dir = cache_root(cache_dir) / "anchors" / key
    own_dir = cache_root(cache_dir) / "sorted-anchor" / key
    if use_cache:
        cached = load_anchors(cfg, family_dir)
        if cached is not None:
            family, _meta = cached
            return family[k].model, spec, {"source": str(family_dir)}
        weights = own_dir / f"{label}.safetensors"
        if weights.is_file():
            model = create_anchor(name, False, **kwargs)
            model.load_state_dict(read_state_dict(weights))
            return model, spec, {"source": str(own_dir)}
    torch.manual_seed(cfg.seed)
    family = AnchorFamily.from_timm(cfg.anchor_specs())
    model = family[k].model
    t0 = time.perf_counter()
    fit(model, train, cfg.anchor_epochs, anchor_fit_config(cfg, k, progress))
    info = {"source": "trained here", "seconds": round(time.perf_counter() - t0, 1)}
    if use_cache:
        from safetensors.torch import save_file

        own_dir.mkdir(parents=True, exist_ok=True)
        tmp = own_dir / f".{label}.safetensors.tmp"
        save_file({n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}, str(tmp))
        os.replace(tmp, own_dir / f"{label}.safetensors")
    return model, spec, info


def _run(cfg, scfg, out: Path, data_root, cache_dir, use_cache, progress, timer: StageTimer, command, snnet_report):
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    timer.start("data")
    train, evalset, split = split_data(cfg, data_root)
    data_fp = fingerprint(data_root)

    timer.start("anchor")
    model, spec, anchor_info = largest_anchor(cfg, train, evalset, data_fp, cache_dir, use_cache, progress)
    anchor_info["accuracy"] = accuracy(model, *evalset)

    timer.start("slice")
    depths = sorted({cfg.depth - d for d in scfg.depth_drop if cfg.depth - d > 0})
    net = SortedNet(model, depths=depths, widths=scfg.widths, mlp_ratios=scfg.mlp_ratios, spec=spec)
    subnets = net.subnets()
    acc_raw = evaluate_sorted(net, *evalset)

    timer.start("reorder")
    reorder = None
    acc_before = acc_raw
    if scfg.importance != "none":
        pick = torch.randperm(train[0].shape[0], generator=torch.Generator().manual_seed(cfg.seed + 11))
        pick = pick[: scfg.importance_images]
        reorder = net.reorder_by_importance(train[0][pick], train[1][pick], scfg.importance)
        acc_before = evaluate_sorted(net, *evalset)

    timer.start("sorted_train")
    fit_cfg = SortedFitConfig(
        batch_size=scfg.batch_size,
        lr=scfg.lr,
        weight_decay=cfg.weight_decay,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        schedule=scfg.schedule,
        random_subnets=scfg.random_subnets,
        distill_alpha=scfg.distill_alpha,
        seed=cfg.seed + 200,
        progress=progress,
    )
    history = fit_sorted(net, train, scfg.epochs, fit_cfg)

    timer.start("evaluate")
    net.set_accuracies(evaluate_sorted(net, *evalset))
    subnets = net.subnets()

    timer.start("latency")
    latency = measure_latency(net, (1, 8), scfg.latency_repeats, progress=progress)

    timer.start("save")
    save(net, out / "model")
    timings = timer.stop()

    rows = []
    for s in subnets:
        shape = net.shape(s)
        rows.append(
            {
                **s.to_dict(),
                "shape": asdict(shape),
                "accuracy_sliced": acc_raw[s.id],
                "accuracy_reordered": acc_before[s.id],
                "latency_ms": {str(b): round(ms, 4) for b, ms in latency[s.id].items()},
            }
        )
    report: dict[str, Any] = {
        "command": command or "elastic demo --builder sorted",
        "commit": provenance.commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "name": "fashion-mnist",
            "eval_split": split,
            "train_images": int(train[0].shape[0]),
            "eval_images": int(evalset[0].shape[0]),
            "fingerprint": data_fp[:16],
        },
        "anchor": {"name": spec.display, "kwargs": spec.kwargs, **anchor_info},
        "grid": net.config(),
        "subnets": rows,
        "pareto": pareto(subnets),
        "reorder": reorder,
        "training": {
            "loss_per_epoch": history["loss"],
            "subnet_steps": history["subnet_steps"],
            "config": asdict(fit_cfg),
        },
        "weights": weight_bytes(net),
        "snnet": compare_snnet(subnets, snnet_report, cfg),
        "timings": timings,
        "config": {"demo": asdict(cfg), "sorted": asdict(scfg)},
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_start": [round(v, 2) for v in load_before],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        },
        "flops_unit": "FLOPs per image (not MACs), fused attention off while counting",
        "model": "model",
    }
    if report["snnet"] is not None:
        sn_bytes = report["snnet"]["weight_bytes"]
        report["weights"]["snnet_bytes"] = sn_bytes
        report["weights"]["ratio_to_snnet"] = round(report["weights"]["bytes"] / sn_bytes, 4)
        report["weights"]["goal_ratio"] = WEIGHT_GOAL
        report["weights"]["goal_met"] = report["weights"]["ratio_to_snnet"] <= WEIGHT_GOAL
    atomic_write_json(out / "report.json", report)
    atomic_write(out / "report.md", (markdown(report) + "\n").encode())
    log.info("wrote %s", out / "report.json")
    return report


@torch.no_grad()
def evaluate_sorted(
    net: SortedNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> dict[int, float]:
    """Top-1 accuracy of every subnet, in eval mode, with `SortedNet.forward_all` (subnets that
    differ only in depth share their blocks).

    Shape:
        images: (N, C, H, W), labels: (N,)
    """
    was_training = net.training
    net.eval()
    correct: dict[int, int] = {}
    try:
        for start in range(0, images.shape[0], batch_size):
            y = labels[start : start + batch_size]
            for sid, logits in net.forward_all(images[start : start + batch_size]).items():
                correct[sid] = correct.get(sid, 0) + int((logits.argmax(-1) == y).sum())
    finally:
        net.train(was_training)
    return {sid: correct[sid] / images.shape[0] for sid in sorted(correct)}


def weight_bytes(net: SortedNet) -> dict[str, Any]:
    """Bytes the SortedNet keeps, and what keeping every subnet as its own model would take."""
    held = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    size = next(net.parameters()).element_size()
    separate = sum(s.params for s in net.subnets()) * size
    return {"bytes": held, "separate_models_bytes": separate, "ratio_to_separate": round(held / separate, 4)}


def compare_snnet(subnets, path: str | Path | None, cfg: DemoConfig | None = None) -> dict[str, Any] | None:
    """SN-Net's accuracy/FLOPs front from its demo report, each point against the best
    SortedNet subnet costing no more FLOPs, and SN-Net's weight bytes (its StitchedNet
    rebuilt from the report's config, random weights, counted)."""
    import json

    from elastic.builders.stitched import StitchedNet

    candidates = [Path(path)] if path is not None else list(SNNET_REPORTS)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        log.warning("no SN-Net demo report found (%s): no comparison", ", ".join(map(str, candidates)))
        return None
    sn = json.loads(found.read_text())
    sn_cfg = DemoConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in sn["config"].items()
            if k in DemoConfig.__dataclass_fields__
        }
    )
    stitched = StitchedNet(AnchorFamily.from_timm(sn_cfg.anchor_specs()), lora_rank=sn_cfg.lora_rank)
    sn_bytes = sum(t.numel() * t.element_size() for t in stitched.state_dict().values())
    by_id = {s["id"]: s for s in sn["subnets"]}
    points = []
    for sid in sn["pareto"]:
        s = by_id[sid]
        cheaper = [t for t in subnets if t.flops <= s["flops"] and t.accuracy is not None]
        best = max(cheaper, key=lambda t: (t.accuracy, -t.flops), default=None)
        points.append(
            {
                "snnet_id": sid,
                "snnet_description": s["description"],
                "flops": s["flops"],
                "snnet_accuracy": s["accuracy"],
                "sorted_id": None if best is None else best.id,
                "sorted_flops": None if best is None else best.flops,
                "sorted_accuracy": None if best is None else best.accuracy,
                "difference_points": None if best is None else round(100 * (best.accuracy - s["accuracy"]), 2),
            }
        )
    flops = [s["flops"] for s in sn["subnets"]]
    return {
        "report": str(found),
        "commit": sn.get("commit"),
        "same_anchors": cfg is not None and sn_cfg.anchor_key("") == cfg.anchor_key(""),
        "flops_range": [min(flops), max(flops)],
        "weight_bytes": sn_bytes,
        "front": points,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: subnet table, SN-Net comparison, weight bytes."""
    front = set(report["pareto"])
    a = report["anchor"]
    lines = [
        f"# SortedNet on Fashion-MNIST ({report['dataset']['eval_images']} {report['dataset']['eval_split']} images)",
        "",
        f"`{report['command']}` at commit {report['commit']}, {report['date']}. FLOPs per image (not MACs), "
        "fused attention off while counting. Anchor: "
        f"{a['name']} ({100 * a['accuracy']:.2f}% standalone, from {a['source']}).",
        "",
        "| id | subnet | MFLOPs | params | acc sliced % | acc reordered % | acc sorted-trained % | front |",
        "|---:|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in report["subnets"]:
        lines.append(
            f"| {r['id']} | {r['description']} | {r['flops'] / 1e6:.2f} | {r['params']:,} | "
            f"{100 * r['accuracy_sliced']:.2f} | {100 * r['accuracy_reordered']:.2f} | {100 * r['accuracy']:.2f} | "
            f"{'*' if r['id'] in front else ''} |"
        )
    sn = report.get("snnet")
    if sn is not None:
        lines += [
            "",
            f"SN-Net's accuracy/FLOPs front ({sn['report']}"
            + (f", commit {sn['commit']}" if sn.get("commit") else "")
            + ") against the best SortedNet subnet of no more FLOPs"
            + (
                f" (comparison redone by `{sn['redone']['command']}` at {sn['redone']['date']})"
                if sn.get("redone")
                else ""
            )
            + ":",
            "",
            "| SN-Net subnet | MFLOPs | SN-Net acc % | SortedNet subnet | MFLOPs | SortedNet acc % | points |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        names = {r["id"]: r["description"] for r in report["subnets"]}
        for p in sn["front"]:
            if p["sorted_id"] is None:
                sn_cells = f"{p['snnet_description']} | {p['flops'] / 1e6:.2f} | {100 * p['snnet_accuracy']:.2f}"
                lines.append(f"| {sn_cells} | none | | | |")
                continue
            lines.append(
                f"| {p['snnet_description']} | {p['flops'] / 1e6:.2f} | {100 * p['snnet_accuracy']:.2f} | "
                f"{names[p['sorted_id']]} | {p['sorted_flops'] / 1e6:.2f} | {100 * p['sorted_accuracy']:.2f} | "
                f"{p['difference_points']:+.2f} |"
            )
    w = report["weights"]
    lines += [
        "",
        f"Weights: SortedNet holds {w['bytes']:,} bytes; every subnet as its own model would take "
        f"{w['separate_models_bytes']:,} ({w['ratio_to_separate']:.3f}x).",
    ]
    if "ratio_to_snnet" in w:
        lines[-1] += (
            f" SN-Net over the same FLOPs range holds {w['snnet_bytes']:,} bytes: ratio {w['ratio_to_snnet']:.3f}x "
            f"(goal <= {w['goal_ratio']}x: {'met' if w['goal_met'] else 'NOT met'})."
        )
    t = report["timings"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())]
    return "\n".join(lines)


def refresh_snnet_comparison(report_path: str | Path, snnet_report: str | Path) -> dict[str, Any]:
    """Redo a saved SortedNet report's SN-Net comparison against another SN-Net demo report,
    without retraining: the SortedNet accuracies are the saved ones, SN-Net's front comes
    from `snnet_report`; the comparison records both reports' commits and when it was redone.
    Rewrites report.json and report.md beside it."""
    import json

    from elastic.subnet import Subnet

    path = Path(report_path)
    report = json.loads(path.read_text())
    subnets = [
        Subnet(s["id"], s["kind"], s["description"], s["flops"], s["params"], s["accuracy"]) for s in report["subnets"]
    ]
    cfg = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in report["config"]["demo"].items()})
    sn = compare_snnet(subnets, snnet_report, cfg)
    if sn is None:
        raise FileNotFoundError(f"no SN-Net report at {snnet_report}")
    snnet = json.loads(Path(snnet_report).read_text())
    sn["report"] = Path(snnet_report).as_posix()
    sn["commit"] = snnet.get("run", {}).get("commit") or snnet.get("commit")
    sn["redone"] = {
        "command": f"python -m elastic.demo.sorted {path.as_posix()} {Path(snnet_report).as_posix()}",
        "commit": provenance.commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    report["snnet"] = sn
    atomic_write_json(path, report)
    atomic_write(path.with_suffix(".md"), (markdown(report) + "\n").encode())
    return report


if __name__ == "__main__":  # python -m elastic.demo.sorted SORTED_REPORT SNNET_REPORT
    refresh_snnet_comparison(sys.argv[1], sys.argv[2])
