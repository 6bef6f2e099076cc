"""`LearngenePool`: Building Variable-sized Models via Learngene Pool (Shi et al., AAAI 2024).

One large model (the ancestor) is distilled into a few shallow, narrow auxiliary ViTs
(`learngene_distill.distill`); their blocks are the pool's *learngene instances*. A
descendant model stacks instances from small to large: the front blocks of a smaller
auxiliary model, a stitching layer, the back blocks of a larger one, as SN-Net (Pan et al.,
CVPR 2023) stitches anchors. The pool stores only the auxiliary models, so it is smaller than
an SN-Net family over full-depth anchors, and it reaches below the smallest anchor.

Subnet ids: each auxiliary model alone first (0..k-1, cheapest first, kind "anchor" as in
SN-Net, so training and benchmarks that treat anchors specially treat these alike; each equals
its own timm forward), then the stitched descendants (kind "learngene"): for every pair of
auxiliary models (neighbours in cost by default), the configurations (i, k) of SN-Net v1's
paired stitching (window 2, stride 1, the partial last window kept): front blocks [0 : i+1]
-> stitch -> back blocks [k :]. One stitching layer per window and pair, shared by its
configurations; where the two widths match the stitch is the identity (no layer, as in the
official code's `StitchingLayer`).

Stitch initialisation (`init_stitches_from_transforms`, the paper's): the distillation's
width transforms map the teacher's features onto each student's, h_a ≈ W_a t + b_a, so a
stitch from student a to student b starts as W_b W_a⁺ (and the matching bias), with the
transforms of the matched positions nearest the stitch. The official code copies the
transpose of the mean transform (bias left at its random init); we use the pseudo-inverse,
which is the least-squares inverse of the map. `init_stitches(images)` is SN-Net's least
squares on calibration activations instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from elastic.anchors import AnchorFamily
from elastic.anchors.cost import count_flops
from elastic.builders.stages import Pieces, StagedPieces, fold
from elastic.builders.stitch_layer import StitchLayer, flatten_channels, least_squares
from elastic.errors import CheckpointError
from elastic.model import ElasticModel, register_builder
from elastic.subnet import Subnet

if TYPE_CHECKING:
    from elastic.builders.learngene_distill import DistillConfig, DistillResult

log = logging.getLogger(__name__)

STITCH_INITS = ("transforms", "least_squares", "random")


@dataclass(frozen=True)
class Descendant:
    """How one stitched descendant runs: front blocks [0 : front_stop], stitch, back blocks [back_start :]."""

    front: int  # auxiliary model of the front part (cheaper)
    front_stop: int  # front blocks run: [0, front_stop)
    back: int  # auxiliary model of the back part (dearer)
    back_start: int  # back blocks run: [back_start, depth); the stitch imitates the back's input to it
    layer: str | None  # key in `LearngenePool.stitches`; None = identity (equal widths)


def paired_configs(front_depth: int, back_depth: int, window: int = 2, stride: int = 1) -> list[list[tuple[int, int]]]:
    """SN-Net v1's paired stitching: (i, k) pairs per window, windows that add none dropped.

    `i` is the last front block run, `k` the first back block run; with different depths, `k`
    is mapped to the back's block at the same relative depth.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    seen: set[tuple[int, int]] = set()
    windows = []
    for start in range(0, front_depth, stride):
        ids = range(start, min(start + window, front_depth))
        pairs = []
        for i in ids:
            for k in ids:
                kb = min(back_depth - 1, round(k * back_depth / front_depth))
                if (i, kb) not in seen:
                    seen.add((i, kb))
                    pairs.append((i, kb))
        if pairs:
            windows.append(pairs)
    return windows


