"""The load suite's scenarios: which model serves, on which inputs, judged how.

- demo: the model `elastic demo` trains (a `StitchedNet` over three small ViTs trained on
  Fashion-MNIST), sent Fashion-MNIST test images; an answer is correct when the model's
  real prediction matches the label.
- deit: a `StitchedNet` over timm's deit_tiny / deit_small / deit_base (random weights, the
  SN-Net DeiT-Ti/S/B setting) at a reduced image size (`DEIT_IMG` px, patch 16), timed for
  real on this machine. At 224 px (or 64) deit_base serves only a few requests per second on
  one core here, too few for a load grid in minutes. The latencies are those of the small
  image, not of 224 px; at both sizes the linear layers (cost ∝ parameters × tokens) carry
  most of the work. Random weights predict nothing, so each subnet's accuracy is SN-Net's
  published ImageNet top-1 for that configuration id, and an answer counts correct with that
  probability (a seeded draw): "published accuracies, measured latencies". Profiling all 71
  configurations is too slow here, so only `front_size` of the published FLOPs/accuracy
  front (evenly spaced in MACs) plus the three anchors are profiled, and only those can be
  chosen.

A scenario also carries the INFaaS-style baseline (the anchors as separate models).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from elastic.model import ElasticModel
from elastic.serving.executor import Executor

from .outcomes import BernoulliJudge, Judge, LabelJudge
from .variants import AnchorVariants

log = logging.getLogger(__name__)

DEIT_ANCHORS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
DEIT_IMG = 32  # px: 2 × 2 patches of 16 (+ the class token) instead of 14 × 14 at 224, for time
PARAMS_TOLERANCE = 0.01  # relative params gap allowed between our subnet and the published id


@dataclass
class Scenario:
    """A model to serve, its input stream, and how answers are judged."""

    name: str  # "demo" | "deit" | a test's name
    label: str  # one line for tables: what is served and where accuracy comes from
    model: ElasticModel  # accuracies set on its subnets
    images: torch.Tensor  # (N, C, H, W): request k sends image k mod N
    real_judge: Callable[[int | str], Judge]  # seed -> judge of real runs
    accuracy_source: str  # "real predictions on ..." | "published ..."
    profile_subnets: list[int] | None = None  # ids to profile (None: all)
    profile_repeats: int = 10  # timed runs per (subnet, batch size) when profiling
    capacity_burst: int = 256  # requests in the served-capacity burst
    capacity_singles: int = 30  # single requests timed for the served batch-1 latency
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in the results
    executor: str = "eager"  # how real runs execute the model's forwards (`elastic.serving.EXECUTORS`)
    preempt: bool = True  # batches pause at stage boundaries for urgent requests (`Runtime`'s default)
    _variants: AnchorVariants | None = None
    _executors: dict[int, Executor] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[int, float]:
        return {s.id: s.accuracy for s in self.model.subnets() if s.accuracy is not None}

    @property
    def anchors(self) -> list[int]:
        return [s.id for s in self.model.subnets() if s.kind == "anchor"]

    def variants(self) -> AnchorVariants:
        """The INFaaS-style baseline: the anchors as separate timm models (built once)."""
        if self._variants is None:
            self._variants = AnchorVariants(self.model).eval()
        return self._variants

    def executor_for(self, model: ElasticModel) -> Executor:
        """The one executor every real run of `model` shares (made on first use): a process
        executor's child starts in seconds, once per scenario rather than once per run. The
        INFaaS baseline's separate timm models have no checkpoint a child could load, so
        under the process executor they run eagerly; any other executor serves them too."""
        from elastic.serving.executor import make_executor

        ex = self._executors.get(id(model))
        if ex is None:
            spec = "eager" if isinstance(model, AnchorVariants) and self.executor == "process" else self.executor
            ex = self._executors[id(model)] = make_executor(spec, model)
        return ex

    def close(self) -> None:
        """Close the executors made for real runs (a process executor's child ends)."""
        for ex in self._executors.values():
            ex.close()
        self._executors.clear()


def demo_scenario(model_dir: str | Path | None, images: int | None = None, profile_repeats: int = 30) -> Scenario:
    """The demo's trained model on Fashion-MNIST test images, judged by its real predictions.

    Args:
        model_dir: the saved model (default `out/demo/model`).
        images: use only the first `images` test images (default: all 10,000).
        profile_repeats: timed runs per (subnet, batch size); the scheduler plans with the
            p99, which with few runs is the largest, so a cheap model gets many.
    """
    from elastic.demo.data import fashion_mnist

    from .models import demo_model

    model = demo_model(model_dir)
    if any(s.accuracy is None for s in model.subnets()):
        raise ValueError("the demo model lacks measured accuracies: re-run `elastic demo`")
    x, y = fashion_mnist(split="test")
    if images is not None:
        x, y = x[:images], y[:images]
    judge = LabelJudge(y)
    return Scenario(
        name="demo",
        label="demo StitchedNet (3 ViTs, Fashion-MNIST), real predictions",
        model=model,
        images=x,
        real_judge=lambda seed: judge,
        accuracy_source="real predictions on Fashion-MNIST test images (argmax vs label)",
        profile_repeats=profile_repeats,
    )


def deit_scenario(
    front_size: int = 6, img_size: int = DEIT_IMG, images: int = 64, profile_repeats: int = 8
) -> Scenario:
    """DeiT-Ti/S/B stitched (random weights) at `img_size`, with SN-Net's published accuracies.

    Raises:
        ValueError: the model's subnet ids do not match the published table (count, or a
            subnet whose parameter count is off the published one for its id).
    """
    from elastic.anchors import AnchorFamily
    from elastic.builders.published import snnet_deit_published
    from elastic.builders.stitched import StitchedNet

    torch.manual_seed(0)
    family = AnchorFamily.from_timm(list(DEIT_ANCHORS), img_size=img_size)
    model = StitchedNet(family).eval()
    published = snnet_deit_published()
    check_published_ids(model, published, img_size)
    model.set_accuracies({sid: row.top1 for sid, row in published.items()})
    chosen = thin_front(published, front_size)
    anchors = [s.id for s in model.subnets() if s.kind == "anchor"]
    profile_ids = sorted(set(chosen) | set(anchors))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, *model.input_size(), generator=g)
    accuracy = {sid: row.top1 for sid, row in published.items()}
    return Scenario(
        name="deit",
        label=f"DeiT-Ti/S/B StitchedNet at {img_size} px, published accuracies, measured latencies",
        model=model,
        images=x,
        real_judge=lambda seed: BernoulliJudge(accuracy, seed),
        accuracy_source=(
            "published accuracies, measured latencies: random weights, so a request served by "
            "subnet s counts correct with probability = SN-Net's published ImageNet top-1 of s "
            "(seeded draw, the same draws for every contender on a seed)"
        ),
        profile_subnets=profile_ids,
        profile_repeats=profile_repeats,
        capacity_burst=64,
        capacity_singles=10,
        notes={
            "img_size": img_size,
            "patch_size": 16,
            "weights": "random (timm init, seed 0)",
            "profiled_subnets": profile_ids,
            "published_front_size": len(_published_front(published)),
            "front_subnets_profiled": chosen,
        },
    )


