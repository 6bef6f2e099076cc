"""`ElasticModel`: the contract every builder (StitchedNet, SortedNet, LearngenePool) meets.

    model.subnets() -> list[Subnet]     # ids 0..n-1, stable across save/load
    model(x, subnet=i | Subnet)         # run one subnet
    model.sample_subnet(rng, policy)    # for sandwich / uniform / FLOPs-grouped training

Builders register by name so `elastic.load` can rebuild any of them from a manifest.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from elastic.errors import InvalidInput, UnknownSubnet
from elastic.subnet import Subnet

BUILDERS: dict[str, type[ElasticModel]] = {}


def register_builder(cls: type[ElasticModel]) -> type[ElasticModel]:
    """Class decorator: make a builder loadable by its class name."""
    BUILDERS[cls.__name__] = cls
    return cls


def builder_class(name: str) -> type[ElasticModel] | None:
    """The registered builder called `name`, importing the modules of `elastic.builders`
    (where every builder registers itself) on first need; None if there is none."""
    if name not in BUILDERS:
        import elastic.builders

        for info in pkgutil.iter_modules(elastic.builders.__path__, "elastic.builders."):
            importlib.import_module(info.name)
    return BUILDERS.get(name)


def sandwich_middle(subnets: Sequence[Subnet], rng: random.Random) -> Subnet:
    """One of the random subnets of a sandwich-rule step (Yu & Huang, US-Nets, ICCV 2019).

    The sandwich rule trains the cheapest and the dearest subnet (by FLOPs) every step plus
    k random ones; this draws a random one uniformly from the rest (from all when there are
    at most two).
    """
    if len(subnets) <= 2:
        return rng.choice(list(subnets))
    ends = {min(subnets, key=lambda s: (s.flops, s.id)).id, max(subnets, key=lambda s: (s.flops, s.id)).id}
    return rng.choice([s for s in subnets if s.id not in ends])


class ElasticModel(nn.Module):
    """Many subnets in one set of weights."""

    builder: ClassVar[str] = "ElasticModel"

    def __init__(self) -> None:
        super().__init__()
        self._subnets: list[Subnet] | None = None
        self._accuracy: dict[int, float] = {}
        self._resolved: dict[int, tuple[Subnet, Subnet]] = {}  # id -> (table entry, it with its accuracy)

    # ---- subnets -----------------------------------------------------------------------
    def _build_subnets(self) -> list[Subnet]:
        raise NotImplementedError

    def subnets(self) -> list[Subnet]:
        if self._subnets is None:
            self._subnets = self._build_subnets()
        return [s.with_accuracy(self._accuracy.get(s.id)) for s in self._subnets]

    def __len__(self) -> int:
        return len(self.subnets())

    def subnet(self, ref: int | Subnet) -> Subnet:
        """Resolve an id or a `Subnet` to this model's `Subnet`; `UnknownSubnet` otherwise."""
        if self._subnets is None:
            self._subnets = self._build_subnets()
        subnets = self._subnets  # the cached table: this runs on every forward
        sid = ref.id if isinstance(ref, Subnet) else ref
        if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid < len(subnets):
            raise UnknownSubnet(f"no subnet {ref!r}: this model has ids 0..{len(subnets) - 1}")
        found = subnets[sid]
        if isinstance(ref, Subnet) and ref.description != found.description:
            raise UnknownSubnet(f"subnet {ref.id} here is {found.description!r}, not {ref.description!r}")
        # with its accuracy, made once (a dataclass copy cost a few µs on every forward)
        known = self._resolved.get(sid)
        if known is not None and known[0] is found:
            return known[1]
        resolved = found.with_accuracy(self._accuracy.get(sid))
        self._resolved[sid] = (found, resolved)
        return resolved

    def set_accuracies(self, accuracies: Mapping[int, float] | Sequence[float | None]) -> None:
        """Record evaluated top-1 accuracies (saved in the manifest)."""
        items = accuracies.items() if isinstance(accuracies, Mapping) else enumerate(accuracies)
        for sid, acc in items:
            self.subnet(sid)
            if acc is None:
                self._accuracy.pop(sid, None)
            else:
                self._accuracy[sid] = float(acc)
            self._resolved.pop(sid, None)

    def flops_groups(self, gap: float | None = None) -> list[list[int]]:
        """Subnet ids grouped by FLOPs, as SN-Netv2's `group_subnets_by_flops`.

        Walk the subnets from cheapest to dearest; a subnet more than `gap` FLOPs away from the
        current group's reference starts a new group and becomes its reference (the first
        reference is 0 FLOPs, as in SN-Netv2). SN-Netv2 used 1 GMAC (2 GFLOPs)
        on DeiT-S/B/L, about a thirteenth of that FLOPs range; `gap=None` takes a tenth of
        this model's range, so small models group the same way.

        Returns:
            Groups of ids (each sorted), cheapest group first.
        """
        subnets = sorted(self.subnets(), key=lambda s: (s.flops, s.id))
        if gap is None:
            gap = (subnets[-1].flops - subnets[0].flops) / 10
        groups: list[list[int]] = [[]]
        reference = 0
        for s in subnets:
            if abs(s.flops - reference) > gap:
                if groups[-1]:
                    groups.append([])
                reference = s.flops
            groups[-1].append(s.id)
        return [sorted(g) for g in groups]

    def sample_subnet(self, rng: random.Random, policy: str = "uniform", flops_gap: float | None = None) -> Subnet:
        """Draw a subnet for one training step.

        Policies: "uniform" over all subnets (SN-Net v1); "flops" draws a FLOPs group
        (`flops_groups(flops_gap)`) uniformly, then a subnet inside it uniformly (SN-Netv2's
        resource-constrained sampling, so the many mid-size stitches do not crowd out the rest);
        "sandwich" draws uniformly from all but the cheapest and the dearest subnet, the random
        part of a sandwich-rule step (`sandwich_middle`).
        """
        subnets = self.subnets()
        if policy == "uniform":
            return rng.choice(subnets)
        if policy == "flops":
            groups = self.flops_groups(flops_gap)
            return subnets[rng.choice(rng.choice(groups))]
        if policy == "sandwich":
            return sandwich_middle(subnets, rng)
        raise ValueError(f"unknown sampling policy {policy!r}; use 'uniform', 'flops' or 'sandwich'")

    def stage_fractions(self, subnet: int | Subnet) -> tuple[float, ...]:
        """Where a forward of `subnet` can pause: the share of its work done at each stage
        boundary, strictly increasing in (0, 1); empty (the default) when it cannot pause.
        A preemptive scheduler (`BudgetScheduler(stages=...)`) plans with these."""
        return ()

    def forward_stages(self, x: torch.Tensor, subnet: int | Subnet = 0) -> Generator[None, None, torch.Tensor]:
        """`forward`, as a generator that yields at each boundary of `stage_fractions(subnet)`
        and returns the logits: the caller may run other work between two stages. The
        default cannot pause: it yields nothing.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        return self(x, subnet=subnet)
        yield  # unreachable: makes this a generator

    def stage_pieces(self, subnet: int | Subnet = 0) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
        """`forward_stages` as one function per stage, for an input that passed `check_input`:
        applied in order they give `forward`, and the staged forward pauses between two (so
        there is one more than `stage_fractions(subnet)` has boundaries). An executor that
        prepares each stage apart (the staged traced executor) needs them; None (the
        default): the model does not list them."""
        return None

    # ---- inputs ------------------------------------------------------------------------
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one input sample."""
        raise NotImplementedError

    def check_input(self, x: Any) -> None:
        """Raise `InvalidInput` unless `x` is a finite float batch of `input_size()`."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInput(f"expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InvalidInput(f"expected a floating-point tensor, got {x.dtype}")
        expected = self.input_size()
        if x.dim() != 4 or tuple(x.shape[1:]) != expected or x.shape[0] == 0:
            raise InvalidInput(f"expected shape (B>0, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if not torch.compiler.is_compiling() and not _all_finite(x):
            raise InvalidInput("input holds NaN or infinite values")

    # ---- save / load -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Builder arguments, JSON-serialisable, enough to rebuild the structure."""
        raise NotImplementedError

    def anchor_specs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, anchors: list[dict[str, Any]], config: dict[str, Any]) -> ElasticModel:
        """Rebuild the structure (random weights) from a manifest's anchors and config.

        `elastic.load` calls this only after `elastic.manifest` has checked the manifest:
        its schema and hash, anchor kwargs against `ANCHOR_KWARGS`, and the anchors' size
        against `max_blocks` / `max_params`. Build from these values alone: no file or
        network access (anchors with `pretrained=False`), and refuse unknown config keys
        (a TypeError is fine: `load` turns it into a `CheckpointError`). A builder that adds
        config keys should give their types and ranges in `elastic.manifest.CONFIG_FIELDS`.
        """
        raise NotImplementedError


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element of `x` is finite: a finite sum means so (one reduction, no mask:
    3 µs for a demo sample where `isfinite(x).all()` takes 8, and 7.5 µs for a 224-px image
    where it takes 290); a sum that is not — a NaN, an infinity, or only an overflow — is
    checked element by element. Half precision sums in float32: its own range (65504) would
    overflow on the sum of an ordinary image and send every check the slow way."""
    total = x.sum(dtype=torch.float32) if x.dtype == torch.float16 else x.sum()
    return math.isfinite(total.item()) or bool(torch.isfinite(x).all())
