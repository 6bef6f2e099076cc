"""onnxruntime sessions with deliberate threading and providers, for exported subnets.

One place decides how an `InferenceSession` is made, so the export's own check and the
serving executor run graphs the same way. onnxruntime by default starts one intra-op thread
per physical core and keeps them spinning between runs; on a small shared CPU (two cores,
several processes) that spinning competes with everything else, so sessions here get one
intra-op and one inter-op thread and no spinning unless the caller asks otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from elastic.errors import ExportError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

Provider = str | tuple[str, dict[str, Any]]


def import_onnxruntime() -> Any:
    """The onnxruntime module, or an `ExportError` saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError(
            "onnxruntime is not installed: pip install 'elastic-runtime[dev]' (CPU) or '[gpu]' (onnxruntime-gpu)"
        ) from e
    return onnxruntime


def default_providers(device: str | torch.device = "cpu") -> list[Provider]:
    """CUDA (then CPU for what CUDA cannot run) for a CUDA device when onnxruntime-gpu has
    it, else the CPU provider alone (logged when a CUDA device had to fall back)."""
    device = torch.device(device)
    if device.type != "cuda":
        return [CPU]
    available = import_onnxruntime().get_available_providers()
    if CUDA not in available:
        log.warning(
            "device %s asked for but onnxruntime has no %s (available: %s; install the 'gpu' extra, "
            "onnxruntime-gpu, instead of onnxruntime): running on the CPU provider",
            device,
            CUDA,
            ", ".join(available),
        )
        return [CPU]
    return [(CUDA, {"device_id": device.index or 0}), CPU]


def make_session(
    path: str | Path,
    providers: Sequence[Provider] | None = None,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    spinning: bool = False,
) -> Any:
    """An `onnxruntime.InferenceSession` on one exported graph.

    Args:
        path: the .onnx file.
        providers: execution providers in priority order (default: the CPU provider).
        intra_op_threads: threads inside one operator (0 = onnxruntime's default, one per core).
        inter_op_threads: threads across operators (used only in parallel execution mode).
        spinning: let idle intra-op threads spin-wait for work (lower latency on an idle,
            dedicated CPU; wasted cycles on a shared one).

    Raises:
        ExportError: onnxruntime cannot load the graph (corrupt file, or an opset or operator
            this onnxruntime does not support).
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only: the graph optimiser's notes are not for users
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or [CPU]))
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
        raise ExportError(f"onnxruntime {ort.__version__} cannot load {path}: {e}") from e
