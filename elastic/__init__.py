"""elastic: an elastic inference runtime for PyTorch.

One set of weights holds many subnets of different cost and accuracy; the runtime picks
one per request so it meets its latency budget with the best accuracy the load allows.
"""

from . import errors
from .checkpoint import load, save
from .model import BUILDERS, ElasticModel, register_builder
from .stitch_layer import StitchLayer
from .stitched import StitchedNet
from .subnet import Subnet, pareto

__version__ = "0.1.0"

__all__ = [
    "BUILDERS",
    "ElasticModel",
    "StitchLayer",
    "StitchedNet",
    "Subnet",
    "errors",
    "load",
    "pareto",
    "register_builder",
    "save",
]
