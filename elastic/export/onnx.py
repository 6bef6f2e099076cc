"""ONNX export of an elastic model's subnets: one graph per subnet plus a hashed manifest.

Each chosen subnet of an `ElasticModel` (SN-Net's stitched paths, Pan et al., CVPR 2023, or
any other builder's) becomes its own ONNX graph with a dynamic batch axis, exported by
torch's exporter (`torch.onnx.export(dynamo=True)`) on the CPU, with the model as timm
builds it: fused attention (`F.scaled_dot_product_attention`) becomes ONNX's `Attention`
operator from opset 23 on, and MatMul/Softmax below it. Stitching layers export their torch
reference (ONNX has no Triton op).

The output folder holds `subnet-<id>.onnx` files and `manifest.json`, written like a
checkpoint (`elastic.checkpoint`): every file through a temp file and a rename, graphs first
and the manifest last; the manifest ties each file to its subnet id, description, FLOPs and
accuracy and holds its sha256, and it carries a sha256 of its own content. Before a graph
is listed, onnxruntime loads it and its output is compared with the torch forward, which
also checks that this onnxruntime supports the opset. Any way an export can be wrong on
reading raises `ExportError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elastic.checkpoint import MANIFEST, atomic_write, atomic_write_json, sha256_file
from elastic.errors import ExportError, UnknownSubnet
from elastic.export import DEFAULT_OPSET
from elastic.export.session import import_onnxruntime, make_session
from elastic.model import ElasticModel
from elastic.subnet import pareto

log = logging.getLogger(__name__)

FORMAT = "elastic-onnx/1"
MIN_OPSET = 18  # the oldest torch's exporter writes
INPUT = "images"
OUTPUT = "logits"
BATCH_AXIS = "batch"
TRACE_BATCH = 2  # the example batch: not 1, so the exporter cannot specialise the batch axis to it
VERIFY_BATCHES = (1, 3)


def subnet_file(sid: int) -> str:
    return f"subnet-{sid:03d}.onnx"


class SubnetGraph(nn.Module):
    """One subnet of an elastic model as a module of its input alone, for the exporter.

    Shape:
        images: (B, C, H, W) -> (B, num_classes)
    """

    def __init__(self, model: ElasticModel, subnet: int):
        super().__init__()
        self.model = model
        self.subnet = subnet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, subnet=self.subnet)


def select_subnets(model: ElasticModel, spec: str | Sequence[int]) -> list[int]:
    """Subnet ids from "all", "pareto" (the accuracy/FLOPs front), "0,3,7-9" or a list of ids.

    Raises:
        UnknownSubnet: an id the model does not hold.
        ValueError: "pareto" on a model without accuracies, or a malformed spec.
    """
    subnets = model.subnets()
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return [s.id for s in subnets]
        if text == "pareto":
            front = pareto(subnets)
            if not front:
                raise ValueError("'pareto' needs evaluated accuracies and this model has none: use 'all' or ids")
            return front
        ids: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            try:
                ids += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
            except ValueError:
                raise ValueError(f"bad subnet spec {spec!r}: use 'all', 'pareto' or ids like '0,3,7-9'") from None
        spec = ids
    if not spec:
        raise ValueError("no subnets to export")
    chosen = sorted({model.subnet(int(s)).id for s in spec})
    return chosen


@contextlib.contextmanager
def _torch_kernels() -> Iterator[None]:
    """Run the stitching layers' torch reference while exporting (`elastic.kernels.dispatch`)."""
    before = os.environ.get("ELASTIC_KERNELS")
    os.environ["ELASTIC_KERNELS"] = "torch"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ELASTIC_KERNELS", None)
        else:
            os.environ["ELASTIC_KERNELS"] = before


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content without its own digest (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _export_graph(model: ElasticModel, sid: int, opset: int) -> bytes:
    c, h, w = model.input_size()
    example = torch.randn(TRACE_BATCH, c, h, w, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    try:
        with _torch_kernels(), torch.no_grad():
            program = torch.onnx.export(
                SubnetGraph(model, sid).eval(),
                (example,),
                None,
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=opset,
                dynamic_shapes={"images": {0: batch}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # torch.export / onnxscript raise many types; the cause stays attached
        raise ExportError(f"subnet {sid}: torch's ONNX exporter failed: {e}") from e
    proto = program.model_proto
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"subnet {sid}: the exported graph fails onnx's checker: {e}") from e
    return proto.SerializeToString()


@torch.inference_mode()
def _verify(model: ElasticModel, sid: int, path: Path, atol: float) -> float:
    """Max abs difference between onnxruntime and torch on seeded inputs (raises above atol)."""
    session = make_session(path)
    c, h, w = model.input_size()
    worst = 0.0
    for b in VERIFY_BATCHES:
        x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(b))
        expected = model(x, subnet=sid)
        got = torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])
        if got.shape != expected.shape:
            raise ExportError(
                f"subnet {sid}: onnxruntime gives shape {tuple(got.shape)} at batch {b}, torch {tuple(expected.shape)}"
            )
        worst = max(worst, float((got - expected).abs().max()))
    if worst > atol:
        raise ExportError(f"subnet {sid}: onnxruntime differs from torch by {worst:.2e} (> {atol:.0e}) in {path}")
    return worst


