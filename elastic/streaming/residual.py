"""Residual: `fn(x) + x`, with the skip path delayed to meet `fn`'s output.

The skip connection of a continual network must wait for the branch it joins (CoX3D,
Hedegaard & Iosifidis, ECCV 2022): it is a `Parallel` of `fn` and the identity, whose
alignment delays the identity by `fn.delay` steps.
"""

from __future__ import annotations

from torch import nn

from .base import StreamingModule
from .parallel import Parallel
from .pointwise import Pointwise


class Residual(Parallel):
    """`fn(x) + x` (or another `reduce` of the two), time-aligned.

    Args:
        fn: the residual branch, a `StreamingModule` of temporal stride 1 that keeps the
            channel count.
        reduce: how branch and skip combine ("sum" by default).
    """

    def __init__(self, fn: StreamingModule, reduce: str = "sum") -> None:
        super().__init__(fn, Pointwise(nn.Identity()), reduce=reduce)

    @property
    def fn(self) -> StreamingModule:
        return self.branches[0]
