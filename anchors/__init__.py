"""timm anchors: loading, one adapter per architecture family, cost, calibration capture."""

from . import resnet, vit  # noqa: F401  (register the adapters)
from .adapter import AnchorAdapter, adapt, register_adapter, supported_families
from .cost import PieceCosts, count_flops, count_params, measure_pieces, unfused_attention
from .family import AnchorFamily, AnchorSpec
from .pretrained import create_anchor, read_state_dict

__all__ = [
    "AnchorAdapter",
    "AnchorFamily",
    "AnchorSpec",
    "PieceCosts",
    "adapt",
    "count_flops",
    "count_params",
    "create_anchor",
    "measure_pieces",
    "read_state_dict",
    "register_adapter",
    "supported_families",
    "unfused_attention",
]
