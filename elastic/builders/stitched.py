"""`StitchedNet`: Stitchable Neural Networks (SN-Net, Pan et al., CVPR 2023; SN-Netv2, 2023).

One set of weights — a family of pretrained anchors plus small stitching layers — holds
many subnets: each anchor alone, and "front blocks of anchor a -> stitch -> back blocks of
anchor b" for the block pairs of `elastic.builders.stitch_plan`. Subnet ids: anchors first
(0..k-1, cheapest first), then the stitched paths in plan order.

A stitched path starts with the front anchor's stem and ends with the back anchor's final
norm and head (the reference code skips that norm; we keep it, so a whole-anchor path
equals timm's own forward).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from elastic.anchors import AnchorFamily
from elastic.anchors.cost import count_flops
from elastic.builders.stitch_layer import StitchLayer, flatten_channels, least_squares
from elastic.builders.stitch_plan import StitchPath, anchor_pairs, block_pairs
from elastic.errors import CheckpointError
from elastic.model import ElasticModel, register_builder
from elastic.subnet import Subnet

log = logging.getLogger(__name__)


@register_builder
class StitchedNet(ElasticModel):
    """Anchors joined by stitching layers.

    Args:
        family: the anchors, cheapest first.
        window: block ids per sliding window (SN-Net v1: 2).
        stride: window step (1).
        nearest: stitch only anchors next to each other in cost (True) or every pair.
        two_way: add SN-Netv2's paths from a larger anchor back to a smaller one.
        shared_stitches: one layer per window shared by its pairs (SN-Net v1); False gives
            each pair its own layer (SN-Netv2).
        lora_rank: rank of a low-rank update on every stitch (0 = none).
    """

    builder = "StitchedNet"

    def __init__(
        self,
        family: AnchorFamily,
        window: int = 2,
        stride: int = 1,
        nearest: bool = True,
        two_way: bool = False,
        shared_stitches: bool = True,
        lora_rank: int = 0,
    ):
        super().__init__()
        self.family = family
        self._config = dict(
            window=window,
            stride=stride,
            nearest=nearest,
            two_way=two_way,
            shared_stitches=shared_stitches,
            lora_rank=lora_rank,
        )
        layout = family[0].feature_layout
        self.stitches = nn.ModuleDict()
        self.paths: list[StitchPath | None] = [None] * len(family)
        for front, back in anchor_pairs(len(family), nearest, two_way):
            fa, ba = family[front], family[back]
            f_shapes, b_shapes = family.costs[front].block_shapes, family.costs[back].block_shapes
            windows = block_pairs(
                [fa.stage(i) for i in range(fa.depth)], [ba.stage(j) for j in range(ba.depth)], window, stride
            )
            for w, pairs in enumerate(windows):
                for i, j in pairs:
                    if _spatial(f_shapes[i], layout) != _spatial(b_shapes[j], layout):
                        continue  # different resolution: not stitchable
                    key = f"{front}to{back}_w{w}" if shared_stitches else f"{front}to{back}_{i}_{j}"
                    if key not in self.stitches:
                        self.stitches[key] = StitchLayer(
                            _channels(f_shapes[i], layout), _channels(b_shapes[j], layout), layout, lora_rank
                        )
                    self.paths.append(StitchPath(front, i, back, j, key))

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
            i, j = path.front_block, path.back_block
            layer = self.stitches[path.layer]
            flops = (
                f.stem_flops
                + sum(f.block_flops[: i + 1])
                + stitch_flops[path.layer]
                + sum(b.block_flops[j + 1 :])
                + b.head_flops
            )
            params = (
                f.stem_params
                + sum(f.block_params[: i + 1])
                + sum(p.numel() for p in layer.parameters())
                + sum(b.block_params[j + 1 :])
                + b.head_params
            )
            fa, ba = self.family[path.front], self.family[path.back]
            desc = f"{fa.name}[0:{i + 1}] -> {ba.name}[{j + 1}:{ba.depth}]"
            subnets.append(Subnet(sid, "stitch", desc, flops, params))
        return subnets

    @torch.no_grad()
    def _stitch_flops(self, key: str) -> int:
        path = next(p for p in self.paths if p is not None and p.layer == key)
        shape = self.family.costs[path.front].block_shapes[path.front_block]
        layer = self.stitches[key]
        x = torch.zeros(1, *shape, device=layer.weight.device, dtype=layer.weight.dtype)
        return count_flops(layer, x)[0]

    def path(self, subnet: int | Subnet) -> StitchPath | None:
        """How a subnet runs; None for a whole anchor."""
        return self.paths[self.subnet(subnet).id]

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, subnet: int | Subnet = 0) -> torch.Tensor:
        """Logits of one subnet.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        sid = self.subnet(subnet).id
        self.check_input(x)
        path = self.paths[sid]
        if path is None:
            return self.family[sid](x)
        front, back = self.family[path.front], self.family[path.back]
        x = front.forward_blocks(front.stem(x), 0, path.front_block + 1)
        x = self.stitches[path.layer](x)
        return back.head(back.forward_blocks(x, path.back_block + 1, back.depth))

    def input_size(self) -> tuple[int, int, int]:
        return self.family.input_size()

    # ---- stitch initialisation ---------------------------------------------------------
    @torch.no_grad()
    def init_stitches(self, images: torch.Tensor) -> dict[str, float]:
        """Least-squares initialisation of every stitching layer from a calibration batch.

        Each pair (i, j) gets the solution of `[A_i | 1] M ≈ B_j` (A: front activations after
        block i, B: back activations after block j, eval mode, fp64); a layer shared by
        several pairs starts from the mean of their solutions (SN-Net v1).

        Returns:
            Relative reconstruction error ||[A|1]M - B|| / ||B|| per layer, averaged over its
            pairs, on the calibration batch.
        """
        self.check_input(images)
        acts = self.family.capture(images)
        layout = self.family[0].feature_layout
        solutions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        operands: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for path in self.paths:
            if path is None:
                continue
            a = flatten_channels(acts[path.front][path.front_block], layout)
            b = flatten_channels(acts[path.back][path.back_block], layout)
            solutions.setdefault(path.layer, []).append(least_squares(a, b))
            operands.setdefault(path.layer, []).append((a, b))
        errors = {}
        for key, sols in solutions.items():
            weight = torch.stack([w for w, _ in sols]).mean(0)
            bias = torch.stack([b for _, b in sols]).mean(0)
            layer = self.stitches[key]
            layer.set_solution(weight.to(layer.weight.dtype), bias.to(layer.bias.dtype))
            errors[key] = sum(stitch_error(layer, a, b) for a, b in operands[key]) / len(sols)
        log.info(
            "initialised %d stitching layers by least squares on %d images; mean relative error %.4f",
            len(errors),
            images.shape[0],
            sum(errors.values()) / max(1, len(errors)),
        )
        return errors

    # ---- save / load -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def anchor_specs(self) -> list[dict[str, Any]]:
        if self.family.specs is None:
            raise CheckpointError(
                "anchors built from model objects cannot be rebuilt on load; "
                "build them with AnchorFamily.from_timm(...) to save"
            )
        return [s.to_dict() for s in self.family.specs]

    @classmethod
    def from_config(cls, anchors: list[dict[str, Any]], config: dict[str, Any]) -> StitchedNet:
        family = AnchorFamily.from_timm([(a["name"], a.get("kwargs", {}), a.get("label")) for a in anchors])
        return cls(family, **config)


@torch.no_grad()
def stitch_error(layer: StitchLayer, a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||layer(a) - b|| / ||b|| on flattened activations (rows, C)."""
    pred = nn.functional.linear(a, layer.weight, layer.bias)
    return float((pred - b).norm() / b.norm().clamp_min(1e-12))


def _spatial(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return tuple(shape[1:]) if layout == "nchw" else tuple(shape[:-1])


def _channels(shape: tuple[int, ...], layout: str) -> int:
    return shape[0] if layout == "nchw" else shape[-1]