def export_onnx(
    model: ElasticModel,
    out: str | Path,
    subnets: str | Sequence[int] = "all",
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    atol: float = 1e-4,
    source: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Export subnets of `model` (on the CPU) to `out`: one ONNX graph each and a manifest.

    Args:
        model: the elastic model, on the CPU.
        out: output folder (created); an earlier export there is replaced, and its graphs
            that the new manifest does not list are removed once it is written.
        subnets: "all", "pareto" or ids (see `select_subnets`).
        opset: ONNX opset (>= 18; 23 keeps attention fused).
        verify: load every graph in onnxruntime and compare it with torch (max abs diff
            <= `atol` at batch 1 and 3); recorded in the manifest.
        atol: the tolerance of that check.
        source: the checkpoint directory the model was loaded from: its weights' sha256 is
            recorded so the export can be traced back to it.
        progress: show a progress bar (tqdm).

    Returns:
        The manifest written to `out/manifest.json`.

    Raises:
        ExportError: torch's exporter fails on a subnet, a graph fails onnx's checker,
            onnxruntime cannot load it, or its output differs from torch's.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: torch's exporter writes opset {MIN_OPSET} or later")
    import onnx

    if opset > onnx.defs.onnx_opset_version():
        raise ValueError(
            f"opset {opset}: the installed onnx {onnx.__version__} knows up to {onnx.defs.onnx_opset_version()}"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"export runs on the CPU; the model is on {sorted(devices)} (load it with map_location='cpu')")
    ids = select_subnets(model, subnets)
    ort_version = import_onnxruntime().__version__ if verify else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = _listed_files(out)
    model.eval()
    table = {s.id: s for s in model.subnets()}
    entries, ops = [], set()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="export-onnx", unit="subnet")
    try:
        for sid in ids:
            data = _export_graph(model, sid, opset)
            path = out / subnet_file(sid)
            atomic_write(path, data)
            ops |= _op_types(data)
            entry = {
                **table[sid].to_dict(),
                "file": path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
            if verify:
                entry["max_abs_diff"] = _verify(model, sid, path, atol)
            entries.append(entry)
            log.info("exported subnet %d (%s) to %s", sid, table[sid].description, path)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "builder": model.builder,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": _source(source),
        "input": {"name": INPUT, "shape": [BATCH_AXIS, *model.input_size()], "dtype": "float32"},
        "output": {"name": OUTPUT, "shape": [BATCH_AXIS, "num_classes"], "dtype": "float32"},
        "opset": opset,
        "fused_attention": "Attention" in ops,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort_version},
        "verified": {"batches": list(VERIFY_BATCHES), "atol": atol} if verify else None,
        "subnets": entries,
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    atomic_write_json(out / MANIFEST, manifest)
    for name in earlier - {e["file"] for e in entries}:  # graphs of an earlier export, no longer listed
        (out / name).unlink(missing_ok=True)
    log.info("wrote %d ONNX graphs (opset %d) and %s to %s", len(entries), opset, MANIFEST, out)
    return manifest


