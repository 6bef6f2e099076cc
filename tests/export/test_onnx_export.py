"""ONNX export per subnet: onnxruntime equals torch, the manifest ties files to subnets, and
every way an export can be damaged is an `ExportError`."""

import json

import onnx
import pytest
import torch

from elastic.checkpoint import MANIFEST, sha256_file
from elastic.errors import ExportError, UnknownSubnet
from elastic.export.onnx import (
    INPUT,
    OUTPUT,
    graph_path,
    manifest_digest,
    read_export_manifest,
    select_subnets,
)
from elastic.export.session import make_session

pytestmark = pytest.mark.slow  # the session fixture exports six subnets (seconds each)


def test_every_subnet_is_exported_and_listed(small_model, exported):
    folder, manifest = exported
    assert read_export_manifest(folder) == manifest
    assert [e["id"] for e in manifest["subnets"]] == [s.id for s in small_model.subnets()]
    for entry, subnet in zip(manifest["subnets"], small_model.subnets(), strict=True):
        assert (entry["description"], entry["flops"], entry["params"]) == (
            subnet.description,
            subnet.flops,
            subnet.params,
        )
        assert entry["accuracy"] == subnet.accuracy is not None
        assert sha256_file(folder / entry["file"]) == entry["sha256"]
        assert entry["max_abs_diff"] <= 1e-4
    assert manifest["manifest_sha256"] == manifest_digest(manifest)


def test_graphs_have_a_dynamic_batch_axis_and_fused_attention(exported):
    folder, manifest = exported
    assert manifest["opset"] == 23 and manifest["fused_attention"] is True
    for entry in manifest["subnets"]:
        graph = onnx.load(folder / entry["file"]).graph
        assert [i.name for i in graph.input] == [INPUT] and [o.name for o in graph.output] == [OUTPUT]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 32, 32]
        assert "Attention" in {n.op_type for n in graph.node}  # SDPA kept fused, not MatMul/Softmax


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_equals_torch_for_every_exported_subnet(small_model, exported, batch):
    folder, manifest = exported
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    for entry in manifest["subnets"]:
        session = make_session(graph_path(folder, manifest, entry["id"]))
        got = torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])
        with torch.inference_mode():
            expected = small_model(x, subnet=entry["id"])
        assert got.shape == (batch, 10)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_select_subnets(small_model):
    from elastic.subnet import pareto

    assert select_subnets(small_model, "all") == list(range(6))
    assert select_subnets(small_model, "pareto") == pareto(small_model.subnets())
    assert select_subnets(small_model, "0, 2-3,3") == [0, 2, 3]
    assert select_subnets(small_model, [5, 1]) == [1, 5]
    with pytest.raises(UnknownSubnet):
        select_subnets(small_model, "0,6")
    with pytest.raises(ValueError, match="ids like"):
        select_subnets(small_model, "first")
    with pytest.raises(ValueError, match="no subnets"):
        select_subnets(small_model, [])


def test_pareto_needs_accuracies(fresh_small_model):
    fresh_small_model.set_accuracies({s.id: None for s in fresh_small_model.subnets()})
    with pytest.raises(ValueError, match="accuracies"):
        select_subnets(fresh_small_model, "pareto")


def _first(folder):
    manifest = read_export_manifest(folder)
    return manifest, folder / manifest["subnets"][0]["file"]


def test_tampered_graph_is_an_export_error(export_copy):
    manifest, file = _first(export_copy)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: still a loadable graph
    file.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match its manifest"):
        graph_path(export_copy, manifest, 0)


def test_truncated_and_missing_graphs_are_export_errors(export_copy):
    manifest, file = _first(export_copy)
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(ExportError, match="does not match its manifest"):
        graph_path(export_copy, manifest, 0)
    file.unlink()
    with pytest.raises(ExportError, match="missing"):
        graph_path(export_copy, manifest, 0)


def test_corrupt_graph_with_a_matching_hash_fails_to_load_with_an_export_error(export_copy):
    """A file re-hashed into the manifest after corruption still cannot become a session."""
    manifest, file = _first(export_copy)
    file.write_bytes(b"not an onnx graph" * 100)
    manifest["subnets"][0]["sha256"] = sha256_file(file)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (export_copy / MANIFEST).write_text(json.dumps(manifest))
    path = graph_path(export_copy, read_export_manifest(export_copy), 0)
    with pytest.raises(ExportError, match="cannot load"):
        make_session(path)


def test_edited_or_broken_manifest_is_an_export_error(export_copy, tmp_path):
    manifest = json.loads((export_copy / MANIFEST).read_text())
    manifest["subnets"][0]["accuracy"] = 0.99  # claims more than was measured
    (export_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="modified after export"):
        read_export_manifest(export_copy)
    (export_copy / MANIFEST).write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        read_export_manifest(export_copy)
    (export_copy / MANIFEST).write_text(json.dumps({"format": "elastic-checkpoint/1"}))
    with pytest.raises(ExportError, match="elastic-onnx/1"):
        read_export_manifest(export_copy)
    (export_copy / MANIFEST).unlink()
    with pytest.raises(ExportError, match="has no manifest.json"):
        read_export_manifest(export_copy)
    with pytest.raises(ExportError, match="not an ONNX export folder"):
        read_export_manifest(tmp_path / "nowhere")


def test_subnet_not_exported_is_an_export_error(exported):
    folder, manifest = exported
    partial = {**manifest, "subnets": manifest["subnets"][:2]}
    with pytest.raises(ExportError, match=r"subnet 4 was not exported .*exported: \[0, 1\]"):
        graph_path(folder, partial, 4)


def test_export_rejects_opsets_it_cannot_write(small_model, tmp_path):
    from elastic.export.onnx import export_onnx

    with pytest.raises(ValueError, match="opset 17"):
        export_onnx(small_model, tmp_path, [0], opset=17)
    with pytest.raises(ValueError, match="knows up to"):
        export_onnx(small_model, tmp_path, [0], opset=onnx.defs.onnx_opset_version() + 1)
    assert not (tmp_path / MANIFEST).exists()


def test_exporting_again_replaces_the_earlier_export(small_model, export_copy):
    from elastic.export.onnx import export_onnx

    (export_copy / "notes.txt").write_text("mine")
    manifest = export_onnx(small_model, export_copy, [0], verify=False)
    assert read_export_manifest(export_copy) == manifest and manifest["verified"] is None
    assert sorted(p.name for p in export_copy.iterdir()) == ["manifest.json", "notes.txt", "subnet-000.onnx"]


def test_a_sortednet_exports_too(tmp_path):
    """Another builder (nested prefixes sliced from one ViT): its smallest and largest subnets."""
    from elastic.builders.sorted import SortedNet
    from elastic.export.onnx import export_onnx

    torch.manual_seed(0)
    kwargs = dict(embed_dim=64, depth=3, num_heads=4, img_size=28, patch_size=7, in_chans=1, num_classes=10)
    net = SortedNet.from_timm("vit_tiny_patch16_224", kwargs, "vit-64").eval()
    ids = [net.smallest().id, net.largest().id]
    manifest = export_onnx(net, tmp_path, ids)
    x = torch.randn(5, 1, 28, 28)
    for sid in ids:
        session = make_session(graph_path(tmp_path, manifest, sid))
        with torch.inference_mode():
            expected = net(x, subnet=sid)
        torch.testing.assert_close(
            torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0]), expected, atol=1e-4, rtol=0
        )
