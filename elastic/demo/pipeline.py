"""The main job, end to end on real data: SN-Net (Pan et al., CVPR 2023; SN-Netv2) on Fashion-MNIST.

Pretrained ImageNet anchors cannot be fetched offline, so the demo first trains its own
anchor family — three timm `VisionTransformer`s shaped like DeiT Ti/S/B (equal depth, widths
×2 apart, head width fixed) for 28×28×1 inputs — and then does what SN-Net does with
pretrained anchors:

1. train (or load from the cache) the anchors, each on its own;
2. join neighbouring anchors with stitching layers (`StitchedNet`) and initialise them by
   least squares on a calibration batch of training images;
3. train the stitched network one sampled subnet per step (uniformly, as SN-Net v1;
   `sampling="flops"` is SN-Netv2's FLOPs-grouped sampling), distilling from a frozen copy
   of the largest anchor and fine-tuning the anchors at a lower learning rate than the
   stitches;
4. evaluate every subnet on the 10k test images, time it at batch 1 and 8 on this CPU;
5. write `report.json`, `pareto.png` and the saved model.

Anchors are cached under `$ELASTIC_CACHE` (default `~/.cache/elastic`) by a hash of their
architecture, training recipe, data and seed, as safetensors, so a second run skips step 1;
the report names the cache entry relative to that root. The report records the command,
commit and date of the run.
Design choices are made on a validation split carved from the training set
(`DemoConfig.val_size`), never on the test set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from elastic.anchors import AnchorFamily
from elastic.builders.stitched import StitchedNet
from elastic.checkpoint import atomic_write, atomic_write_json, save
from elastic.demo.data import dataset_sha256, fashion_mnist
from elastic.demo.evaluate import accuracy, evaluate_subnets
from elastic.demo.latency import latency_table
from elastic.demo.plot import plot_pareto
from elastic.demo.report import interpolation, latency_fronts, subnet_rows, summary_lines, write_report
from elastic.demo.train import FitConfig, fit
from elastic.errors import CheckpointError
from elastic.provenance import run_record
from elastic.subnet import pareto

log = logging.getLogger(__name__)

TIMM_NAME = "vit_tiny_patch16_224"  # the timm entrypoint; kwargs resize it
CACHE_ENV = "ELASTIC_CACHE"
ANCHOR_RECIPE_FIELDS = (
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "min_lr_ratio",
    "label_smoothing",
    "crop_padding",
    "flip",
    "grad_clip",
    "seed",
)  # FitConfig fields a plain model uses


@dataclass
class DemoConfig:
    """Everything that decides the demo's result (saved in report.json)."""

    labels: tuple[str, ...] = ("vit-ti", "vit-s", "vit-b")  # anchor names, cheapest first
    widths: tuple[int, ...] = (16, 32, 64)  # embedding width per anchor (DeiT: 192/384/768)
    head_dim: int = 16  # width per attention head, equal across anchors (DeiT: 64)
    depth: int = 6  # blocks per anchor, equal across anchors (DeiT: 12)
    patch_size: int = 7  # 28×28 images -> (28 / patch)² tokens + a class token
    anchor_epochs: float = 4.0  # epochs of each anchor's own training
    anchor_lr: float = 3e-3  # its peak learning rate
    stitch_epochs: float = 6.0  # epochs of SN-Net training (one subnet per step)
    finetune_lr: float = 1e-3  # anchors' peak learning rate during SN-Net training (0 = frozen)
    stitch_lr: float = 2e-3  # stitching layers' peak learning rate
    sampling: str = "uniform"  # "uniform" (SN-Net) or "flops" (SN-Netv2)
    anchor_share: float = 0.0  # share of SN-Net steps that train a whole anchor
    distill_alpha: float = 0.5  # weight of distillation from the largest anchor (0 = off)
    distill_temperature: float = 1.0
    lora_rank: int = 0  # low-rank update on every stitch (0 = plain linear stitches)
    stitch_plan: str = "v1"  # StitchedNet plan: "v1" (SN-Net) or "v2" (SN-Netv2)
    final_norm: bool | None = None  # back anchor's final norm on stitched paths (None: the plan's)
    batch_size: int = 256
    weight_decay: float = 0.05
    crop_padding: int = 0  # random-crop augmentation after padding by this many pixels (0 = off)
    flip: bool = True  # random horizontal flips
    calibration_size: int = 256  # training images for the least-squares init
    train_size: int | None = None  # use the first N (shuffled) training images; None = all
    test_size: int | None = None  # evaluate on the first N test images; None = all 10k
    val_size: int = 0  # > 0: hold out N training images and evaluate on them, not on test
    latency_batch_sizes: tuple[int, ...] = (1, 8)
    latency_repeats: int = 15
    eval_init: bool = False  # also evaluate every subnet right after the least-squares init
    seed: int = 0

    @classmethod
    def full(cls, **overrides: Any) -> DemoConfig:
        return replace(cls(), **overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Minutes on two CPU cores: shallower anchors (depth 4), a data subset, fewer epochs."""
        base = cls(
            depth=4,
            anchor_epochs=3.0,
            stitch_epochs=2.0,
            batch_size=128,
            train_size=20_000,
            test_size=5_000,
            latency_repeats=7,
        )
        return replace(base, **overrides)

    def anchor_specs(self) -> list[tuple[str, dict[str, Any], str]]:
        """(timm name, kwargs, label) per anchor, for `AnchorFamily.from_timm`."""
        if len(self.widths) != len(self.labels):
            raise ValueError(f"{len(self.widths)} widths for {len(self.labels)} labels")
        return [
            (
                TIMM_NAME,
                dict(
                    embed_dim=w,
                    num_heads=max(1, w // self.head_dim),
                    depth=self.depth,
                    img_size=28,
                    patch_size=self.patch_size,
                    in_chans=1,
                    num_classes=10,
                ),
                label,
            )
            for w, label in zip(self.widths, self.labels, strict=True)
        ]

    def anchor_key(self, data_fingerprint: str) -> str:
        """Hash of everything that decides the trained anchors (and nothing of the SN-Net stage)."""
        recipe = asdict(anchor_fit_config(self))
        relevant = dict(
            specs=self.anchor_specs(),
            epochs=self.anchor_epochs,
            train_size=self.train_size,
            val_size=self.val_size,
            recipe={k: recipe[k] for k in ANCHOR_RECIPE_FIELDS},
            data=data_fingerprint,
            version=2,
        )
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]


def anchor_fit_config(cfg: DemoConfig, k: int = 0, progress: bool = False) -> FitConfig:
    """Recipe of each anchor's own training."""
    return FitConfig(
        batch_size=cfg.batch_size,
        lr=cfg.anchor_lr,
        weight_decay=cfg.weight_decay,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        seed=cfg.seed + k,
        progress=progress,
        description=f"anchor {cfg.labels[k]}",
    )


def stitch_fit_config(cfg: DemoConfig, progress: bool = False) -> FitConfig:
    """Recipe of the SN-Net stage."""
    return FitConfig(
        batch_size=cfg.batch_size,
        lr=cfg.finetune_lr,
        stitch_lr=cfg.stitch_lr,
        weight_decay=cfg.weight_decay,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        sampling=cfg.sampling,
        anchor_share=cfg.anchor_share,
        distill_alpha=cfg.distill_alpha,
        distill_temperature=cfg.distill_temperature,
        seed=cfg.seed + 100,
        progress=progress,
        description="SN-Net",
    )


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else `$ELASTIC_CACHE`, else `~/.cache/elastic`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "elastic"


def split_data(cfg: DemoConfig, root: str | Path | None):
    """(train, eval, eval split name) tensors as the config asks; shuffling is seeded."""
    x, y = fashion_mnist(root, "train")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    x, y = x[perm], y[perm]
    if cfg.val_size > 0:
        evalset, split = (x[: cfg.val_size], y[: cfg.val_size]), "val"
        x, y = x[cfg.val_size :], y[cfg.val_size :]
    else:
        xt, yt = fashion_mnist(root, "test")
        n = cfg.test_size or xt.shape[0]
        evalset, split = (xt[:n], yt[:n]), "test"
    if cfg.train_size is not None:
        x, y = x[: cfg.train_size], y[: cfg.train_size]
    return (x, y), evalset, split


def load_anchors(cfg: DemoConfig, folder: Path) -> tuple[AnchorFamily, dict[str, Any]] | None:
    """The cached, trained anchors in `folder`, or None when absent or unreadable."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    from safetensors import SafetensorError

    from elastic.anchors import read_state_dict

    try:
        meta = json.loads(meta_file.read_text())
        family = AnchorFamily.from_timm(cfg.anchor_specs())
        for anchor in family:
            anchor.model.load_state_dict(read_state_dict(folder / f"{anchor.name}.safetensors"))
    except (OSError, ValueError, RuntimeError, CheckpointError, SafetensorError) as e:
        log.warning("ignoring the anchor cache in %s: %s", folder, e)
        return None
    log.info("loaded trained anchors from %s", folder)
    return family, meta


def store_anchors(family: AnchorFamily, folder: Path, meta: dict[str, Any]) -> None:
    """Write each anchor as `<label>.safetensors` (atomic), then `meta.json` last."""
    from safetensors.torch import save as safetensors_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for anchor in family:
        state = {k: v.detach().cpu().contiguous() for k, v in anchor.model.state_dict().items()}
        atomic_write(folder / f"{anchor.name}.safetensors", safetensors_bytes(state))
    atomic_write_json(folder / "meta.json", meta)
    log.info("cached trained anchors in %s", folder)


def train_anchors(cfg: DemoConfig, train, evalset, progress: bool = False) -> tuple[AnchorFamily, dict[str, Any]]:
    """Build the family with timm and train each anchor on its own."""
    torch.manual_seed(cfg.seed)
    family = AnchorFamily.from_timm(cfg.anchor_specs())
    meta: dict[str, Any] = {"accuracy": {}, "seconds": {}}
    for k, anchor in enumerate(family):
        t0 = time.perf_counter()
        fit(anchor.model, train, cfg.anchor_epochs, anchor_fit_config(cfg, k, progress))
        meta["seconds"][anchor.name] = round(time.perf_counter() - t0, 1)
        meta["accuracy"][anchor.name] = accuracy(anchor.model, *evalset)
        log.info(
            "anchor %s: %.2f%% after %.0f s",
            anchor.name,
            100 * meta["accuracy"][anchor.name],
            meta["seconds"][anchor.name],
        )
    return family, meta


def default_threads() -> int:
    """Torch threads for the demo: the cores other processes leave idle, at least one.

    On a shared machine OpenMP threads spin-wait on cores that others hold: on two busy
    cores, one thread trained the demo's ViTs 2-6x faster than two (measured here); on an
    idle machine every core helps.
    """
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - int(os.getloadavg()[0])))


class StageTimer:
    """Wall seconds per pipeline stage; `start(name)` ends the previous stage."""

    def __init__(self, on_stage: Callable[[str], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.on_stage = on_stage
        self._current: str | None = None
        self._since = self._t0 = time.perf_counter()

    def start(self, name: str | None) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self.seconds[self._current] = round(now - self._since, 2)
        self._current, self._since = name, now
        if name is not None and self.on_stage is not None:
            self.on_stage(name)

    def stop(self) -> dict[str, float]:
        self.start(None)
        self.seconds["total"] = round(time.perf_counter() - self._t0, 2)
        return self.seconds


def run_demo(
    cfg: DemoConfig,
    out: str | Path = "out/demo",
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
    threads: int | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the whole demo; returns the report it writes to `out/report.json`.

    Args:
        cfg: sizes, recipes and subsets.
        out: output folder (report.json, pareto.png, model/).
        data_root: Fashion-MNIST folder; default `$ELASTIC_DATA` or the Debian path.
        cache_dir: anchor cache root; default `$ELASTIC_CACHE` or `~/.cache/elastic`.
        use_cache: read and write trained anchors in the cache.
        progress: tqdm bars.
        on_stage: called with each stage's name as it starts (the CLI prints them).
        threads: torch threads while the demo runs; default `default_threads()`.
        command: the command line that ran the demo, recorded in the report.
    """
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        return _run(cfg, Path(out), data_root, cache_dir, use_cache, progress, StageTimer(on_stage), command)
    finally:
        torch.set_num_threads(saved_threads)


def _run(
    cfg: DemoConfig,
    out: Path,
    data_root,
    cache_dir,
    use_cache: bool,
    progress: bool,
    timer: StageTimer,
    command: str | None = None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    run_info = run_record(command)
    load_before = os.getloadavg()
    threads = torch.get_num_threads()

    timer.start("data")
    train, evalset, split = split_data(cfg, data_root)
    data_fp = dataset_sha256(data_root)

    timer.start("anchors")
    key = cfg.anchor_key(data_fp)
    folder = cache_root(cache_dir) / "anchors" / key
    cached = load_anchors(cfg, folder) if use_cache else None
    if cached is None:
        family, meta = train_anchors(cfg, train, evalset, progress)
        meta.update(key=key, config=asdict(cfg), eval_split=split, eval_images=int(evalset[0].shape[0]))
        if use_cache:
            store_anchors(family, folder, meta)
    else:
        family, meta = cached
        if meta.get("eval_split") != split or meta.get("eval_images") != evalset[0].shape[0]:
            meta["accuracy"] = {a.name: accuracy(a, *evalset) for a in family}  # other eval set

    timer.start("stitch_init")
    torch.manual_seed(cfg.seed)
    net = StitchedNet(family, plan=cfg.stitch_plan, final_norm=cfg.final_norm, lora_rank=cfg.lora_rank)
    pick = torch.randperm(train[0].shape[0], generator=torch.Generator().manual_seed(cfg.seed + 7))
    init_error = net.init_stitches(train[0][pick[: cfg.calibration_size]])
    init_accuracy = evaluate_subnets(net, *evalset, store=False) if cfg.eval_init else None

    timer.start("stitch_train")
    teacher = None
    if cfg.distill_alpha > 0:  # a frozen copy: the anchors themselves are fine-tuned
        teacher = copy.deepcopy(family[len(family) - 1]).eval().requires_grad_(False)
    history = fit(net, train, cfg.stitch_epochs, stitch_fit_config(cfg, progress), teacher=teacher)
    del teacher

    timer.start("evaluate")
    evaluate_subnets(net, *evalset, progress=progress)
    subnets = net.subnets()

    timer.start("latency")
    for layer in net.stitches.values():
        layer.merge_lora()
    latency = latency_table(net, cfg.latency_batch_sizes, cfg.latency_repeats, progress=progress)

    timer.start("save")
    save(net, out / "model")
    timings = timer.stop()

    report: dict[str, Any] = {
        "run": run_info,
        "dataset": {
            "name": "fashion-mnist",
            "eval_split": split,
            "train_images": int(train[0].shape[0]),
            "eval_images": int(evalset[0].shape[0]),
            "fingerprint": data_fp[:16],
        },
        "anchors": [
            {
                "name": s.description,
                "accuracy": s.accuracy,
                "flops": s.flops,
                "params": s.params,
                "accuracy_standalone": meta["accuracy"].get(s.description),
            }
            for s in subnets
            if s.kind == "anchor"
        ],
        "subnets": subnet_rows(subnets, latency),
        "pareto": pareto(subnets),
        "pareto_latency": latency_fronts(subnets, latency),
        "interpolation": interpolation(subnets),
        "timings": timings,
        "training": {
            "stitch_loss_per_epoch": history["loss"],
            "subnet_steps": history["subnet_steps"],
            "stitch_init_error": init_error,
            "init_accuracy": init_accuracy,
            "anchors_cached": cached is not None,
            "anchor_cache": f"anchors/{key}",  # under $ELASTIC_CACHE (default ~/.cache/elastic)
            "anchor_seconds": meta.get("seconds", {}),
        },
        "config": asdict(cfg),
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
    write_report(out / "report.json", report, markdown=True)
    plot_pareto(report, out / "pareto.png", batch_size=str(cfg.latency_batch_sizes[0]))
    for line in summary_lines(report):
        log.info(line)
    return report
