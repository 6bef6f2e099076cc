"""Sorted training of a `SortedNet`: many nested subnets per optimizer step (SortedNet, 2023).

Two schedules, both accumulating the gradients of several subnets before one AdamW step:

- "sandwich" (US-Nets / BigNAS, Yu et al. 2019-2020; used by OFA and DynaBERT): every step
  trains the largest subnet on the labels, the smallest and k random ones
  (`sample_subnet(rng, "sandwich")`) by in-place distillation — they imitate the largest
  subnet's logits from the same step (detached), mixed with the labels by `distill_alpha`.
- "sorted" (SortedNet, Valipour et al. 2023, as we read it): every step draws k subnets from
  a distribution over the FLOPs-sorted list (uniform by default, or weighted towards the large
  end by `sorted_bias`) and trains each on the labels only.

The optimiser, schedule and augmentation are the demo's (`elastic.demo.train`).
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

from elastic.demo.train import augment, distillation_loss, param_groups, warmup_cosine
from elastic.model import ElasticModel

log = logging.getLogger(__name__)


@dataclass
class SortedFitConfig:
    """Optimiser, schedule, augmentation and subnet schedule of one `fit_sorted` call."""

    batch_size: int = 256  # images per step (every subnet of the step sees the same batch)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.05  # AdamW decay on matrices
    warmup: float = 0.1  # fraction of the steps spent in linear warm-up
    min_lr_ratio: float = 0.01  # cosine decays to this fraction of the peak
    crop_padding: int = 0  # random crop after padding (0 = off)
    flip: bool = True  # random horizontal flip
    schedule: str = "sandwich"  # "sandwich" (largest + smallest + k random) or "sorted" (k drawn)
    random_subnets: int = 2  # k
    distill_alpha: float = 1.0  # sandwich: weight of in-place distillation vs labels for non-largest
    distill_temperature: float = 1.0
    sorted_bias: float = 0.0  # "sorted": P(i) ∝ exp(bias * i / (n - 1)) over FLOPs rank i (0 = uniform)
    grad_clip: float | None = 1.0  # max gradient norm (None = off)
    seed: int = 0  # data order, augmentation and subnet draws
    progress: bool = False  # tqdm bar
    description: str = "sorted training"  # tqdm label


def step_subnets(model: ElasticModel, rng: random.Random, cfg: SortedFitConfig) -> list[int]:
    """Subnet ids of one step; with "sandwich" the largest comes first (it is the teacher)."""
    subnets = model.subnets()
    if cfg.schedule == "sandwich":
        largest = max(subnets, key=lambda s: (s.flops, s.id)).id
        smallest = min(subnets, key=lambda s: (s.flops, s.id)).id
        ids = [largest] + ([smallest] if smallest != largest else [])
        return ids + [model.sample_subnet(rng, "sandwich").id for _ in range(cfg.random_subnets)]
    if cfg.schedule == "sorted":
        ranked = sorted(subnets, key=lambda s: (s.flops, s.id))
        n = len(ranked)
        weights = [math.exp(cfg.sorted_bias * i / max(1, n - 1)) for i in range(n)]
        return [s.id for s in rng.choices(ranked, weights=weights, k=max(1, cfg.random_subnets))]
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'sandwich' or 'sorted'")


def fit_sorted(
    model: ElasticModel,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: float,
    config: SortedFitConfig | None = None,
    on_step: Callable[[int, list[int], float], None] | None = None,
) -> dict[str, list]:
    """Train every subnet of `model` at once, several subnets per optimizer step.

    Args:
        model: an elastic model whose subnets share weights (a `SortedNet`).
        data: (images, labels) on the model's device.
        epochs: passes over the data (fractional allowed).
        config: settings; defaults to `SortedFitConfig()`.
        on_step: called as `on_step(step, subnet ids, loss)` after every step.

    Returns:
        {"loss": mean loss per epoch (summed over the step's subnets, divided by their
        number), "subnet_steps": steps per subnet id}.

    Shape:
        data: images (N, C, H, W), labels (N,)
    """
    cfg = config or SortedFitConfig()
    images, labels = data
    n = images.shape[0]
    if n == 0 or n != labels.shape[0]:
        raise ValueError(f"need as many labels as images, got {n} images, {labels.shape[0]} labels")
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, None, cfg.weight_decay))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, cfg.warmup, cfg.min_lr_ratio))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model.train()
    history: dict[str, list] = {"loss": []}
    counts = [0] * len(model.subnets())
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
        ids = step_subnets(model, rng, cfg)
        optimizer.zero_grad(set_to_none=True)
        value = _accumulate(model, x, y, ids, cfg)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}")
        epoch_loss += value
        epoch_steps += 1
        for sid in ids:
            counts[sid] += 1
        if on_step is not None:
            on_step(step, ids, value)
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    history["loss"].append(epoch_loss / max(1, epoch_steps))
    history["subnet_steps"] = counts
    log.info("%s: %d steps x %d subnets, final epoch loss %.4f", cfg.description, total, len(ids), history["loss"][-1])
    return history


def _accumulate(model: ElasticModel, x: torch.Tensor, y: torch.Tensor, ids: list[int], cfg: SortedFitConfig) -> float:
    """Backward every subnet's loss / len(ids) into the same gradients; the mean loss."""
    total = 0.0
    teacher = None
    for j, sid in enumerate(ids):
        logits = model(x, sid)
        loss = F.cross_entropy(logits, y)
        if cfg.schedule == "sandwich":
            if j == 0:
                teacher = logits.detach()  # the largest subnet: in-place distillation target
            elif cfg.distill_alpha > 0:
                kd = distillation_loss(logits, teacher, cfg.distill_temperature)
                loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
        (loss / len(ids)).backward()
        total += loss.item()
    return total / len(ids)
