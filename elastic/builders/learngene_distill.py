"""Distilling one large ViT into shallow, narrow auxiliary ViTs: the first stage of Learngene Pool.

Learngene Pool (Shi et al., "Building Variable-sized Models via Learngene Pool", AAAI 2024)
distils a large pretrained model (the ancestor, e.g. DeiT-B) into several small auxiliary
models whose blocks become the pool's *learngene instances*. Each student learns from

- the labels (cross-entropy, weight `alpha`),
- the teacher's logits (soft cross-entropy at temperature T),
- the teacher's block outputs and attention outputs at matched block positions, through
  learnable width transforms `Linear(teacher width -> student width)` (mean squared error),

the last three weighted `1 - alpha`, as in the official code (`engine.py:
train_one_epoch_distill`, `loss_pos="[front,end]"`: three positions, at 1/3, 2/3 and the end
of each network's depth). The block transforms are kept: the pool initialises its stitching
layers from them (`LearngenePool.init_stitches_from_transforms`).

Differences from the official code: every student is distilled in one pass per batch (one
teacher forward for all of them; their losses are independent, so this equals separate
runs with the same data order); the soft cross-entropy is summed over classes (the official
one also averages over classes, which only rescales it); no mixup / RandAugment (the demo's
crop and flip instead).

Resumable: with a `cache_dir`, the students, transforms and optimiser state are written
after every epoch (safetensors + JSON, atomically) under a key hashing the teacher's
weights, the students' specs, the data and the recipe; a later call with the same inputs
continues from the last epoch written, and a finished run is loaded without training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from elastic.anchors import AnchorAdapter, AnchorFamily, adapt
from elastic.checkpoint import atomic_write_json
from elastic.demo.train import augment, param_groups, warmup_cosine
from elastic.errors import CheckpointError, UnsupportedArchitecture

log = logging.getLogger(__name__)

LOSS_TERMS = ("ce", "logits", "blocks", "attn", "total")


@dataclass
class DistillConfig:
    """Recipe of the distillation stage (hashed into the cache key)."""

    batch_size: int = 128  # images per step
    lr: float = 3e-3  # peak AdamW learning rate of students and transforms
    weight_decay: float = 0.05  # on matrices only (not biases, norms, tokens)
    warmup: float = 0.1  # fraction of the steps in linear warm-up, then cosine
    min_lr_ratio: float = 0.01  # the cosine's floor, relative to the peak
    alpha: float = 0.1  # weight of the label cross-entropy; 1 - alpha on the distillation terms
    temperature: float = 1.0  # of the soft cross-entropy on logits
    positions: int = 3  # matched block positions per student (official "[front,end]": 3)
    feature_weight: float = 1.0  # weight of the block- and attention-output MSE terms
    crop_padding: int = 0  # random-crop augmentation after padding (0 = off)
    flip: bool = True  # random horizontal flips
    grad_clip: float | None = 1.0  # max gradient norm per student (None = off)
    seed: int = 0  # data order and augmentation


def matched_positions(student_depth: int, teacher_depth: int, positions: int) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs at equal relative depth: k/n of each, k = 1..n.

    The official code's "[front,end]" for 12 -> 6 blocks gives [(1, 3), (3, 7), (5, 11)].
    """
    n = max(1, min(positions, student_depth, teacher_depth))
    return [(math.ceil(student_depth * k / n) - 1, math.ceil(teacher_depth * k / n) - 1) for k in range(1, n + 1)]


class WidthTransforms(nn.Module):
    """Learnable maps from the teacher's width to one student's, one per matched position.

    `blocks[p]` maps the teacher's output of block `pairs[p][1]` onto the student's output of
    block `pairs[p][0]`; `attn[p]` does the same for the attention outputs.

    Shape:
        teacher features (B, N, C_teacher) -> (B, N, C_student)
    """

    def __init__(self, teacher_width: int, student_width: int, pairs: Sequence[tuple[int, int]]):
        super().__init__()
        self.pairs = [tuple(p) for p in pairs]
        self.blocks = nn.ModuleList(nn.Linear(teacher_width, student_width) for _ in self.pairs)
        self.attn = nn.ModuleList(nn.Linear(teacher_width, student_width) for _ in self.pairs)

    def nearest(self, block: int, depth: int) -> nn.Linear:
        """The block transform whose student position is nearest `block` in relative depth."""
        pos = (block + 1) / depth
        k = min(range(len(self.pairs)), key=lambda p: (abs((self.pairs[p][0] + 1) / depth - pos), p))
        return self.blocks[k]