def _listed_files(out: Path) -> set[str]:
    """Graph files an earlier export in `out` listed (none when there is no valid one)."""
    try:
        manifest = read_export_manifest(out)
    except ExportError:
        return set()
    return {e["file"] for e in manifest["subnets"] if Path(e["file"]).name == e["file"] and e["file"].endswith(".onnx")}


def _op_types(data: bytes) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load_from_string(data).graph.node}


def _source(path: str | Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from elastic.checkpoint import read_manifest

    return {"path": str(path), "weights_sha256": read_manifest(path)["weights_sha256"]}


# ---- reading ---------------------------------------------------------------------------
def read_export_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an export folder, checked for format, fields and its own sha256.

    Raises:
        ExportError: no folder or manifest, not JSON, another format, or modified.
    """
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise ExportError(f"{path} is not an ONNX export folder (run `elastic export-onnx` first)")
    if not file.is_file():
        raise ExportError(f"{path} has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{file} is not an {FORMAT} manifest")
    missing = [k for k in ("builder", "input", "output", "subnets", "manifest_sha256") if k not in manifest]
    if missing:
        raise ExportError(f"{file} lacks {', '.join(missing)}")
    if manifest_digest(manifest) != manifest["manifest_sha256"]:
        raise ExportError(f"{file} does not match its own sha256: modified after export")
    return manifest


def exported_ids(manifest: dict[str, Any]) -> list[int]:
    return [e["id"] for e in manifest["subnets"]]


def graph_path(path: str | Path, manifest: dict[str, Any], subnet: int, check_hash: bool = True) -> Path:
    """The checked .onnx file of one subnet.

    Raises:
        ExportError: the subnet was not exported, or its file is missing or differs from the
            sha256 the manifest recorded (truncated, corrupt or tampered with).
    """
    entry = next((e for e in manifest["subnets"] if e["id"] == subnet), None)
    if entry is None:
        raise ExportError(f"subnet {subnet} was not exported to {path}; exported: {exported_ids(manifest)}")
    file = Path(path) / entry["file"]
    if not file.is_file():
        raise ExportError(f"{file} (subnet {subnet}) is missing")
    if check_hash:
        try:
            digest = sha256_file(file)
        except OSError as e:
            raise ExportError(f"cannot read {file} (subnet {subnet}): {e}") from e
        if digest != entry["sha256"]:
            raise ExportError(
                f"{file} does not match its manifest (sha256 {digest[:12]}…, expected {entry['sha256'][:12]}…): "
                "truncated, corrupt or modified"
            )
    return file


def check_export_matches(manifest: dict[str, Any], model: ElasticModel, where: str | Path = "export") -> None:
    """Raise `ExportError` unless the export's builder, input and subnets are the model's."""
    if manifest["builder"] != model.builder:
        raise ExportError(f"{where} holds a {manifest['builder']}, the model is a {model.builder}")
    if list(manifest["input"]["shape"][1:]) != list(model.input_size()):
        raise ExportError(f"{where} takes inputs {manifest['input']['shape']}, the model {model.input_size()}")
    for entry in manifest["subnets"]:
        try:
            description = model.subnet(entry["id"]).description
        except UnknownSubnet:
            raise ExportError(f"{where} has subnet {entry['id']}, which the model does not hold") from None
        if description != entry["description"]:
            raise ExportError(
                f"{where}: subnet {entry['id']} is {entry['description']!r} there, {description!r} in the model"
            )