def check_published_ids(model: ElasticModel, published: dict, img_size: int) -> None:
    """Fail unless subnet id k of `model` is SN-Net's official configuration k.

    Parameter counts nearly identify a configuration; ours differ from the published ones
    (at 224 px) by the front anchor's position embeddings, which shrink with the image. A
    sanity check: it catches a shifted or reordered table, not a swap of two configurations
    with the same block counts.
    """
    subnets = model.subnets()
    if sorted(s.id for s in subnets) != sorted(published):
        raise ValueError(f"the model has {len(subnets)} subnets, SN-Net's table {len(published)}: ids cannot match")
    tokens_224, tokens = (224 // 16) ** 2, (img_size // 16) ** 2
    worst = 0.0
    for s in subnets:
        width = _front_width(model, s.id)
        expected = published[s.id].params - (tokens_224 - tokens) * width
        gap = abs(s.params - expected) / expected
        worst = max(worst, gap)
        if gap > PARAMS_TOLERANCE:
            raise ValueError(
                f"subnet {s.id} ({s.description}) has {s.params:,} parameters, SN-Net's config {s.id} "
                f"~{expected:,.0f} at {img_size} px: the ids do not match the official ones"
            )
    log.info("subnet ids match SN-Net's table (largest params gap %.2f %%)", 100 * worst)


def _front_width(model: ElasticModel, sid: int) -> int:
    """Embedding width of the anchor whose stem runs first in subnet `sid`."""
    desc = model.subnet(sid).description
    name = desc.split("[")[0].split(" ")[0]
    for a in model.family.anchors:  # type: ignore[attr-defined]
        if a.name == name:
            return int(a.model.embed_dim)
    raise ValueError(f"cannot tell the front anchor of subnet {sid}: {desc!r}")


def _published_front(published: dict) -> list[int]:
    from elastic.subnet import Subnet, pareto

    rows = [Subnet(r.id, "stitch", "", r.macs, r.params, r.top1) for r in published.values()]
    return pareto(rows, key="flops")


def thin_front(published: dict, k: int) -> list[int]:
    """`k` ids of the published MACs/accuracy front, evenly spaced in log MACs (ends included)."""
    front = _published_front(published)
    if k >= len(front):
        return front
    if k < 2:
        return front[:1]
    lo, hi = math.log(published[front[0]].macs), math.log(published[front[-1]].macs)
    picked: list[int] = []
    for j in range(k):
        target = lo + (hi - lo) * j / (k - 1)
        best = min(
            (sid for sid in front if sid not in picked), key=lambda sid: abs(math.log(published[sid].macs) - target)
        )
        picked.append(best)
    return sorted(picked, key=lambda sid: published[sid].macs)
