"""The schema of a checkpoint's `manifest.json`, checked before anything is built from it.

A manifest is untrusted input: `elastic.load` builds timm models from it, so every field is
checked here, in pure Python (no torch, no timm), before a model is built or a weights file
opened. What is checked:

- the JSON itself: at most `MAX_MANIFEST_BYTES`, nesting at most `MAX_JSON_DEPTH`, no NaN /
  Infinity literals, no duplicate keys;
- every field's type and range (`validate_manifest`), the error naming the field;
- `weights` is a plain file name inside the checkpoint directory (never a path);
- anchor kwargs against an allow-list (`ANCHOR_KWARGS`): only shape and regularisation
  arguments of timm's ViT and ResNet reach `timm.create_model`; `checkpoint_path`,
  `pretrained_cfg_overlay` and the like, which make timm open files, are refused;
- the explicit block count of each anchor (`anchor_blocks`) against a bound, so a
  `depth: 1000` manifest is refused without building anything;
- `manifest_sha256`: sha256 of the manifest's canonical JSON without that field
  (`manifest_digest`); the manifest holds `weights_sha256`, so one hash covers both files.

The same module checks the latency profile saved beside a model (`profile_problems`).
Format and rationale: docs/checkpoints.md. SN-Net (Pan et al., CVPR 2023) checkpoints are
the main user: a StitchedNet manifest names its timm anchors and stitching config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # its file name in a checkpoint directory
FORMAT = "elastic-checkpoint/2"  # written by `elastic.save`
FORMAT_V1 = "elastic-checkpoint/1"  # still read: no manifest hash, otherwise the same schema
FORMATS = (FORMAT_V1, FORMAT)

MAX_MANIFEST_BYTES = 32 << 20  # a 71-subnet SN-Net manifest is ~20 KB
MAX_JSON_DEPTH = 16  # the deepest real manifest nests 4 levels
MAX_ANCHORS = 64
MAX_SUBNETS = 100_000
DEFAULT_MAX_BLOCKS = 64  # per anchor: ViT-g has 40 blocks, ResNet-152 50
DEFAULT_MAX_PARAMS = 400_000_000  # all anchors together: DeiT Ti+S+B 114 M, ViT-L 304 M, ViT-H 631 M

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BUILDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TIMM_NAME = re.compile(r"[a-z0-9_]{1,128}(\.[a-z0-9_]{1,64})?")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.safetensors")
_INT_LIMIT = 2**53  # JSON integers beyond this lose precision elsewhere


# ---- JSON --------------------------------------------------------------------------------
def parse_json(data: bytes | str, source: str) -> Any:
    """Parse untrusted JSON: bounded size and depth, finite numbers, unique keys.

    Raises:
        CheckpointError: naming `source` and what is wrong.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{source} is {len(data):,} bytes, more than the {MAX_MANIFEST_BYTES:,} allowed")

    def no_constant(name: str) -> Any:
        raise CheckpointError(f"{source} holds {name}: only finite numbers are allowed")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise CheckpointError(f"{source} repeats the key {dup!r}")
        return obj

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, parse_constant=no_constant, object_pairs_hook=unique)
    except RecursionError:
        raise CheckpointError(f"{source} nests deeper than Python's JSON parser allows") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{source} is not valid JSON: {e}") from e
    depth = json_depth(obj)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{source} nests {depth} levels deep, more than the {MAX_JSON_DEPTH} allowed")
    return obj


def json_depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, `[]` is 1), without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
            deepest = max(deepest, depth + 1)
    return deepest


def canonical_json(obj: Any) -> bytes:
    """The bytes hashed: sorted keys, no spaces, UTF-8, finite numbers only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, `manifest_sha256` left out."""
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != "manifest_sha256"})).hexdigest()


# ---- field checks ------------------------------------------------------------------------
def _fail(field: str, rule: str, value: Any) -> CheckpointError:
    shown = repr(value)
    return CheckpointError(f"{field} must be {rule}, got {shown if len(shown) <= 80 else shown[:77] + '...'}")


def _int(value: Any, field: str, lo: int = -_INT_LIMIT, hi: int = _INT_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(field, f"an integer in [{lo}, {hi}]", value)
    return value


def _number(value: Any, field: str, lo: float, hi: float, *, open_hi: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo <= value < hi if open_hi else lo <= value <= hi):
        raise _fail(field, f"a finite number in [{lo}, {hi}{')' if open_hi else ']'}", value)
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, "true or false", value)
    return value


