"""`OnnxRuntimeExecutor`: the engine's batches run as ONNX graphs in onnxruntime.

The graphs come from `elastic export-onnx` (`elastic.export.onnx`): one per subnet, dynamic
batch axis, listed with their sha256 in a manifest. The executor opens one
`InferenceSession` per subnet the first time that subnet runs (or is warmed up), after
checking the file's hash and that the graph reproduces the model's own forward on a seeded
input, so an export of other weights cannot serve silently. Sessions use the CPU provider,
or CUDA then CPU for a CUDA device when onnxruntime-gpu is installed, and one intra-op
thread without spin-waiting by default (`elastic.export.session`): the engine runs batches
one at a time on its worker thread, and on a small shared CPU more threads cost more than
they give (measure with `elastic bench onnx`).

Use it as `Runtime(model, executor="onnxruntime", executor_options={"export_dir": DIR})`, or
`make_executor("onnxruntime", model, device, export_dir=DIR)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from elastic.errors import ExportError
from elastic.export.onnx import (
    INPUT,
    OUTPUT,
    check_export_matches,
    exported_ids,
    graph_path,
    read_export_manifest,
)
from elastic.export.session import CPU, Provider, default_providers, make_session
from elastic.model import ElasticModel

from .executor import Executor

log = logging.getLogger(__name__)


class OnnxRuntimeExecutor(Executor):
    """Runs each subnet as its exported ONNX graph in onnxruntime.

    Args:
        model: the elastic model the export was made from (checked against the manifest,
            used for input checks and the first-use output check).
        device: where outputs go; a CUDA device selects the CUDA provider when available.
        export_dir: the folder `elastic export-onnx` wrote.
        providers: onnxruntime execution providers, overriding the choice from `device`.
        intra_op_threads: onnxruntime threads per operator (0 = one per core).
        inter_op_threads: threads across operators.
        spinning: let idle onnxruntime threads spin-wait (for a dedicated CPU).
        check_atol: largest |ORT - torch| tolerated on the first-use check; None: 1e-4 on
            the CPU provider, 1e-2 with CUDA (where onnxruntime may use TF32); negative: no
            check.

    Raises:
        ExportError: no `export_dir`, or an export that is missing, modified or of another model.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: ElasticModel,
        device: str | torch.device = "cpu",
        export_dir: str | Path | None = None,
        providers: Sequence[Provider] | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        spinning: bool = False,
        check_atol: float | None = None,
    ):
        super().__init__(model, device)
        if export_dir is None:
            raise ExportError(
                "the onnxruntime executor needs an export folder: executor_options={'export_dir': DIR}, "
                "written by `elastic export-onnx`"
            )
        self.export_dir = Path(export_dir)
        self.manifest = read_export_manifest(self.export_dir)
        check_export_matches(self.manifest, model, self.export_dir)
        self.providers = list(providers) if providers is not None else default_providers(self.device)
        self.threads = {"intra_op_threads": intra_op_threads, "inter_op_threads": inter_op_threads}
        self.spinning = spinning
        on_cpu = all((p if isinstance(p, str) else p[0]) == CPU for p in self.providers)
        self.check_atol = check_atol if check_atol is not None else (1e-4 if on_cpu else 1e-2)
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def subnet_ids(self) -> list[int]:
        """The subnets this executor can run: those in the export."""
        return exported_ids(self.manifest)

    def session(self, subnet: int) -> Any:
        """The subnet's `InferenceSession`, created (and checked) on first use.

        Raises:
            UnknownSubnet: an id the model does not hold.
            ExportError: the subnet was not exported, its file is missing or does not match
                its sha256, onnxruntime cannot load it, or it does not reproduce the model.
        """
        sid = self.model.subnet(subnet).id
        found = self._sessions.get(sid)
        if found is not None:
            return found
        with self._lock:
            if sid not in self._sessions:
                path = graph_path(self.export_dir, self.manifest, sid)
                session = make_session(path, self.providers, spinning=self.spinning, **self.threads)
                if self.check_atol >= 0:
                    self._check(sid, session, path)
                log.info("onnxruntime session for subnet %d on %s", sid, ", ".join(session.get_providers()))
                self._sessions[sid] = session
            return self._sessions[sid]

    @torch.inference_mode()
    def _check(self, sid: int, session: Any, path: Path) -> None:
        x = torch.randn(1, *self.model.input_size(), generator=torch.Generator().manual_seed(sid))
        expected = self.model(x.to(self.device), subnet=sid).float().cpu()
        got = torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])
        diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
        if not diff <= self.check_atol:
            raise ExportError(
                f"{path} does not reproduce subnet {sid} of this model (max abs diff {diff:.2e} > "
                f"{self.check_atol:.0e}): exported from other weights?"
            )

    def run(self, subnet: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of `subnet` on `x`, computed by onnxruntime, on `self.device`.

        Shape:
            x: (B, C, H, W) -> (B, num_classes)
        """
        self.model.check_input(x)
        session = self.session(subnet)
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = session.run([OUTPUT], {INPUT: feed})[0]
        return torch.from_numpy(out).to(self.device)
