"""One training loop for anchors and for elastic models (SN-Net, Pan et al., CVPR 2023; SN-Netv2).

`fit` trains a plain classifier (an anchor) or an `ElasticModel`. For an elastic model every
step draws one subnet — uniformly over all subnets as in SN-Net v1, or by FLOPs bins as in
SN-Netv2's resource-constrained sampling (`ElasticModel.sample_subnet`) — and trains that
path only. It can distil from a frozen teacher (KL on temperature-softened logits, DeiT /
SN-Net style), and gives the anchors and the stitching layers separate learning rates
(SN-Net fine-tunes anchors gently while the new stitches learn fast). AdamW, a linear
warm-up into a cosine decay, and light augmentation (random crop with padding, horizontal
flip) on image tensors already in memory.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from elastic.model import ElasticModel

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Optimiser, schedule, augmentation and subnet sampling of one `fit` call."""

    batch_size: int = 128  # images per step
    lr: float = 1e-3  # peak learning rate of the model's own (anchor) weights; 0 freezes them
    stitch_lr: float | None = None  # peak learning rate of stitching layers; None = `lr`
    weight_decay: float = 0.05  # AdamW decay on matrices (not on biases, norms, tokens)
    warmup: float = 0.1  # fraction of the steps spent in linear warm-up
    min_lr_ratio: float = 0.01  # cosine decays to this fraction of the peak
    label_smoothing: float = 0.0  # on the cross-entropy term
    crop_padding: int = 2  # random crop after padding each side by this many pixels (0 = off)
    flip: bool = True  # random horizontal flip
    sampling: str = "uniform"  # subnet per step: "uniform" (SN-Net) or "flops" (SN-Netv2)
    anchor_share: float = 0.0  # probability that a step trains a whole anchor (drawn uniformly)
    distill_alpha: float = 0.0  # weight of the distillation term (0 = cross-entropy only)
    distill_temperature: float = 1.0  # softmax temperature of the distillation term
    grad_clip: float | None = 1.0  # max gradient norm (None = off)
    seed: int = 0  # data order, augmentation and subnet draws
    progress: bool = False  # tqdm bar (the CLI asks for it)
    description: str = "train"  # tqdm label