def _str(value: Any, field: str, max_len: int = 1024, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.isprintable() or len(value) > max_len:
        raise _fail(field, f"a printable string of at most {max_len} characters", value)
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(field, f"a string matching {pattern.pattern}", value)
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], Any]:
    def check(value: Any, field: str) -> str:
        if value not in options:
            raise _fail(field, f"one of {', '.join(map(repr, options))}", value)
        return value

    return check


def _size(lo: int, hi: int) -> Callable[[Any, str], Any]:
    """An int, or an [h, w] pair (timm's img_size / patch_size)."""

    def check(value: Any, field: str) -> Any:
        if isinstance(value, list) and len(value) == 2:
            return [_int(v, f"{field}[{k}]", lo, hi) for k, v in enumerate(value)]
        return _int(value, field, lo, hi)

    return check


def _ints(n_lo: int, n_hi: int, lo: int, hi: int) -> Callable[[Any, str], Any]:
    def check(value: Any, field: str) -> list[int]:
        if not isinstance(value, list) or not n_lo <= len(value) <= n_hi:
            raise _fail(field, f"a list of {n_lo} to {n_hi} integers", value)
        return [_int(v, f"{field}[{k}]", lo, hi) for k, v in enumerate(value)]

    return check


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, field: None if value is None else check(value, field)


def _range(lo: int, hi: int) -> Callable[[Any, str], int]:
    return lambda value, field: _int(value, field, lo, hi)


def _rate(value: Any, field: str) -> float:
    return _number(value, field, 0.0, 1.0, open_hi=True)


# Anchor kwargs passed to `timm.create_model`: the architecture shape and regularisation of
# timm's VisionTransformer (DeiT / ViT) and ResNet, the families `elastic.anchors` adapts.
# Anything else is refused: in particular `pretrained`, `pretrained_cfg`,
# `pretrained_cfg_overlay`, `checkpoint_path`, `cache_dir` (they make timm read files or
# the network), `features_only`, `act_layer` / `norm_layer` / `block_fn` (code by name).
# Depth is bounded by `load(max_blocks=...)`, not here; total size by `load(max_params=...)`.
ANCHOR_KWARGS: dict[str, Callable[[Any, str], Any]] = {
    "num_classes": _range(0, 100_000),
    "in_chans": _range(1, 64),
    "img_size": _size(1, 4096),
    "patch_size": _size(1, 1024),
    "embed_dim": _range(1, 16_384),
    "depth": _range(1, _INT_LIMIT),  # checked against max_blocks
    "num_heads": _range(1, 1024),
    "mlp_ratio": lambda v, f: _number(v, f, 0.0625, 64.0),
    "qkv_bias": _bool,
    "qk_norm": _bool,
    "class_token": _bool,
    "no_embed_class": _bool,
    "reg_tokens": _range(0, 256),
    "pre_norm": _bool,
    "final_norm": _bool,
    "fc_norm": _optional(_bool),
    "dynamic_img_size": _bool,
    "init_values": _optional(lambda v, f: _number(v, f, 0.0, 1.0)),
    "global_pool": _choice(("", "token", "avg", "max", "avgmax", "catavgmax", "map")),
    "drop_rate": _rate,
    "pos_drop_rate": _rate,
    "patch_drop_rate": _rate,
    "proj_drop_rate": _rate,
    "attn_drop_rate": _rate,
    "drop_path_rate": _rate,
    "drop_block_rate": _rate,
    # ResNet
    "layers": _ints(1, 8, 0, _INT_LIMIT),  # blocks per stage, checked against max_blocks
    "cardinality": _range(1, 1024),
    "base_width": _range(1, 1024),
    "stem_width": _range(1, 1024),
    "stem_type": _choice(("", "deep", "deep_tiered")),
    "output_stride": _choice((8, 16, 32)),
}

# Builder configs: types and ranges of the keys each builder is known to write. Keys not
# listed get the generic JSON checks; the builder's `from_config` refuses unknown ones.
CONFIG_FIELDS: dict[str, dict[str, Callable[[Any, str], Any]]] = {
    "StitchedNet": {
        "window": _range(1, 64),
        "stride": _range(1, 64),
        "nearest": _bool,
        "two_way": _bool,  # format-1 checkpoints of the first StitchedNet
        "shared_stitches": _bool,  # idem
        "final_norm": _optional(_bool),
        "lora_rank": _range(0, 4096),
        "lora_freeze_base": _bool,
    },
}


