"""`convert(torch_module)`: the continual module that computes what a regular torch module does.

Like continual-inference's `co.continual(module)` (Hedegaard & Iosifidis, "Continual
Inference: A Library for Efficient Online Inference with Deep Neural Networks in PyTorch",
2022), but over a registry that callers can extend (`register_conversion`), and weights are
shared with the torch module, not copied.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from elastic.errors import UnsupportedArchitecture

from .base import StreamingModule
from .conv import conv_from_torch
from .encoder import TransformerEncoder
from .pointwise import CHANNEL_FIRST, CHANNEL_LAST, ELEMENTWISE, pointwise_from_torch
from .pooling import _FROM_TORCH as POOLS
from .pooling import pool_from_torch
from .sequential import Sequential
from .transformer_layer import SingleOutputEncoderLayer

Converter = Callable[..., StreamingModule]
"""(torch module, window) -> the continual module."""

CONVERSIONS: dict[type[nn.Module], Converter] = {}


def register_conversion(torch_type: type[nn.Module], converter: Converter) -> None:
    """Make `convert` turn instances of exactly `torch_type` into `converter(module, window)`."""
    CONVERSIONS[torch_type] = converter


def convert(module: nn.Module, window: int | None = None) -> StreamingModule:
    """The continual version of `module` (weights shared), recursing through `nn.Sequential`.

    Args:
        module: a supported torch module: Conv1d/2d/3d, AvgPool/MaxPool 1d/2d/3d, Linear,
            LayerNorm (channels), BatchNorm (eval), elementwise activations, Dropout, Identity,
            nn.Sequential of these, nn.TransformerEncoderLayer, nn.TransformerEncoder; or a
            `StreamingModule` (returned as is).
        window: tokens per attention window; required for transformer modules.

    Raises:
        UnsupportedArchitecture: a module (or a setting, e.g. circular padding) that does not stream.
    """
    if isinstance(module, StreamingModule):
        return module
    converter = CONVERSIONS.get(type(module))
    if converter is None:
        supported = ", ".join(sorted(t.__name__ for t in CONVERSIONS))
        raise UnsupportedArchitecture(f"no continual conversion for {type(module).__name__} (supported: {supported})")
    return converter(module, window)


def _need_window(module: nn.Module, window: int | None) -> int:
    if window is None:
        raise UnsupportedArchitecture(f"{type(module).__name__} streams over a window: pass convert(..., window=n)")
    return window


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_conversion(_t, lambda m, window: conv_from_torch(m))
for _t in POOLS:
    register_conversion(_t, lambda m, window: pool_from_torch(m))
for _t in (*ELEMENTWISE, *CHANNEL_LAST, *CHANNEL_FIRST):
    register_conversion(_t, lambda m, window: pointwise_from_torch(m))
register_conversion(nn.Sequential, lambda m, window: Sequential(*(convert(c, window) for c in m)))
register_conversion(nn.TransformerEncoderLayer, lambda m, window: SingleOutputEncoderLayer(m, _need_window(m, window)))
register_conversion(nn.TransformerEncoder, lambda m, window: TransformerEncoder.from_torch(m, _need_window(m, window)))