@register_builder
class LearngenePool(StagedPieces, ElasticModel):
    """Descendant models stitched from the blocks of distilled auxiliary ViTs.

    Args:
        family: the auxiliary models (timm ViTs), cheapest first; build them with
            `AnchorFamily.from_timm` so the pool can be saved.
        nearest: stitch only auxiliary models next to each other in cost (True) or every
            pair, small to large (False).
        window: block ids per sliding window (2).
        stride: window step (1).
    """

    builder = "LearngenePool"

    def __init__(self, family: AnchorFamily, nearest: bool = True, window: int = 2, stride: int = 1):
        super().__init__()
        if family[0].feature_layout != "tokens":
            raise ValueError("LearngenePool stitches ViT tokens; the auxiliary models must be ViTs")
        self.family = family
        self._config = dict(nearest=nearest, window=window, stride=stride)
        self.stitches = nn.ModuleDict()
        self.paths: list[Descendant | None] = [None] * len(family)
        self.distill_result: DistillResult | None = None  # set by `distill`: transforms, losses (not saved)
        k = len(family)
        pairs = [(a, a + 1) for a in range(k - 1)] if nearest else [(a, b) for a in range(k) for b in range(a + 1, k)]
        for front, back in pairs:
            fa, ba = family[front], family[back]
            c_in, c_out = _width(family, front), _width(family, back)
            for w, configs in enumerate(paired_configs(fa.depth, ba.depth, window, stride)):
                key = None if c_in == c_out else f"{front}to{back}_w{w}"
                if key is not None and key not in self.stitches:
                    self.stitches[key] = StitchLayer(c_in, c_out, "tokens")
                for i, kb in configs:
                    self.paths.append(Descendant(front, i + 1, back, kb, key))

    # ---- building from a teacher -------------------------------------------------------
    @classmethod
    def distill(
        cls,
        teacher: nn.Module,
        students: Sequence[Any] | AnchorFamily,
        data: tuple[torch.Tensor, torch.Tensor],
        epochs: float,
        config: DistillConfig | None = None,
        *,
        cache_dir: str | Path | None = None,
        progress: bool = False,
        stitch_init: str = "transforms",
        calibration: torch.Tensor | None = None,
        **pool_kwargs: Any,
    ) -> LearngenePool:
        """Distil `teacher` into `students` and build the pool from them.

        Args:
            teacher: the large timm ViT (frozen).
            students: the auxiliary models: timm specs as `AnchorFamily.from_timm` takes them
                (name, or (name, kwargs[, label])), or a built `AnchorFamily`.
            data: (images, labels) on the models' device.
            epochs: distillation epochs.
            config: a `learngene_distill.DistillConfig` (default recipe if None).
            cache_dir: resumable distillation cache (see `learngene_distill`).
            progress: tqdm bar.
            stitch_init: "transforms" (the paper's), "least_squares" (SN-Net's; needs
                `calibration`) or "random".
            calibration: images for the least-squares init.
            **pool_kwargs: `nearest`, `window`, `stride`.

        Returns:
            The pool; `pool.distill_result` holds the transforms and the loss history.

        Shape:
            data: images (N, C, H, W), labels (N,); calibration: (M, C, H, W)
        """
        from elastic.builders.learngene_distill import distill

        if stitch_init not in STITCH_INITS:
            raise ValueError(f"stitch_init must be one of {STITCH_INITS}, not {stitch_init!r}")
        if stitch_init == "least_squares" and calibration is None:
            raise ValueError("stitch_init='least_squares' needs calibration images")
        family = students if isinstance(students, AnchorFamily) else AnchorFamily.from_timm(students)
        family.to(data[0].device)
        result = distill(teacher, family, data, epochs, config, cache_dir=cache_dir, progress=progress)
        pool = cls(family, **pool_kwargs).to(data[0].device)
        if stitch_init == "transforms":
            pool.init_stitches_from_transforms(result.transforms)
        elif stitch_init == "least_squares":
            pool.init_stitches(calibration)
        pool.distill_result = result
        return pool.eval()

    # ---- subnets -----------------------------------------------------------------------
    def _build_subnets(self) -> list[Subnet]:
        costs = self.family.costs
        stitch_flops = {key: self._stitch_flops(key) for key in self.stitches}
        subnets = []
        for sid, path in enumerate(self.paths):
            if path is None:
                a = self.family[sid]
                subnets.append(Subnet(sid, "anchor", a.name, costs[sid].flops, costs[sid].params))
                continue
            f, b = costs[path.front], costs[path.back]
            layer = self.stitches[path.layer] if path.layer is not None else None
            flops = (
                f.stem_flops
                + sum(f.block_flops[: path.front_stop])
                + (stitch_flops[path.layer] if layer is not None else 0)
                + sum(b.block_flops[path.back_start :])
                + b.head_flops
            )
            params = (
                f.stem_params
                + sum(f.block_params[: path.front_stop])
                + (sum(p.numel() for p in layer.parameters()) if layer is not None else 0)
                + sum(b.block_params[path.back_start :])
                + b.head_params
            )
            fa, ba = self.family[path.front], self.family[path.back]
            desc = f"{fa.name}[0:{path.front_stop}] -> {ba.name}[{path.back_start}:{ba.depth}]"
            subnets.append(Subnet(sid, "learngene", desc, flops, params))
        return subnets

    @torch.no_grad()
    def _stitch_flops(self, key: str) -> int:
        path = next(p for p in self.paths if p is not None and p.layer == key)
        shape = self.family.costs[path.front].block_shapes[path.front_stop - 1]
        layer = self.stitches[key]
        x = torch.zeros(1, *shape, device=layer.weight.device, dtype=layer.weight.dtype)
        return count_flops(layer, x)[0]

    # ---- forward -----------------------------------------------------------------------
    # `forward` and `forward_stages` are `StagedPieces`': a descendant runs as `run_path`
    def run_path(self, x: torch.Tensor, path: Descendant) -> torch.Tensor:
        """A descendant's logits on the model's input `x`.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        front, back = self.family[path.front], self.family[path.back]
        h = front.forward_blocks(front.stem(x), 0, path.front_stop)
        if path.layer is not None:
            h = self.stitches[path.layer](h)
        return back.head(back.forward_blocks(h, path.back_start, back.depth))

    def path_flops(self, path: Descendant) -> tuple[int, list[int], int]:
        """The FLOPs `stage_fractions` splits: the front's blocks, then the back's."""
        f, b = self.family.costs[path.front], self.family.costs[path.back]
        return f.stem_flops, [*f.block_flops[: path.front_stop], *b.block_flops[path.back_start :]], b.head_flops

    def path_pieces(self, path: Descendant) -> Pieces:
        """The pieces `forward_stages` runs: the stitch with the block before it."""
        front, back = self.family[path.front], self.family[path.back]
        stem, blocks = front.stem, list(islice(front.blocks, path.front_stop))  # no new ModuleList
        if path.layer is not None:
            stem, blocks = fold(stem, blocks, self.stitches[path.layer])
        return stem, [*blocks, *islice(back.blocks, path.back_start, None)], back.head

    def input_size(self) -> tuple[int, int, int]:
        return self.family.input_size()

    # ---- stitch initialisation ---------------------------------------------------------
    @torch.no_grad()
    def init_stitches_from_transforms(self, transforms: Sequence[Any], inverse: str = "pinv") -> None:
        """Start every stitch from the distillation's width transforms (the paper's init).

        For a configuration (i, k) from student a to student b: S = W_b W_a⁺, bias
        b_b - S b_a, where W_a, b_a is a's block transform at the matched position nearest
        block i and W_b, b_b is b's nearest its block k - 1 (the back's input to block k); a
        shared layer starts from the mean over its configurations.

        Args:
            transforms: `learngene_distill.WidthTransforms`, one per auxiliary model in family order.
            inverse: "pinv" (W_a⁺, the least-squares inverse) or "transpose" (W_aᵀ, what the
                official code copies).
        """
        if len(transforms) != len(self.family):
            raise ValueError(f"{len(transforms)} transforms for {len(self.family)} auxiliary models")
        if inverse not in ("pinv", "transpose"):
            raise ValueError(f"inverse must be 'pinv' or 'transpose', not {inverse!r}")
        solutions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for path in self.paths:
            if path is None or path.layer is None:
                continue
            fa, ba = self.family[path.front], self.family[path.back]
            ta = transforms[path.front].nearest(path.front_stop - 1, fa.depth)
            tb = transforms[path.back].nearest(max(0, path.back_start - 1), ba.depth)
            wa = ta.weight.double()
            inv = torch.linalg.pinv(wa) if inverse == "pinv" else wa.T  # (C_teacher, C_a)
            weight = tb.weight.double() @ inv  # (C_b, C_a)
            bias = tb.bias.double() - weight @ ta.bias.double()
            solutions.setdefault(path.layer, []).append((weight, bias))
        for key, sols in solutions.items():
            layer = self.stitches[key]
            weight = torch.stack([w for w, _ in sols]).mean(0)
            bias = torch.stack([b for _, b in sols]).mean(0)
            layer.set_solution(weight.to(layer.weight), bias.to(layer.bias))
        log.info("initialised %d stitching layers from the width transforms (%s)", len(solutions), inverse)

    @torch.no_grad()
    def init_stitches(self, images: torch.Tensor) -> dict[str, float]:
        """SN-Net's least-squares init on a calibration batch: `[A | 1] M ≈ B`.

        A: the front's output after its last block run; B: the back's input to its first
        block run (its stem output when that is block 0). Eval mode, fp64.

        Returns:
            Relative reconstruction error per layer on the calibration batch, averaged over
            the configurations that share it.

        Shape:
            images: (B, C, H, W)
        """
        self.check_input(images)
        was_training = self.training
        self.eval()
        try:
            acts = []  # acts[m][j]: model m's input to block j (j = depth: its last output)
            for adapter in self.family:
                h = adapter.stem(images)
                outs = [h]
                for blk in adapter.blocks:
                    h = blk(h)
                    outs.append(h)
                acts.append(outs)
        finally:
            self.train(was_training)
        solutions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        operands: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for path in self.paths:
            if path is None or path.layer is None:
                continue
            a = flatten_channels(acts[path.front][path.front_stop], "tokens")
            b = flatten_channels(acts[path.back][path.back_start], "tokens")
            solutions.setdefault(path.layer, []).append(least_squares(a, b))
            operands.setdefault(path.layer, []).append((a, b))
        errors = {}
        for key, sols in solutions.items():
            layer = self.stitches[key]
            weight = torch.stack([w for w, _ in sols]).mean(0)
            bias = torch.stack([b for _, b in sols]).mean(0)
            layer.set_solution(weight.to(layer.weight), bias.to(layer.bias))
            errs = []
            for a, b in operands[key]:
                pred = nn.functional.linear(a, layer.weight, layer.bias)
                errs.append(float((pred - b).norm() / b.norm().clamp_min(1e-12)))
            errors[key] = sum(errs) / len(errs)
        log.info("initialised %d stitching layers by least squares on %d images", len(errors), images.shape[0])
        return errors

    # ---- storage -----------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes of every stored tensor (what `elastic.save` writes, less the file header)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    # ---- save / load -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def anchor_specs(self) -> list[dict[str, Any]]:
        if self.family.specs is None:
            raise CheckpointError(
                "auxiliary models built from model objects cannot be rebuilt on load; "
                "build them with AnchorFamily.from_timm(...) to save"
            )
        return [s.to_dict() for s in self.family.specs]

    @classmethod
    def from_config(cls, anchors: list[dict[str, Any]], config: dict[str, Any]) -> LearngenePool:
        family = AnchorFamily.from_timm([(a["name"], a.get("kwargs", {}), a.get("label")) for a in anchors])
        return cls(family, **config)


def _width(family: AnchorFamily, k: int) -> int:
    """Token width of auxiliary model k (its blocks' output channels)."""
    return int(family.costs[k].block_shapes[-1][-1])
