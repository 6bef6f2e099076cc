"""Test environment: offline, Triton in interpreter mode, small deterministic models.

TRITON_INTERPRET must be set before anything imports triton (timm does), so it is set here,
at the top of the first file pytest imports.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_vit_specs(widths=(32, 64, 128), depth=4, img=32, in_chans=3, classes=10, patch=8):
    """(timm name, kwargs, label) for a family of tiny ViTs, widths ×2 apart like DeiT Ti/S/B."""
    return [
        (
            "vit_tiny_patch16_224",
            dict(
                embed_dim=w,
                num_heads=max(1, w // 32),
                depth=depth,
                img_size=img,
                patch_size=patch,
                in_chans=in_chans,
                num_classes=classes,
            ),
            f"vit-w{w}",
        )
        for w in widths
    ]


@pytest.fixture
def tiny_vit_family():
    from elastic.anchors import AnchorFamily

    torch.manual_seed(0)
    return AnchorFamily.from_timm(tiny_vit_specs())


@pytest.fixture
def tiny_stitched(tiny_vit_family):
    from elastic import StitchedNet

    torch.manual_seed(1)
    net = StitchedNet(tiny_vit_family).eval()
    net.init_stitches(torch.randn(8, 3, 32, 32))
    return net


def _drain(stages):
    """Run a staged forward (`forward_stages`, `Executor.run_stages`) to its end: (its
    output, how many times it paused)."""
    pauses = 0
    while True:
        try:
            next(stages)
            pauses += 1
        except StopIteration as stop:
            return stop.value, pauses


@pytest.fixture
def drain():
    """`_drain`: a staged forward run to its end, and how many times it paused."""
    return _drain
