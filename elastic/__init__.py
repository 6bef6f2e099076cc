"""elastic: an elastic inference runtime for PyTorch.

One set of weights holds many subnets of different cost and accuracy; the runtime picks
one per request so it meets its latency budget with the best accuracy the load allows.

Package-level names are resolved lazily (PEP 562): `import elastic`, `elastic.errors` and
the pure-Python scheduler import neither torch nor timm; `elastic.StitchedNet` does, on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .subnet import Subnet, pareto

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "BUILDERS": "elastic.model",
    "ElasticModel": "elastic.model",
    "register_builder": "elastic.model",
    "LearngenePool": "elastic.builders.learngene",
    "load": "elastic.checkpoint",
    "save": "elastic.checkpoint",
    "SortedNet": "elastic.builders.sorted",
    "StitchLayer": "elastic.builders.stitch_layer",
    "StitchedNet": "elastic.builders.stitched",
}

__all__ = [
    "BUILDERS",
    "ElasticModel",
    "LearngenePool",
    "SortedNet",
    "StitchLayer",
    "StitchedNet",
    "Subnet",
    "errors",
    "load",
    "pareto",
    "register_builder",
    "save",
]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .builders.learngene import LearngenePool
    from .builders.sorted import SortedNet
    from .builders.stitch_layer import StitchLayer
    from .builders.stitched import StitchedNet
    from .checkpoint import load, save
    from .model import BUILDERS, ElasticModel, register_builder


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'elastic' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
