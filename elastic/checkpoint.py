"""Save and load elastic models: `weights.safetensors` + `manifest.json`, no pickle.

The manifest names the builder, the anchors (timm name + allow-listed kwargs), the builder
config, the subnet table with accuracies, the sha256 of the weights file, and its own sha256
(so one hash covers both files). The format, schema and bounds are in docs/checkpoints.md and
`elastic.manifest`.

Saving is atomic for the directory as a whole: the new checkpoint is written into a sibling
temp directory (`.<name>.elastic-tmp-*`), then swapped with the old one in one
`renameat2(RENAME_EXCHANGE)` (Linux); elsewhere in two renames, and a save interrupted
between them leaves the old checkpoint as `.<name>.elastic-old-*`, which `load` reads and the
next `save` restores. Leftovers of killed saves are removed by the next save. One writer at a
time per checkpoint.

Loading checks, in order and before building anything: the manifest's JSON, schema and hash;
the builder; that the weights file lies inside the directory; the anchors' block counts and
total parameters (counted on the meta device, no memory) against `max_blocks` /
`max_params`; the weights' hash. Every way a checkpoint can be wrong raises
`CheckpointError` with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from elastic.errors import CheckpointError
from elastic.manifest import (
    DEFAULT_MAX_BLOCKS,
    DEFAULT_MAX_PARAMS,
    FORMAT,
    MANIFEST,
    manifest_digest,
    read_manifest_file,
    validate_manifest,
)
from elastic.model import BUILDERS, ElasticModel, builder_class

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
_TMP = "elastic-tmp"  # .<name>.elastic-tmp-*: a save in progress (or killed)
_OLD = "elastic-old"  # .<name>.elastic-old-*: the previous checkpoint during a swap


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


# ---- save --------------------------------------------------------------------------------
def save(model: ElasticModel, path: str | Path) -> Path:
    """Write `model` to the directory `path`, replacing the checkpoint there as a whole.

    Other files in an existing checkpoint directory (e.g. `profile-cpu.json`) are carried
    over. A directory that exists but holds no checkpoint is never replaced.

    Raises:
        CheckpointError: `path` is a file or a non-checkpoint directory, the model cannot be
            described by a valid manifest, or the files cannot be written.
    """
    path = Path(path)
    manifest = _manifest(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        if path.is_symlink():
            path = path.resolve()
        _check_target(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create {path.parent}: {e}") from e
        _restore_interrupted(path)
        _remove_leftovers(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{_TMP}-"))
    except OSError as e:
        raise CheckpointError(f"cannot write a checkpoint at {path}: {e}") from e
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a checkpoint is for everyone to read
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "builder": model.builder})
        _fsync(tmp / WEIGHTS)
        manifest["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync(tmp / MANIFEST)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        _carry_over(path, tmp)
        _fsync(tmp)
        _install(tmp, path)
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write the checkpoint {path}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %s with %d subnets to %s", model.builder, len(manifest["subnets"]), path)
    return path


def _check_target(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory: refusing to replace it with a checkpoint")
    if path.is_dir() and not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise CheckpointError(
            f"{path} is a non-empty directory without a {MANIFEST}: refusing to replace it with a checkpoint"
        )


def _manifest(model: ElasticModel) -> dict[str, Any]:
    """The manifest of `model`, checked against the schema (hashes filled in later)."""
    manifest = {
        "format": FORMAT,
        "builder": model.builder,
        "anchors": model.anchor_specs(),
        "config": model.config(),
        "subnets": [s.to_dict() for s in model.subnets()],
        "weights": WEIGHTS,
    }
    try:
        probe = json.loads(json.dumps(manifest, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model config is not JSON-serialisable with finite numbers: {e}") from e
    probe["weights_sha256"] = "0" * 64
    probe["manifest_sha256"] = manifest_digest(probe)
    try:
        validate_manifest(probe, f"the manifest of this {model.builder}")
    except CheckpointError as e:
        raise CheckpointError(f"cannot save: {e} (load would refuse it)") from e
    return manifest


def _siblings(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"))


def _restore_interrupted(path: Path) -> None:
    """A save killed between the two renames of the fallback swap left the previous
    checkpoint as `.<name>.elastic-old-*`: put it back."""
    if path.exists():
        return
    backup = _backup(path)
    if backup is not None:
        log.warning("restoring %s from %s, left by an interrupted save", path, backup)
        os.rename(backup, path)


def _backup(path: Path) -> Path | None:
    """The newest complete previous checkpoint a swap left beside `path`."""
    complete = [p for p in _siblings(path, _OLD) if (p / MANIFEST).is_file()]
    return max(complete, key=lambda p: p.stat().st_mtime) if complete else None


def _remove_leftovers(path: Path) -> None:
    """Remove temp and backup directories of earlier, killed saves of this checkpoint."""
    for p in _siblings(path, _TMP) + _siblings(path, _OLD):
        log.info("removing %s, left by an interrupted save", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _carry_over(old: Path, new: Path) -> None:
    """Copy what else the old checkpoint directory held (latency profiles, notes)."""
    if not old.is_dir():
        return
    skip = {WEIGHTS, MANIFEST}
    with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):  # an unreadable old manifest
        skip.add(json.loads((old / MANIFEST).read_text()).get("weights", WEIGHTS))
    for f in old.iterdir():
        if f.name in skip or f.name.startswith("."):
            continue
        if f.is_dir() and not f.is_symlink():
            shutil.copytree(f, new / f.name, symlinks=True)
        else:
            shutil.copy2(f, new / f.name, follow_symlinks=False)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(new: Path, path: Path) -> None:
    """Make the complete directory `new` the checkpoint at `path`; `new` is gone after."""
    if not path.exists():
        os.rename(new, path)
    elif exchange_dirs(new, path):  # `path` is the new checkpoint, `new` the old one
        shutil.rmtree(new)
    else:
        old = path.with_name(f".{path.name}.{_OLD}-{secrets.token_hex(4)}")
        os.rename(path, old)
        os.rename(new, path)  # a kill before this line leaves `old`, restored by load/save
        shutil.rmtree(old)
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        _fsync(path.parent)


_RENAME_EXCHANGE = 2
_renameat2: Any = None


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

    Returns:
        False where the OS or file system cannot (the caller falls back to two renames).
    """
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2 if sys.platform.startswith("linux") else False
        except (AttributeError, OSError):
            fn = False
        if fn:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        _renameat2 = fn
    if not _renameat2:
        return False
    at_cwd = -100
    if _renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


