"""Shared fixtures of the export tests: one small real StitchedNet, exported once per session.

Two tiny timm ViT anchors (widths 32 and 64, depth 2) give six subnets: both anchors and
four stitched paths. Exporting one subnet takes seconds, so the export is made once and
tests that would change it work on a copy (`export_copy`).
"""

import shutil
from pathlib import Path

import pytest
import torch


def _root_conftest(config: pytest.Config):
    """The tests/conftest.py module (conftest modules without a package share one name)."""
    return config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))


def build_small_model(config: pytest.Config, seed: int = 1):
    from elastic import StitchedNet
    from elastic.anchors import AnchorFamily

    specs = _root_conftest(config).tiny_vit_specs(widths=(32, 64), depth=2)
    torch.manual_seed(0)
    family = AnchorFamily.from_timm(specs)
    torch.manual_seed(seed)
    net = StitchedNet(family).eval()
    net.init_stitches(torch.randn(8, 3, 32, 32))
    top = max(s.flops for s in net.subnets())
    net.set_accuracies({s.id: round(0.5 + 0.4 * s.flops / top, 4) for s in net.subnets()})
    return net


@pytest.fixture
def vit_specs(request):
    """The root conftest's `tiny_vit_specs` function."""
    return _root_conftest(request.config).tiny_vit_specs


@pytest.fixture(scope="session")
def small_model(request):
    return build_small_model(request.config)


@pytest.fixture
def fresh_small_model(request):
    """A model of the same build that a test may change."""
    return build_small_model(request.config)


@pytest.fixture(scope="session")
def exported(small_model, tmp_path_factory):
    """(folder, manifest) of every subnet of `small_model` exported to ONNX."""
    from elastic.export.onnx import export_onnx

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("onnx")
        manifest = export_onnx(small_model, out, "all")
    finally:
        torch.set_num_threads(before)
    return out, manifest


@pytest.fixture
def export_copy(exported, tmp_path):
    """A copy of the export that a test may damage."""
    folder = tmp_path / "export"
    shutil.copytree(exported[0], folder)
    return folder