@dataclass
class DistillResult:
    """What `distill` leaves: trained students (in the family), transforms, loss history."""

    transforms: list[WidthTransforms]  # one per student, in family order
    history: dict[str, list[float]] = field(default_factory=dict)  # mean loss per epoch, per term
    resumed_from_epoch: int = 0  # epochs loaded from the cache instead of trained
    cache: str | None = None  # folder of this run's cache entry


def _features(adapter: AnchorAdapter, x: torch.Tensor, blocks: set[int]):
    """Logits, and the block and attention outputs of the given blocks.

    Shape:
        x: (B, C, H, W) -> logits (B, classes), {block: (B, N, C)}, {block: (B, N, C)}
    """
    attn: dict[int, torch.Tensor] = {}
    handles = [
        adapter.blocks[b].attn.register_forward_hook(lambda _m, _i, out, b=b: attn.__setitem__(b, out)) for b in blocks
    ]
    try:
        h, outs = adapter.stem(x), {}
        for b, blk in enumerate(adapter.blocks):
            h = blk(h)
            if b in blocks:
                outs[b] = h
        return adapter.head(h), outs, attn
    finally:
        for handle in handles:
            handle.remove()


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student's softened distribution against the teacher's.

    Shape:
        student, teacher: (B, classes) -> scalar
    """
    t = temperature
    return -(F.softmax(teacher / t, dim=-1) * F.log_softmax(student / t, dim=-1)).sum(-1).mean()


def _width(adapter: AnchorAdapter) -> int:
    return int(adapter.model.embed_dim)


def cache_key(teacher: AnchorAdapter, family: AnchorFamily, data, epochs: float, config: DistillConfig) -> str:
    """Hash of everything that decides the distilled students."""
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for t in data:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    specs = [s.to_dict() for s in family.specs] if family.specs else family.names
    h.update(json.dumps(dict(specs=specs, epochs=epochs, config=asdict(config), version=1), sort_keys=True).encode())
    return h.hexdigest()[:20]


def distill(
    teacher: nn.Module,
    family: AnchorFamily,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: float,
    config: DistillConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> DistillResult:
    """Train every student of `family` from `teacher` (in place) with Learngene Pool's losses.

    Args:
        teacher: a timm ViT (or its adapter); frozen, run in eval mode.
        family: the auxiliary models, timm ViTs (trained in place).
        data: (images, labels) in memory, on the models' device.
        epochs: passes over the data (fractional values stop part-way).
        config: the recipe; defaults to `DistillConfig()`.
        cache_dir: folder for resumable checkpoints (a subfolder per cache key); None = none.
        progress: tqdm bar.

    Returns:
        The width transforms and the loss history (mean per epoch; each term averaged over
        the students, plus "total/<label>" per student).

    Shape:
        data: images (N, C, H, W), labels (N,)
    """
    cfg = config or DistillConfig()
    teacher = teacher if isinstance(teacher, AnchorAdapter) else adapt(teacher)
    _check(teacher, family)
    images, labels = data
    n = images.shape[0]
    if n == 0 or n != labels.shape[0]:
        raise ValueError(f"need as many labels as images, got {n} images, {labels.shape[0]} labels")

    students = list(family)
    transforms = [
        WidthTransforms(_width(teacher), _width(s), matched_positions(s.depth, teacher.depth, cfg.positions))
        for s in students
    ]
    device = next(students[0].parameters()).device
    trainable = nn.ModuleDict({"students": nn.ModuleList(students), "transforms": nn.ModuleList(transforms)})
    trainable.to(device)
    optimizer = torch.optim.AdamW(param_groups(trainable, cfg.lr, None, cfg.weight_decay))
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    factor = warmup_cosine(total, cfg.warmup, cfg.min_lr_ratio)
    history: dict[str, list[float]] = {}

    folder = None
    step = 0
    if cache_dir is not None:
        folder = Path(cache_dir) / cache_key(teacher, family, data, epochs, cfg)
        step, history = _load_checkpoint(folder, trainable, optimizer)
    resumed = step // steps_per_epoch
    if step:
        log.info("distillation: resuming at step %d of %d from %s", step, total, folder)

    was_training = teacher.training
    teacher.eval()
    teacher.requires_grad_(False)
    groups = [list(s.parameters()) + list(t.parameters()) for s, t in zip(students, transforms, strict=True)]
    bar = tqdm(total=total, initial=step, desc="distil", unit="step", disable=not progress, leave=False)
    try:
        while step < total:
            epoch = step // steps_per_epoch
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen)
            sums = dict.fromkeys(LOSS_TERMS, 0.0)
            per_student = [0.0] * len(students)
            steps = 0
            trainable.train()
            while step < total and (step // steps_per_epoch) == epoch:
                k = step % steps_per_epoch
                idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size].to(images.device)
                x = augment(images[idx], gen, cfg.crop_padding, cfg.flip)
                y = labels[idx]
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor(step)
                with torch.no_grad():
                    t_blocks = {t for tr in transforms for _, t in tr.pairs}
                    t_logits, t_out, t_attn = _features(teacher, x, t_blocks)
                losses = []
                for s, (student, tr) in enumerate(zip(students, transforms, strict=True)):
                    terms = _student_loss(student, tr, x, y, t_logits, t_out, t_attn, cfg)
                    losses.append(terms["total"])
                    for name, value in terms.items():
                        sums[name] += float(value.detach()) / len(students)
                    per_student[s] += float(terms["total"].detach())
                optimizer.zero_grad(set_to_none=True)
                sum(losses).backward()
                if cfg.grad_clip:
                    for params in groups:
                        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                value = float(sum(losses).detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"distillation loss became {value} at step {step}")
                step += 1
                steps += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{value / len(students):.3f}")
            for name in LOSS_TERMS:
                history.setdefault(name, []).append(sums[name] / steps)
            for s, student in enumerate(students):
                history.setdefault(f"total/{student.name}", []).append(per_student[s] / steps)
            log.info(
                "distillation epoch %d: %s",
                epoch,
                ", ".join(f"{t} {history[t][-1]:.4f}" for t in LOSS_TERMS),
            )
            if folder is not None:
                _save_checkpoint(folder, trainable, optimizer, step, total, history)
    finally:
        bar.close()
        teacher.train(was_training)
    family.eval()
    return DistillResult(transforms, history, resumed, str(folder) if folder else None)


def _student_loss(student, tr: WidthTransforms, x, y, t_logits, t_out, t_attn, cfg: DistillConfig):
    s_blocks = {s for s, _ in tr.pairs}
    logits, s_out, s_attn = _features(student, x, s_blocks)
    ce = F.cross_entropy(logits, y)
    kd = soft_cross_entropy(logits, t_logits, cfg.temperature)
    blocks = sum(F.mse_loss(s_out[s], tr.blocks[p](t_out[t])) for p, (s, t) in enumerate(tr.pairs))
    attn = sum(F.mse_loss(s_attn[s], tr.attn[p](t_attn[t])) for p, (s, t) in enumerate(tr.pairs))
    total = cfg.alpha * ce + (1 - cfg.alpha) * (kd + cfg.feature_weight * (blocks + attn))
    return {"ce": ce, "logits": kd, "blocks": blocks, "attn": attn, "total": total}


def _check(teacher: AnchorAdapter, family: AnchorFamily) -> None:
    if teacher.family != "vit" or family[0].family != "vit":
        raise UnsupportedArchitecture("Learngene Pool distils ViTs: teacher and students must be timm ViTs")
    if teacher.input_size() != family.input_size():
        raise UnsupportedArchitecture(
            f"teacher takes {teacher.input_size()}, the students {family.input_size()}: they must match"
        )
    if teacher.num_classes() != family[0].num_classes():
        raise UnsupportedArchitecture(
            f"teacher predicts {teacher.num_classes()} classes, the students {family[0].num_classes()}"
        )


# ---- resumable cache ---------------------------------------------------------------------
STATE = "state.safetensors"
META = "meta.json"


def _save_checkpoint(folder: Path, trainable: nn.Module, optimizer, step: int, total: int, history) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trainable.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tmp = folder / f".{STATE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / STATE)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in opt["param_groups"]]
    atomic_write_json(folder / META, {"step": step, "total_steps": total, "history": history, "param_groups": groups})


def _load_checkpoint(folder: Path, trainable: nn.Module, optimizer) -> tuple[int, dict[str, list[float]]]:
    """(steps done, history) from `folder`, loaded into `trainable` and `optimizer`; (0, {}) if none."""
    if not (folder / META).is_file():
        return 0, {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / META).read_text())
        tensors = load_file(str(folder / STATE))
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        expected = {k: tuple(v.shape) for k, v in trainable.state_dict().items()}
        if {k: tuple(v.shape) for k, v in model.items()} != expected:
            raise ValueError("the cached students do not match these students' structure")  # nothing loaded yet
        trainable.load_state_dict(model, strict=True)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return int(meta["step"]), {k: list(v) for k, v in meta["history"].items()}
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, CheckpointError) as e:
        log.warning("ignoring the distillation cache in %s: %s", folder, e)
        return 0, {}
