"""Export of elastic models for other runtimes: ONNX graphs per subnet (`elastic.export.onnx`).

Names resolve lazily (PEP 562): importing this package imports neither torch nor onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

DEFAULT_OPSET = 23  # the first opset with a fused Attention operator (CPU kernel since onnxruntime 1.23)

_LAZY = {
    "export_onnx": "elastic.export.onnx",
    "read_export_manifest": "elastic.export.onnx",
    "select_subnets": "elastic.export.onnx",
    "make_session": "elastic.export.session",
}

__all__ = ["DEFAULT_OPSET", "export_onnx", "make_session", "read_export_manifest", "select_subnets"]

if TYPE_CHECKING:
    from .onnx import export_onnx, read_export_manifest, select_subnets
    from .session import make_session


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'elastic.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
