"""The `Subnet` record every builder returns, and Pareto selection over subnets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Subnet:
    """One runnable sub-network of an elastic model.

    Ids are 0..n-1 and stable across save/load; `flops` are FLOPs (not MACs) per sample,
    counted with `torch.utils.flop_counter` with fused attention off. A "sorted" subnet
    (`SortedNet`) is a nested prefix of one network, described as "vit-b[d4 w32 h2 mlp64]":
    the first 4 blocks, 32 embedding channels, 2 heads and 64 MLP hidden units.
    """

    id: int  # position in `model.subnets()`
    kind: str  # "anchor" | "stitch" | "sorted" | "learngene" (a stitched Learngene Pool descendant)
    description: str  # e.g. "deit_tiny[0:8] -> deit_small[8:12]"
    flops: int  # FLOPs per sample
    params: int  # parameters this subnet touches
    accuracy: float | None = None  # top-1 in [0, 1], filled by evaluation

    def with_accuracy(self, accuracy: float | None) -> Subnet:
        return replace(self, accuracy=accuracy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subnet:
        return cls(**{k: d[k] for k in ("id", "kind", "description", "flops", "params")}, accuracy=d.get("accuracy"))


def pareto(
    subnets: Sequence[Subnet],
    key: Callable[[Subnet], float] | str = "flops",
    value: Callable[[Subnet], float] | str = "accuracy",
) -> list[int]:
    """Ids of the subnets no other subnet beats on both cost and value.

    A subnet is dominated when another one costs no more (`key`, lower is better) and is
    worth at least as much (`value`, higher is better), and is strictly better in one. Subnets
    without a value are skipped. Returned ids are sorted by cost.

    Args:
        subnets: candidates.
        key: cost, an attribute name or a function of the subnet (e.g. a latency lookup).
        value: benefit, an attribute name or a function; defaults to accuracy.
    """
    cost_of = (lambda s: getattr(s, key)) if isinstance(key, str) else key
    value_of = (lambda s: getattr(s, value)) if isinstance(value, str) else value
    scored = [(cost_of(s), value_of(s), s.id) for s in subnets if value_of(s) is not None]
    scored.sort(key=lambda t: (t[0], -t[1]))
    front, best = [], float("-inf")
    for _cost, val, sid in scored:
        if val > best:
            front.append(sid)
            best = val
    return front
