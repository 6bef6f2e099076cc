"""Save / load: identical outputs, and every bad checkpoint is a CheckpointError."""

import json
import subprocess
import sys

import pytest
import torch

import elastic
from elastic.errors import CheckpointError


@pytest.fixture
def saved(tiny_stitched, tmp_path):
    tiny_stitched.set_accuracies({0: 0.5, 5: 0.625})
    return elastic.save(tiny_stitched, tmp_path / "model")


def test_save_load_gives_identical_outputs_for_every_subnet(tiny_stitched, saved):
    loaded = elastic.load(saved)
    assert [s.description for s in loaded.subnets()] == [s.description for s in tiny_stitched.subnets()]
    assert loaded.subnets()[5].accuracy == 0.625 and loaded.subnets()[1].accuracy is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for s in tiny_stitched.subnets():
            assert torch.equal(loaded(x, subnet=s.id), tiny_stitched(x, subnet=s.id)), s


def test_no_pickle_and_no_temp_files_left(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["manifest.json", "weights.safetensors"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["builder"] == "StitchedNet"
    assert manifest["anchors"][0]["kwargs"]["embed_dim"] == 32
    assert len(manifest["subnets"]) == 23


def _corrupt(saved, how):
    weights, manifest = saved / "weights.safetensors", saved / "manifest.json"
    if how == "missing dir":
        return saved / "nowhere"
    if how == "missing manifest":
        manifest.unlink()
    elif how == "missing weights":
        weights.unlink()
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "bad json":
        manifest.write_text("{not json")
    elif how == "unknown builder":
        m = json.loads(manifest.read_text())
        m["builder"] = "Nope"
        manifest.write_text(json.dumps(m))
    elif how == "truncated, hash updated":
        weights.write_bytes(weights.read_bytes()[:1000])
        m = json.loads(manifest.read_text())
        m["weights_sha256"] = elastic.checkpoint.sha256_file(weights)
        manifest.write_text(json.dumps(m))
    elif how == "wrong config":
        m = json.loads(manifest.read_text())
        m["config"]["window"] = 3
        manifest.write_text(json.dumps(m))
    return saved


@pytest.mark.parametrize(
    "how",
    [
        "missing dir",
        "missing manifest",
        "missing weights",
        "truncated weights",
        "flipped byte",
        "bad json",
        "unknown builder",
        "truncated, hash updated",
        "wrong config",
    ],
)
def test_bad_checkpoints_raise_checkpoint_error(saved, how):
    with pytest.raises(CheckpointError):
        elastic.load(_corrupt(saved, how))


def test_wrong_builder_is_refused(saved):
    with pytest.raises(CheckpointError, match="not a SortedNet"):
        elastic.load(saved, builder="SortedNet")
    assert isinstance(elastic.load(saved, builder=elastic.StitchedNet), elastic.StitchedNet)


def test_models_without_specs_cannot_be_saved(tmp_path):
    import timm

    from elastic.anchors import AnchorFamily

    family = AnchorFamily([timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2)])
    with pytest.raises(CheckpointError, match="from_timm"):
        elastic.save(elastic.StitchedNet(family), tmp_path / "m")


def test_cli_info_prints_the_table(saved):
    out = subprocess.run(
        [sys.executable, "-m", "elastic.cli", "info", str(saved)], capture_output=True, text=True, check=True
    ).stdout
    assert "23 subnets" in out
    assert "vit-w32[0:1] -> vit-w64[1:4]" in out
    assert "62.50" in out
    bad = subprocess.run(
        [sys.executable, "-m", "elastic.cli", "info", str(saved / "x")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "error:" in bad.stderr
