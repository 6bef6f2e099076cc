"""Continual (streaming) modules: a clip model run one frame at a time with the clip model's output.

After the Continual Inference Networks of Hedegaard et al. (CoX3D, ECCV 2022; Continual
Transformers, ICLR 2023; the continual-inference library). Every module meets one contract
(`base.StreamingModule`): offline `forward(x)` over `(B, C, T, ...)`, functional
`step(x_t, state) -> (y_t | None, state)` (continue from the state it returns; under
inference the transformer layers write their key/value rings in place, so a retry is exact
but a fork is not: `base.py`), `init_state(batch, frame_shape)`, `delay`,
`receptive_field`. State is a value, batch first, so `StreamSet` steps any set of streams in
one batch; `Stateful` holds the state of one lockstep batch for convenience.

    import elastic.streaming as es

    net = es.convert(torch_model)                   # or build from es.Conv3d, es.Residual, ...
    streams = es.StreamSet(net, frame_shape=(3, 112, 112))
    a, b = streams.open(), streams.open()
    out = streams.step({a: frame_a, b: frame_b})    # out.outputs[a]: a frame or None
"""

from __future__ import annotations

from .base import State, StreamingModule
from .conv import Conv1d, Conv2d, Conv3d
from .convert import CONVERSIONS, convert, register_conversion
from .delay import Delay
from .encoder import TransformerEncoder
from .onnx_step import export_step_onnx
from .parallel import REDUCTIONS, Parallel
from .pointwise import Pointwise
from .pooling import AvgPool1d, AvgPool2d, AvgPool3d, MaxPool1d, MaxPool2d, MaxPool3d
from .positional import RecyclingPositionalEncoding
from .residual import Residual
from .sequential import Sequential
from .stateful import Stateful
from .stream_set import StepResults, StreamSet
from .transformer_layer import RetroactiveEncoderLayer, SingleOutputEncoderLayer

__all__ = [
    "CONVERSIONS",
    "REDUCTIONS",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Delay",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Parallel",
    "Pointwise",
    "RecyclingPositionalEncoding",
    "Residual",
    "RetroactiveEncoderLayer",
    "Sequential",
    "SingleOutputEncoderLayer",
    "State",
    "Stateful",
    "StepResults",
    "StreamSet",
    "StreamingModule",
    "TransformerEncoder",
    "convert",
    "export_step_onnx",
    "register_conversion",
]
