"""Save and load elastic models: `weights.safetensors` + `manifest.json`, no pickle.

The manifest names the builder, the anchors (timm name + kwargs), the builder config, the
subnet table with accuracies, and the sha256 of the weights file. Writes are atomic (temp
file + rename, weights first, manifest last), so a crash leaves either the old checkpoint or
one whose hash check fails loudly. Every way a checkpoint can be wrong raises
`CheckpointError` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from elastic.errors import CheckpointError
from elastic.model import BUILDERS, ElasticModel, builder_class

log = logging.getLogger(__name__)

FORMAT = "elastic-checkpoint/1"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint or report is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: ElasticModel, path: str | Path) -> Path:
    """Write `model` to the directory `path` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    manifest = {
        "format": FORMAT,
        "builder": model.builder,
        "anchors": model.anchor_specs(),
        "config": model.config(),
        "subnets": [s.to_dict() for s in model.subnets()],
        "weights": WEIGHTS,
    }
    try:
        json.dumps(manifest)
    except TypeError as e:
        raise CheckpointError(f"model config is not JSON-serialisable: {e}") from e
    fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{WEIGHTS}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": FORMAT, "builder": model.builder})
        manifest["weights_sha256"] = sha256_file(Path(tmp))
        os.replace(tmp, path / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(path / MANIFEST, manifest)
    log.info("saved %s with %d subnets to %s", model.builder, len(manifest["subnets"]), path)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory, checked for the fields `load` needs."""
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    if not file.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an {FORMAT} manifest")
    missing = [k for k in ("builder", "anchors", "config", "subnets", "weights_sha256") if k not in manifest]
    if missing:
        raise CheckpointError(f"{file} lacks {', '.join(missing)}")
    return manifest


def load(
    path: str | Path, builder: str | type[ElasticModel] | None = None, map_location: str | torch.device = "cpu"
) -> ElasticModel:
    """Rebuild a saved model without network access.

    Args:
        path: a directory written by `save`.
        builder: expected builder (name or class); a checkpoint of another builder raises.
        map_location: device for the weights.
    """
    path = Path(path)
    manifest = read_manifest(path)
    name = manifest["builder"]
    expected = builder if isinstance(builder, str) or builder is None else builder.builder
    if expected is not None and name != expected:
        raise CheckpointError(f"{path} holds a {name}, not a {expected}")
    cls = builder_class(name) if isinstance(name, str) else None
    if cls is None:
        raise CheckpointError(f"{path} holds unknown builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    weights = path / manifest.get("weights", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {weights.name}")
    digest = sha256_file(weights)
    if digest != manifest["weights_sha256"]:
        raise CheckpointError(
            f"{weights} does not match its manifest (sha256 {digest[:12]}…, "
            f"expected {manifest['weights_sha256'][:12]}…): truncated or modified"
        )
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} cannot be read: {e}") from e
    try:
        model = cls.from_config(manifest["anchors"], manifest["config"])
    except Exception as e:
        raise CheckpointError(f"cannot rebuild {name} from {path / MANIFEST}: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not fit the {name} its manifest describes: {e}") from e
    model.to(map_location)
    saved = manifest["subnets"]
    rebuilt = model.subnets()
    if [s["description"] for s in saved] != [s.description for s in rebuilt]:
        raise CheckpointError(f"{path}: the rebuilt subnets differ from the manifest's")
    model.set_accuracies({s["id"]: s["accuracy"] for s in saved if s.get("accuracy") is not None})
    model.eval()
    log.info("loaded %s with %d subnets from %s", name, len(rebuilt), path)
    return model
