"""Models the suites run on: the demo's trained model, or DeiT-sized anchors for parity."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import elastic
from elastic.errors import CheckpointError

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("out/demo/model")


def demo_model(path: str | Path | None) -> elastic.ElasticModel:
    """The model `elastic demo` saved (accuracies included), in eval mode."""
    path = Path(path) if path else DEFAULT_MODEL
    if not (path / "manifest.json").is_file():
        raise CheckpointError(
            f"no saved model at {path}: run `make demo` (or `elastic demo`) first, or pass --model DIR"
        )
    return elastic.load(path).eval()


def demo_architecture() -> elastic.StitchedNet:
    """A StitchedNet of the demo's anchors (`DemoConfig.full()`), random weights."""
    from elastic.anchors import AnchorFamily
    from elastic.demo.pipeline import DemoConfig

    torch.manual_seed(0)
    return elastic.StitchedNet(AnchorFamily.from_timm(DemoConfig.full().anchor_specs())).eval()


def demo_model_or_architecture(path: str | Path | None) -> tuple[elastic.ElasticModel, str]:
    """The saved demo model, else its architecture with random weights (for suites that time
    forwards and need no accuracies), and which of the two it is."""
    try:
        return demo_model(path), "demo model"
    except CheckpointError as e:
        log.warning("demo model not found (%s): using its architecture with random weights", e)
        return demo_architecture(), "demo architecture, random weights"


def deit_pair(img_size: int = 224) -> elastic.StitchedNet:
    """DeiT-Ti and DeiT-S with random weights: deit_tiny-sized work for overhead and parity."""
    from elastic.anchors import AnchorFamily

    torch.manual_seed(0)
    family = AnchorFamily.from_timm(["deit_tiny_patch16_224", "deit_small_patch16_224"], img_size=img_size)
    return elastic.StitchedNet(family).eval()