def validate_anchor_kwargs(kwargs: Any, field: str) -> dict[str, Any]:
    """Check one anchor's timm kwargs against `ANCHOR_KWARGS`.

    Raises:
        CheckpointError: naming the kwarg that is not allowed or out of range.
    """
    if not isinstance(kwargs, dict):
        raise _fail(field, "an object of timm kwargs", kwargs)
    for key, value in kwargs.items():
        check = ANCHOR_KWARGS.get(key)
        if check is None:
            raise CheckpointError(
                f"{field}.{key} is not an allowed timm kwarg (allowed: {', '.join(sorted(ANCHOR_KWARGS))})"
            )
        check(value, f"{field}.{key}")
    return kwargs


def anchor_blocks(kwargs: Mapping[str, Any]) -> int | None:
    """Blocks an anchor's kwargs ask for explicitly (`depth`, or the sum of `layers`);
    None when the timm name's default applies."""
    if "depth" in kwargs:
        return int(kwargs["depth"])
    if "layers" in kwargs:
        return sum(int(n) for n in kwargs["layers"])
    return None


def _json_value(value: Any, field: str) -> None:
    """Generic check of a config value: JSON scalars within bounds, lists and objects of them."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        _int(value, field)
    elif isinstance(value, float):
        _number(value, field, -1e300, 1e300)
    elif isinstance(value, str):
        _str(value, field)
    elif isinstance(value, list):
        if len(value) > 4096:
            raise _fail(field, "a list of at most 4096 items", value)
        for k, v in enumerate(value):
            _json_value(v, f"{field}[{k}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _str(k, f"{field} key", 64)
            _json_value(v, f"{field}.{k}")


def _object(value: Any, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, "an object", value)
    missing = [k for k in required if k not in value]
    if missing:
        raise CheckpointError(f"{field} lacks {', '.join(missing)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise CheckpointError(f"{field} has unknown field(s) {', '.join(map(repr, unknown[:8]))}")
    return value


@dataclass(frozen=True)
class ManifestInfo:
    """What `validate_manifest` learnt besides "valid"."""

    format: str  # FORMAT or FORMAT_V1
    hashed: bool  # the manifest carries (and matched) its own sha256


def validate_manifest(manifest: Any, source: str = "manifest.json", max_blocks: int | None = None) -> ManifestInfo:
    """Check a parsed manifest against the schema (docs/checkpoints.md); nothing is built.

    Args:
        manifest: the parsed JSON.
        source: how to name the file in errors.
        max_blocks: most blocks any anchor may ask for explicitly; None skips the check.

    Raises:
        CheckpointError: the first problem found, naming its field.
    """
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{source} must hold a JSON object, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{source} is not an elastic checkpoint manifest (format {fmt!r}; read: {FORMATS})")
    required = ("format", "builder", "anchors", "config", "subnets", "weights", "weights_sha256")
    if fmt == FORMAT:
        _object(manifest, source, (*required, "manifest_sha256"))
        _str(manifest["manifest_sha256"], f"{source}: manifest_sha256", 64, _HEX64)
        digest = manifest_digest(manifest)
        if digest != manifest["manifest_sha256"]:
            raise CheckpointError(
                f"{source} does not match its own hash (sha256 {digest[:12]}…, recorded "
                f"{manifest['manifest_sha256'][:12]}…): edited or corrupted"
            )
    else:  # format 1 had no manifest hash; `weights` was optional
        _object(manifest, source, tuple(k for k in required if k != "weights"), ("weights",))
    _str(manifest["builder"], f"{source}: builder", 64, _BUILDER)
    _str(manifest["weights_sha256"], f"{source}: weights_sha256", 64, _HEX64)
    weights = manifest.get("weights", "weights.safetensors")
    if not isinstance(weights, str) or not _FILE_NAME.fullmatch(weights):
        raise _fail(
            f"{source}: weights",
            "the name of a .safetensors file inside the checkpoint directory (no path)",
            weights,
        )

    anchors = manifest["anchors"]
    if not isinstance(anchors, list) or not 1 <= len(anchors) <= MAX_ANCHORS:
        raise _fail(f"{source}: anchors", f"a list of 1 to {MAX_ANCHORS} anchors", anchors)
    for k, anchor in enumerate(anchors):
        field = f"{source}: anchors[{k}]"
        _object(anchor, field, ("name",), ("kwargs", "label"))
        _str(anchor["name"], f"{field}.name", 193, _TIMM_NAME)
        if anchor.get("label") is not None:
            _str(anchor["label"], f"{field}.label", 128)
        kwargs = validate_anchor_kwargs(anchor.get("kwargs", {}), f"{field}.kwargs")
        blocks = anchor_blocks(kwargs)
        if max_blocks is not None and blocks is not None and blocks > max_blocks:
            raise CheckpointError(
                f"{field} asks for {blocks} blocks, more than max_blocks={max_blocks}; "
                "pass a larger max_blocks to load it on purpose"
            )

    config = manifest["config"]
    if not isinstance(config, dict):
        raise _fail(f"{source}: config", "an object", config)
    known = CONFIG_FIELDS.get(manifest["builder"], {})
    for key, value in config.items():
        _str(key, f"{source}: config key", 64)
        check = known.get(key)
        if check is not None:
            check(value, f"{source}: config.{key}")
        else:
            _json_value(value, f"{source}: config.{key}")

    subnets = manifest["subnets"]
    if not isinstance(subnets, list) or not 1 <= len(subnets) <= MAX_SUBNETS:
        raise _fail(f"{source}: subnets", f"a list of 1 to {MAX_SUBNETS:,} subnets", subnets)
    for k, s in enumerate(subnets):
        field = f"{source}: subnets[{k}]"
        if not isinstance(s, dict):
            raise _fail(field, "an object", s)
        missing = [key for key in ("id", "kind", "description", "flops", "params") if key not in s]
        if missing:
            raise CheckpointError(f"{field} lacks {', '.join(missing)}")
        if _int(s["id"], f"{field}.id") != k:
            raise _fail(f"{field}.id", f"its position {k}", s["id"])
        _str(s["kind"], f"{field}.kind", 32)
        _str(s["description"], f"{field}.description")
        _int(s["flops"], f"{field}.flops", 0)
        _int(s["params"], f"{field}.params", 0)
        if s.get("accuracy") is not None:
            _number(s["accuracy"], f"{field}.accuracy", 0.0, 1.0)
        for key, value in s.items():
            if key not in ("id", "kind", "description", "flops", "params", "accuracy"):
                _json_value(value, f"{field}.{key}")
    return ManifestInfo(fmt, fmt == FORMAT)


def read_manifest_file(folder: str | Path, max_blocks: int | None = None) -> dict[str, Any]:
    """Read and check `folder/manifest.json` (no torch, no weights read): what `elastic info`
    shows and `elastic.load` starts from.

    Raises:
        CheckpointError: no such checkpoint, or a manifest the schema refuses.
    """
    folder = Path(folder)
    file = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint directory")
    if not file.is_file():
        raise CheckpointError(f"{folder} has no {MANIFEST}")
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e
    manifest = parse_json(data, str(file))
    info = validate_manifest(manifest, str(file), max_blocks)
    if not info.hashed:
        log.warning("%s is format 1 (no manifest hash): only its weights are checked against a hash", file)
    return manifest


# ---- latency profiles --------------------------------------------------------------------
def profile_problems(profile: Any) -> str | None:
    """Why a saved latency profile document (`profile-<device>.json`) must not be used;
    None if its tables are usable.

    Checks the tables only (the profile's own loader checks the format): batch sizes are
    positive integers, and every latency is a finite number > 0 with p99 >= p50. A NaN
    latency would make every deadline prediction NaN, which compares False both ways.
    """
    if not isinstance(profile, Mapping):
        return f"a profile must be a JSON object, got {type(profile).__name__}"
    sizes = profile.get("batch_sizes")
    if (
        not isinstance(sizes, list)
        or not sizes
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes)
    ):
        return f"batch_sizes must be a non-empty list of positive integers, got {sizes!r}"
    tables = {q: profile.get(f"{q}_ms") for q in ("p50", "p99")}
    for q, table in tables.items():
        if not isinstance(table, Mapping) or not table:
            return f"{q}_ms must be a non-empty object"
        for sid, row in table.items():
            if not isinstance(row, Mapping):
                return f"{q}_ms[{sid}] must be an object of batch size -> ms"
            for b, ms in row.items():
                if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms <= 0:
                    return f"{q}_ms[{sid}][{b}] must be a finite latency > 0 ms, got {ms!r}"
    p50, p99 = tables["p50"], tables["p99"]
    for sid, row in p50.items():
        for b, ms in row.items():
            tail = p99.get(sid, {}).get(b) if isinstance(p99.get(sid), Mapping) else None
            if tail is not None and tail < ms:
                return f"p99_ms[{sid}][{b}] = {tail} is below p50_ms = {ms}"
    return None
