"""Building timm anchors with pretrained weights from local files, never the network.

`pretrained` may be False (random init), True (timm's default source, which only succeeds
offline when the weights are already in the Hugging Face cache), or a path to a local
`.safetensors` / `.pth` / `.bin` file. A class-count override keeps every loaded weight but
the classifier: timm's own loader does this once it knows the file's class count, which we
read from the file's classifier weight.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from elastic.errors import CheckpointError

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a torch file with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def _file_num_classes(path: Path, classifier: str) -> int | None:
    key = f"{classifier}.weight"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(key).get_shape()[0] if key in f.keys() else None  # noqa: SIM118
    weight = read_state_dict(path).get(key)
    return None if weight is None else int(weight.shape[0])


def create_anchor(name: str, pretrained: bool | str | Path = False, **kwargs: Any) -> nn.Module:
    """`timm.create_model` with weights from a local file or the HF cache only.

    Args:
        name: a timm model name, e.g. "deit_tiny_patch16_224".
        pretrained: False, True (HF cache) or a local weights file.
        **kwargs: timm kwargs (`num_classes`, `img_size`, ...).
    """
    if pretrained is False or pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained is True:
        return timm.create_model(name, pretrained=True, **kwargs)
    path = Path(pretrained)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights for {name} not found: {path}")
    classifier = timm.models.get_pretrained_cfg(name.split(".")[0])
    classifier = getattr(classifier, "classifier", None) or "head"
    overlay: dict[str, Any] = {"file": str(path)}
    file_classes = _file_num_classes(path, classifier)
    if file_classes is not None:
        overlay["num_classes"] = file_classes
    log.info("loading %s weights from %s", name, path)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
