"""Pretrained weights from local files: safetensors and weights-only torch files."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from elastic.anchors import AnchorFamily, create_anchor
from elastic.errors import CheckpointError

KW = dict(img_size=32, depth=2)


@pytest.fixture
def source_model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=10, **KW)


def _backbone(state):
    return {k: v for k, v in state.items() if not k.startswith("head.")}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_with_other_class_count_keep_backbone(tmp_path, source_model, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source_model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = create_anchor("vit_tiny_patch16_224", pretrained=path, num_classes=4, **KW)
    assert model.head.weight.shape == (4, 192)
    loaded = model.state_dict()
    for k, v in _backbone(state).items():
        assert torch.equal(loaded[k], v), k


def test_family_takes_a_path_per_anchor(tmp_path, source_model):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source_model.state_dict().items()}, str(path))
    family = AnchorFamily.from_timm(
        ["vit_tiny_patch16_224", "vit_small_patch16_224"],
        pretrained={"vit_tiny_patch16_224": path},
        num_classes=10,
        **KW,
    )
    assert torch.equal(family[0].model.blocks[0].attn.qkv.weight, source_model.blocks[0].attn.qkv.weight)


def test_missing_weights_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_anchor("vit_tiny_patch16_224", pretrained=tmp_path / "nope.safetensors", **KW)