def param_groups(model: nn.Module, lr: float, stitch_lr: float | None, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: (anchor | stitch) x (decay | no decay).

    Stitching layers are the parameters under `model.stitches` (StitchedNet); everything else
    counts as anchor weights. Vectors (biases, norm scales) and timm's `cls_token` /
    `pos_embed` get no weight decay. Groups whose learning rate is 0 are left out and their
    parameters frozen (`requires_grad=False`).
    """
    stitch_lr = lr if stitch_lr is None else stitch_lr
    stitch_ids = {id(p) for p in model.stitches.parameters()} if hasattr(model, "stitches") else set()
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        kind = "stitch" if id(p) in stitch_ids else "anchor"
        decay = p.ndim > 1 and not name.endswith(("cls_token", "pos_embed", "reg_token"))
        groups.setdefault((kind, decay), []).append(p)
    out = []
    for (kind, decay), params in sorted(groups.items()):
        group_lr = stitch_lr if kind == "stitch" else lr
        if group_lr <= 0:
            for p in params:
                p.requires_grad_(False)
            continue
        for p in params:
            p.requires_grad_(True)
        out.append(
            {
                "params": params,
                "lr": group_lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{kind}{'' if decay else '_no_decay'}",
            }
        )
    if not out:
        raise ValueError("every learning rate is 0: nothing to train")
    return out


def warmup_cosine(total_steps: int, warmup: float, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: linear warm-up, then cosine."""
    warm = max(1, round(warmup * total_steps)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def augment(
    x: torch.Tensor, generator: torch.Generator, padding: int = 2, flip: bool = True, fill: float | None = None
) -> torch.Tensor:
    """Random crop after padding, and random horizontal flip, per image.

    Args:
        x: a batch of images.
        generator: source of randomness (CPU).
        padding: pixels added on each side before cropping back to (H, W); 0 disables.
        flip: flip each image left-right with probability 1/2.
        fill: value of the padding; default the batch minimum (the background of
            normalised Fashion-MNIST).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W)
    """
    b, _, h, w = x.shape
    if padding > 0:
        value = float(x.min()) if fill is None else fill
        padded = F.pad(x, (padding,) * 4, value=value)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None].to(x.device)  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :].to(x.device)  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on softened logits, scaled by T² (Hinton et al.).

    Shape:
        student, teacher: (B, num_classes) -> scalar
    """
    t = temperature
    log_p = F.log_softmax(student / t, dim=-1)
    log_q = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def _draw(model: ElasticModel, rng: random.Random, cfg: FitConfig, anchors_frozen: bool) -> int:
    """One subnet id for a training step.

    With probability `cfg.anchor_share` a whole anchor (so the anchors keep their own accuracy
    while their blocks also serve stitched paths), else `model.sample_subnet(rng, cfg.sampling)`.
    With frozen anchors, never a whole anchor: no trainable weight lies on its path.
    """
    if not anchors_frozen and cfg.anchor_share > 0 and rng.random() < cfg.anchor_share:
        return rng.choice([s.id for s in model.subnets() if s.kind == "anchor"])
    for _ in range(1000):
        subnet = model.sample_subnet(rng, cfg.sampling)
        if not anchors_frozen or subnet.kind != "anchor":
            return subnet.id
    raise ValueError("the anchors are frozen and the model has no other subnets to train")


def fit(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: float,
    config: FitConfig | None = None,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, int | None, float], None] | None = None,
) -> dict[str, list[float]]:
    """Train `model` on in-memory images with AdamW and a warm-up + cosine schedule.

    Args:
        model: a classifier `model(x)`, or an `ElasticModel`, trained one sampled subnet per
            step (`model(x, subnet)`); with `config.lr == 0` its anchors are frozen and only
            subnets through trainable weights (stitches) are drawn.
        data: (images, labels) on the model's device.
        epochs: passes over the data; fractional values stop part-way through an epoch.
        config: optimiser and sampling settings; defaults to `FitConfig()`.
        teacher: frozen model whose logits the student imitates when
            `config.distill_alpha > 0`; run in eval mode under no_grad.
        on_step: called as `on_step(step, subnet_id or None, loss)` after every step.

    Returns:
        {"loss": mean training loss per epoch, "subnet_steps": steps per subnet id
        (elastic models only)}.

    Shape:
        data: images (N, C, H, W), labels (N,)
    """
    cfg = config or FitConfig()
    images, labels = data
    n = images.shape[0]
    if n == 0 or n != labels.shape[0]:
        raise ValueError(f"need as many labels as images, got {n} images, {labels.shape[0]} labels")
    if cfg.distill_alpha > 0 and teacher is None:
        raise ValueError("distill_alpha > 0 needs a teacher")
    elastic = isinstance(model, ElasticModel)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch
    total = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.stitch_lr, cfg.weight_decay))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, cfg.warmup, cfg.min_lr_ratio))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    if teacher is not None:
        teacher.eval()
    model.train()
    history: dict[str, list[float]] = {"loss": []}
    counts = [0] * len(model.subnets()) if elastic else []
    epoch_loss, epoch_steps = 0.0, 0
    bar = tqdm(total=total, desc=cfg.description, unit="step", disable=not cfg.progress, leave=False)
    order = torch.randperm(n, generator=gen)
    for step in range(total):
        k = step % steps_per_epoch
        if k == 0 and step > 0:
            history["loss"].append(epoch_loss / max(1, epoch_steps))
            epoch_loss, epoch_steps = 0.0, 0
            order = torch.randperm(n, generator=gen)
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size].to(images.device)
        x = augment(images[idx], gen, cfg.crop_padding, cfg.flip)
        y = labels[idx]
        sid = _draw(model, rng, cfg, anchors_frozen=cfg.lr <= 0) if elastic else None
        logits = model(x, sid) if elastic else model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if cfg.distill_alpha > 0:
            with torch.no_grad():
                target = teacher(x)
            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * distillation_loss(
                logits, target, cfg.distill_temperature
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}")
        epoch_loss += value
        epoch_steps += 1
        if elastic:
            counts[sid] += 1
        if on_step is not None:
            on_step(step, sid, value)
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    history["loss"].append(epoch_loss / max(1, epoch_steps))
    if elastic:
        history["subnet_steps"] = counts
    log.info(
        "%s: %d steps of %d images, final epoch loss %.4f", cfg.description, total, cfg.batch_size, history["loss"][-1]
    )
    return history