# ---- load --------------------------------------------------------------------------------
def checkpoint_dir(path: str | Path) -> Path:
    """The directory to read for the checkpoint at `path`: `path` itself, or the previous
    checkpoint an interrupted save left beside it."""
    path = Path(path)
    if not path.exists():
        backup = _backup(path)
        if backup is not None:
            log.warning("%s is missing: reading %s, left by an interrupted save", path, backup)
            return backup
    return path


def read_manifest(path: str | Path, max_blocks: int | None = None) -> dict[str, Any]:
    """The manifest of a checkpoint directory (or of the previous checkpoint an interrupted
    save left beside it), checked against the schema and its hash.

    Raises:
        CheckpointError: no such checkpoint, or a manifest `elastic.manifest` refuses.
    """
    return read_manifest_file(checkpoint_dir(path), max_blocks)


def weights_file(path: Path, manifest: dict[str, Any]) -> Path:
    """The weights file a (validated) manifest names, which must lie inside `path`."""
    weights = path / manifest.get("weights", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {weights.name}")
    real, root = weights.resolve(), path.resolve()
    if real.parent != root:
        raise CheckpointError(f"{weights} leads outside the checkpoint directory (to {real})")
    return weights


def anchor_params(anchors: list[dict[str, Any]]) -> int:
    """Parameters of the anchors a (validated) manifest names, counted on the meta device:
    timm builds the structure, no memory is allocated and no weight is initialised."""
    import timm

    total = 0
    for k, a in enumerate(anchors):
        if not timm.is_model(a["name"]):
            raise CheckpointError(f"anchors[{k}].name: timm has no model {a['name']!r}")
        try:
            with torch.device("meta"):
                model = timm.create_model(a["name"], pretrained=False, **a.get("kwargs", {}))
        except Exception as e:
            raise CheckpointError(f"anchors[{k}]: timm cannot build {a['name']} with {a.get('kwargs')}: {e}") from e
        total += sum(p.numel() for p in model.parameters())
    return total


def load(
    path: str | Path,
    builder: str | type[ElasticModel] | None = None,
    map_location: str | torch.device = "cpu",
    *,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    max_blocks: int | None = DEFAULT_MAX_BLOCKS,
) -> ElasticModel:
    """Rebuild a saved model without network access, checking everything first.

    Args:
        path: a directory written by `save`.
        builder: expected builder (name or class); a checkpoint of another builder raises.
        map_location: device for the weights.
        max_params: most parameters all anchors together may have (None: no bound).
        max_blocks: most blocks one anchor's kwargs may ask for (None: no bound).

    Raises:
        CheckpointError: the checkpoint is missing, malformed, modified, too large or does
            not fit its builder.
    """
    path = checkpoint_dir(path)
    manifest = read_manifest(path, max_blocks)
    name = manifest["builder"]
    expected = builder if isinstance(builder, str) or builder is None else builder.builder
    if expected is not None and name != expected:
        raise CheckpointError(f"{path} holds a {name}, not a {expected}")
    cls = builder_class(name)
    if cls is None:
        raise CheckpointError(f"{path} holds unknown builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    weights = weights_file(path, manifest)
    if max_params is not None:
        size = weights.stat().st_size
        if size > 8 * max_params + (64 << 20):  # 8 bytes a parameter (fp64) and a header
            raise CheckpointError(f"{weights} is {size:,} bytes, too large for max_params={max_params:,}")
        params = anchor_params(manifest["anchors"])
        if params > max_params:
            raise CheckpointError(
                f"{path}: its anchors have {params:,} parameters, more than max_params={max_params:,}; "
                "pass a larger max_params to load it on purpose"
            )
    try:
        digest = sha256_file(weights)
    except OSError as e:
        raise CheckpointError(f"cannot read {weights}: {e}") from e
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
