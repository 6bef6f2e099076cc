"""`StitchedNet`: Stitchable Neural Networks (SN-Net, Pan et al., CVPR 2023; SN-Netv2, 2023).

One set of weights — a family of pretrained anchors plus small stitching layers — holds
many subnets: each anchor alone, and paths "front blocks of anchor a -> stitch -> back blocks
of anchor b" planned by `elastic.builders.stitch_plan`. Subnet ids: anchors first (0..k-1,
cheapest first), then the stitched paths in the official order.

Two plans:
- "v1" (default, SN-Net v1 exactly as ziplab/SN-Net `stitching_deit/`): nearest anchor pairs,
  cheaper in front, `paired_stitching(depth, window, stride)` configs (i, k) that run front
  blocks [0 : i+1] -> stitch -> back blocks [k :]; one layer per window. DeiT Ti/S/B: 71.
- "v2" (SN-Netv2, ziplab/SN-Netv2 `classification/`): per nearest pair, stitches both ways
  with one layer per position and direction, and the two-stitch paths small -> large -> small
  and large -> small -> large.

Final norm: the released SN-Net v1 DeiT results ran stitched paths into the back anchor's
head *without* its final norm (`forward_head` on the last block's output); SN-Netv2 keeps it.
`final_norm=None` (default) follows the plan's paper: v1 skips it, v2 keeps it. A whole anchor
always runs its own forward (norm included), equal to timm's.
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any

import torch
from torch import nn

from elastic.anchors import AnchorFamily
from elastic.anchors.cost import count_flops, count_params
from elastic.builders.stages import Pieces, StagedPieces, fold
from elastic.builders.stitch_layer import StitchLayer, flatten_channels, least_squares
from elastic.builders.stitch_plan import StitchPath, anchor_pairs, v1_pairs, v2_routes
from elastic.errors import CheckpointError
from elastic.model import ElasticModel, register_builder
from elastic.subnet import Subnet

log = logging.getLogger(__name__)

PLANS = ("v1", "v2")


@register_builder
class StitchedNet(StagedPieces, ElasticModel):
    """Anchors joined by stitching layers.

    Args:
        family: the anchors, cheapest first.
        window: block ids per sliding window (SN-Net v1's kernel size: 2). Plan "v1" only.
        stride: window step (1). Plan "v1" only.
        nearest: stitch only anchors next to each other in cost (True, both papers) or every
            pair (plan "v1" only).
        plan: "v1" (SN-Net) or "v2" (SN-Netv2's two-way and two-stitch paths).
        final_norm: run the back anchor's final norm on stitched paths; None follows the
            plan's paper (v1: False, v2: True).
        lora_rank: rank of a low-rank update on every stitch (0 = none), scaled by 1/rank
            as in SN-Netv2.
        lora_freeze_base: with LoRA, freeze the stitch's base weight (SN-Netv2 does).
    """

    builder = "StitchedNet"

    def __init__(
        self,
        family: AnchorFamily,
        window: int = 2,
        stride: int = 1,
        nearest: bool = True,
        plan: str = "v1",
        final_norm: bool | None = None,
        lora_rank: int = 0,
        lora_freeze_base: bool = True,
    ):
        super().__init__()
        if plan not in PLANS:
            raise ValueError(f"plan must be one of {PLANS}, not {plan!r}")
        self.family = family
        self._config = dict(
            window=window,
            stride=stride,
            nearest=nearest,
            plan=plan,
            final_norm=final_norm,
            lora_rank=lora_rank,
            lora_freeze_base=lora_freeze_base,
        )
        self.final_norm = (plan == "v2") if final_norm is None else bool(final_norm)
        self.layout = family[0].feature_layout
        self._lora = (lora_rank, lora_freeze_base)
        self.stitches = nn.ModuleDict()
        self.paths: list[StitchPath | None] = [None] * len(family)
        self._input_shapes = [self._block_input_shapes(k) for k in range(len(family))]
        if plan == "v1":
            self._plan_v1(window, stride, nearest)
        else:
            if not nearest:
                raise ValueError("plan 'v2' stitches nearest anchors only")
            self._plan_v2()

    # ---- plans -------------------------------------------------------------------------
    def _block_input_shapes(self, k: int) -> list[tuple[int, ...]]:
        """Shape (without batch) of anchor k's input to each block 0..depth (the last: its
        head's input): its stem output, then every block's output."""
        a, costs = self.family[k], self.family.costs[k]
        param = next(a.parameters())
        with torch.no_grad():
            stem = a.stem(torch.zeros(1, *a.input_size(), device=param.device, dtype=param.dtype))
        return [tuple(stem.shape[1:]), *costs.block_shapes]

    def _joinable(self, front: int, i: int, back: int, k: int) -> bool:
        """Whether front block i's output can feed back block k (same resolution)."""
        f_shape = self.family.costs[front].block_shapes[i]
        b_shape = self._input_shapes[back][k]
        if _spatial(f_shape, self.layout) != _spatial(b_shape, self.layout):
            return False
        if self.layout == "nchw":
            # CNNs (as SN-Net's official ResNet code): never into a stem, and only between
            # blocks of one stage
            fa, ba = self.family[front], self.family[back]
            return k > 0 and fa.stage(i) == ba.stage(k - 1)
        return True

    def _layer(self, key: str, front: int, i: int, back: int, k: int) -> str:
        """Create (once) the stitching layer `key` for front block i -> back start k."""
        c_in = _channels(self.family.costs[front].block_shapes[i], self.layout)
        c_out = _channels(self._input_shapes[back][k], self.layout)
        if key in self.stitches and (self.stitches[key].in_features, self.stitches[key].out_features) != (c_in, c_out):
            key = f"{key}_{c_in}x{c_out}"  # a CNN window across a stage boundary: its own layer
        if key not in self.stitches:
            rank, freeze = self._lora
            self.stitches[key] = StitchLayer(c_in, c_out, self.layout, rank, lora_freeze_base=freeze)
        return key

    def _plan_v1(self, window: int, stride: int, nearest: bool) -> None:
        for front, back in anchor_pairs(len(self.family), nearest):
            fa, ba = self.family[front], self.family[back]
            pairs = v1_pairs(
                [fa.stage(i) for i in range(fa.depth)], [ba.stage(j) for j in range(ba.depth)], window, stride
            )
            for i, k, w in pairs:
                if not self._joinable(front, i, back, k):
                    continue
                key = self._layer(f"{front}to{back}_w{w}", front, i, back, k)
                self.paths.append(StitchPath((front, back), ((0, i + 1), (k, ba.depth)), (key,)))

    def _plan_v2(self) -> None:
        for a, b in anchor_pairs(len(self.family)):
            small, large = (a, b) if self.family[a].depth <= self.family[b].depth else (b, a)
            ds, dl = self.family[small].depth, self.family[large].depth
            for kind, stitches in v2_routes(ds, dl):
                order = [small, large] if kind.startswith("s") else [large, small]
                anchors = tuple(order[s % 2] for s in range(len(stitches) + 1))
                starts = [0] + [s.k for s in stitches]
                stops = [s.i + 1 for s in stitches] + [self.family[anchors[-1]].depth]
                keys = []
                for s, st in enumerate(stitches):
                    f, t = anchors[s], anchors[s + 1]
                    if not self._joinable(f, st.i, t, st.k):
                        raise ValueError(f"SN-Netv2 stitch {f}:{st.i} -> {t}:{st.k} joins different resolutions")
                    keys.append(self._layer(f"{f}to{t}_{st.layer}", f, st.i, t, st.k))
                self.paths.append(StitchPath(anchors, tuple(zip(starts, stops, strict=True)), tuple(keys)))

    # ---- subnets -----------------------------------------------------------------------
    def _build_subnets(self) -> list[Subnet]:
        costs = self.family.costs
        stitch_flops = {key: self._stitch_flops(key) for key in self.stitches}
        stitch_params = {key: count_params([layer]) for key, layer in self.stitches.items()}
        subnets = []
        for sid, path in enumerate(self.paths):
            if path is None:
                a = self.family[sid]
                subnets.append(Subnet(sid, "anchor", a.name, costs[sid].flops, costs[sid].params))
                continue
            head_flops, head_params = self._head_cost(path.back)
            flops = costs[path.front].stem_flops + head_flops
            params = costs[path.front].stem_params + head_params
            for anchor, (start, stop) in zip(path.anchors, path.segments, strict=True):
                flops += sum(costs[anchor].block_flops[start:stop])
                params += sum(costs[anchor].block_params[start:stop])
            flops += sum(stitch_flops[key] for key in path.layers)
            params += sum(stitch_params[key] for key in dict.fromkeys(path.layers))
            subnets.append(Subnet(sid, "stitch", self.describe(path), flops, params))
        return subnets

    def path_flops(self, path: StitchPath) -> tuple[int, list[int], int]:
        """The FLOPs `stage_fractions` splits: the path's blocks in order (`forward_path`)."""
        costs = self.family.costs
        segments = zip(path.anchors, path.segments, strict=True)
        blocks = [f for a, (lo, hi) in segments for f in costs[a].block_flops[lo:hi]]
        return costs[path.front].stem_flops, blocks, costs[path.back].head_flops

    def describe(self, path: StitchPath) -> str:
        """E.g. "deit_tiny[0:8] -> deit_small[7:12]": blocks [start:stop] of each anchor."""
        return " -> ".join(
            f"{self.family[a].name}[{s}:{e}]" for a, (s, e) in zip(path.anchors, path.segments, strict=True)
        )

    @torch.no_grad()
    def _head_cost(self, k: int) -> tuple[int, int]:
        """FLOPs and parameters of anchor k's head as stitched paths run it."""
        costs = self.family.costs[k]
        norm = _final_norm(self.family[k])
        if self.final_norm or norm is None:
            return costs.head_flops, costs.head_params
        a = self.family[k]
        param = next(a.parameters())
        x = torch.zeros(1, *costs.block_shapes[-1], device=param.device, dtype=param.dtype)
        flops, _ = count_flops(a.model.forward_head, x)
        return flops, costs.head_params - count_params([norm])

    @torch.no_grad()
    def _stitch_flops(self, key: str) -> int:
        path = next(p for p in self.paths if p is not None and key in p.layers)
        s = path.layers.index(key)
        shape = self.family.costs[path.anchors[s]].block_shapes[path.segments[s][1] - 1]
        layer = self.stitches[key]
        x = torch.zeros(1, *shape, device=layer.weight.device, dtype=layer.weight.dtype)
        return count_flops(layer, x)[0]

    # ---- forward -----------------------------------------------------------------------
    # `forward` and `forward_stages` are `StagedPieces`': a path runs as `run_path`
    def run_path(self, x: torch.Tensor, path: StitchPath) -> torch.Tensor:
        """A stitched path's logits on the model's input `x`.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        return self.forward_path(self.family[path.front].stem(x), path)

    def path_pieces(self, path: StitchPath) -> Pieces:
        """The pieces `forward_stages` runs: a stitch with the block before it."""
        stem, blocks = self.family[path.front].stem, []
        for s, (lo, hi) in enumerate(path.segments):
            blocks += islice(self.family[path.anchors[s]].blocks, lo, hi)  # no new ModuleList
            if s < len(path.layers):
                stem, blocks = fold(stem, blocks, self.stitches[path.layers[s]])
        return stem, blocks, lambda h: self.head(path.back, h)

    def forward_path(self, x: torch.Tensor, path: StitchPath, start: int = 0) -> torch.Tensor:
        """Run `path` from its segment `start` on that anchor's input `x` to the logits.

        Shape:
            x: the input to block `path.segments[start][0]` of `path.anchors[start]`
            -> (B, num_classes)
        """
        for s in range(start, len(path.anchors)):
            lo, hi = path.segments[s]
            x = self.family[path.anchors[s]].forward_blocks(x, lo, hi)
            if s < len(path.layers):
                x = self.stitches[path.layers[s]](x)
        return self.head(path.back, x)

    def head(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Anchor k's head as stitched paths run it (with or without its final norm).

        Shape:
            x: anchor k's last block output -> (B, num_classes)
        """
        back = self.family[k]
        if self.final_norm or _final_norm(back) is None:
            return back.head(x)
        return back.model.forward_head(x)

    def input_size(self) -> tuple[int, int, int]:
        return self.family.input_size()

    # ---- stitch initialisation ---------------------------------------------------------
    @torch.no_grad()
    def stitch_targets(self, images: torch.Tensor) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Least-squares operands (A, B) per stitching layer, one per distinct position.

        A is the front anchor's output after its last block on the path, B the back anchor's
        input to its first block on the path (its stem output for block 0), both in eval
        mode and flattened to (rows, C). Only one-stitch paths contribute (SN-Netv2 fits its
        layers on them; two-stitch paths reuse the same layers).
        """
        was_training = self.training
        self.eval()
        try:
            acts = self.family.capture(images)
            stems = [a.stem(images) for a in self.family]
        finally:
            self.train(was_training)
        operands: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        seen: set[tuple[str, int, int]] = set()
        for path in self.paths:
            if path is None or len(path.layers) != 1 or (path.layer, path.front_block, path.back_start) in seen:
                continue
            seen.add((path.layer, path.front_block, path.back_start))
            k = path.back_start
            b = stems[path.back] if k == 0 else acts[path.back][k - 1]
            a = acts[path.front][path.front_block]
            operands.setdefault(path.layer, []).append(
                (flatten_channels(a, self.layout), flatten_channels(b, self.layout))
            )
        return operands

    @torch.no_grad()
    def init_stitches(self, images: torch.Tensor) -> dict[str, float]:
        """Least-squares initialisation of every stitching layer from a calibration batch.

        Each position gets the solution of `[A | 1] M ≈ B` (`stitch_targets`; fp64); a layer
        shared by several positions starts from the mean of their solutions (SN-Net v1).
        The official code fits in train mode on one augmented batch; this fits in eval mode.

        Returns:
            Relative reconstruction error ||[A|1]M - B|| / ||B|| per layer, averaged over its
            positions, on the calibration batch.
        """
        self.check_input(images)
        errors = {}
        for key, ops in self.stitch_targets(images).items():
            sols = [least_squares(a, b) for a, b in ops]
            weight = torch.stack([w for w, _ in sols]).mean(0)
            bias = torch.stack([b for _, b in sols]).mean(0)
            layer = self.stitches[key]
            layer.set_solution(weight.to(layer.weight.dtype), bias.to(layer.bias.dtype))
            errors[key] = sum(stitch_error(layer, a, b) for a, b in ops) / len(ops)
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
        unknown = set(config) - {"window", "stride", "nearest", "plan", "final_norm", "lora_rank", "lora_freeze_base"}
        if unknown:
            raise CheckpointError(
                f"saved by an older StitchedNet (config keys {sorted(unknown)}): its subnet ids "
                "follow another plan; rebuild and save it again"
            )
        family = AnchorFamily.from_timm([(a["name"], a.get("kwargs", {}), a.get("label")) for a in anchors])
        return cls(family, **config)


@torch.no_grad()
def stitch_error(layer: StitchLayer, a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||layer(a) - b|| / ||b|| on flattened activations (rows, C), LoRA included."""
    pred = layer.linear(a)
    return float((pred - b).norm() / b.norm().clamp_min(1e-12))


def _final_norm(adapter) -> nn.Module | None:
    """The anchor's final norm before pooling (ViT `norm`), None if it has none."""
    norm = getattr(adapter.model, "norm", None) if adapter.family == "vit" else None
    return None if norm is None or isinstance(norm, nn.Identity) else norm


def _spatial(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return tuple(shape[1:]) if layout == "nchw" else tuple(shape[:-1])


def _channels(shape: tuple[int, ...], layout: str) -> int:
    return shape[0] if layout == "nchw" else shape[-1]
