"""Save / load: identical outputs; every bad, hostile or oversized checkpoint is a
CheckpointError raised before anything is built; saves are atomic for the whole directory."""

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import elastic
from elastic.checkpoint import sha256_file
from elastic.errors import CheckpointError
from elastic.manifest import FORMAT, FORMAT_V1, manifest_digest, profile_problems


def _root_conftest(config: pytest.Config):
    return config.pluginmanager.get_plugin(str(Path(__file__).parent / "conftest.py"))


@pytest.fixture(scope="module")
def model(request):
    """The root conftest's `tiny_stitched`, built once for this module (it takes seconds)."""
    from elastic.anchors import AnchorFamily

    torch.manual_seed(0)
    family = AnchorFamily.from_timm(_root_conftest(request.config).tiny_vit_specs())
    torch.manual_seed(1)
    net = elastic.StitchedNet(family).eval()
    net.init_stitches(torch.randn(8, 3, 32, 32))
    net.set_accuracies({0: 0.5, 5: 0.625})
    return net


@pytest.fixture(scope="module")
def pristine(model, tmp_path_factory):
    return elastic.save(model, tmp_path_factory.mktemp("pristine") / "model")


@pytest.fixture
def saved(pristine, tmp_path):
    """A fresh copy of the saved checkpoint, for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "model"))


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail loudly if load gets as far as counting or building a model."""

    def built(*args, **kwargs):
        raise AssertionError("a model was built from a manifest that should have been refused")

    monkeypatch.setattr(elastic.checkpoint, "anchor_params", built)
    monkeypatch.setattr(elastic.StitchedNet, "from_config", built)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write(path: Path, manifest: dict, rehash: bool = True) -> None:
    """Write a manifest back; `rehash` recomputes its own hash, as an attacker would."""
    if rehash and "manifest_sha256" in manifest:
        with contextlib.suppress(ValueError):  # NaN / Infinity: no canonical form; the parser refuses them first
            manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# ---- round trip ------------------------------------------------------------------------
def test_save_load_gives_identical_outputs_for_every_subnet(model, pristine):
    loaded = elastic.load(pristine)
    assert [s.description for s in loaded.subnets()] == [s.description for s in model.subnets()]
    assert loaded.subnets()[5].accuracy == 0.625 and loaded.subnets()[1].accuracy is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for s in model.subnets():
            assert torch.equal(loaded(x, subnet=s.id), model(x, subnet=s.id)), s


def test_no_pickle_no_temp_files_and_one_hash_over_both_files(pristine):
    assert sorted(p.name for p in pristine.iterdir()) == ["manifest.json", "weights.safetensors"]
    assert _siblings(pristine) == []
    manifest = _manifest(pristine)
    assert manifest["format"] == FORMAT and manifest["builder"] == "StitchedNet"
    assert manifest["anchors"][0]["kwargs"]["embed_dim"] == 32
    assert len(manifest["subnets"]) == 23
    assert manifest["weights_sha256"] == sha256_file(pristine / "weights.safetensors")
    assert manifest["manifest_sha256"] == manifest_digest(manifest)


# ---- damaged and hostile checkpoints ---------------------------------------------------------
def _corrupt(saved, how):
    weights = saved / "weights.safetensors"
    m = _manifest(saved)
    if how == "missing dir":
        return saved / "nowhere"
    if how == "missing manifest":
        (saved / "manifest.json").unlink()
    elif how == "missing weights":
        weights.unlink()
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "truncated, hash updated":
        weights.write_bytes(weights.read_bytes()[:1000])
        m["weights_sha256"] = sha256_file(weights)
        _write(saved, m)
    elif how == "wrong config":
        m["config"]["window"] = 3
        _write(saved, m)
    elif how == "extra tensor":
        from safetensors.torch import load_file, save_file

        state = load_file(str(weights))
        state["extra"] = torch.zeros(1)
        save_file(state, str(weights))
        m["weights_sha256"] = sha256_file(weights)
        _write(saved, m)
    return saved


@pytest.mark.parametrize(
    "how",
    [
        "missing dir",
        "missing manifest",
        "missing weights",
        "truncated weights",
        "flipped byte",
        "truncated, hash updated",
        "wrong config",
        "extra tensor",
    ],
)
def test_bad_checkpoints_raise_checkpoint_error(saved, how):
    with pytest.raises(CheckpointError):
        elastic.load(_corrupt(saved, how))


def _set(key, value):
    def edit(m):
        m[key] = value

    return edit


def _subnet(field, value):
    def edit(m):
        m["subnets"][3][field] = value

    return edit


def _kwarg(key, value):
    def edit(m):
        m["anchors"][1]["kwargs"][key] = value

    return edit


def _delete(key):
    return lambda m: m.pop(key)


# (edit of the parsed manifest, error message pattern); the manifest is re-hashed after the edit
MALFORMED = {
    "weights null": (_set("weights", None), "weights must be the name of a .safetensors file"),
    "weights a number": (_set("weights", 7), "weights must be"),
    "weights in a sibling": (_set("weights", "../other/weights.safetensors"), "inside the checkpoint directory"),
    "weights absolute": (_set("weights", "/etc/weights.safetensors"), "inside the checkpoint directory"),
    "weights not safetensors": (_set("weights", "weights.pt"), "weights must be"),
    "hash not a string": (_set("weights_sha256", 12345), "weights_sha256 must be"),
    "hash too short": (_set("weights_sha256", "abc"), "weights_sha256 must be"),
    "subnets not a list": (_set("subnets", "0..22"), "subnets must be a list"),
    "subnets empty": (_set("subnets", []), "subnets must be a list of 1"),
    "subnet not an object": (lambda m: m["subnets"].__setitem__(2, 5), r"subnets\[2\] must be an object"),
    "subnet id out of place": (_subnet("id", 7), r"subnets\[3\].id must be its position 3"),
    "subnet id a bool": (_subnet("id", True), r"subnets\[3\].id must be an integer"),
    "accuracy a string": (_subnet("accuracy", "high"), r"subnets\[3\].accuracy must be a finite number in \[0"),
    "accuracy above 1": (_subnet("accuracy", 7.5), r"subnets\[3\].accuracy"),
    "accuracy negative": (_subnet("accuracy", -0.25), r"subnets\[3\].accuracy"),
    "accuracy infinite": (_subnet("accuracy", math.inf), "only finite numbers"),
    "accuracy NaN": (_subnet("accuracy", math.nan), "only finite numbers"),
    "flops negative": (_subnet("flops", -1), r"subnets\[3\].flops"),
    "description a list": (_subnet("description", ["a"]), r"subnets\[3\].description"),
    "builder a list": (_set("builder", ["StitchedNet"]), "builder must be"),
    "unknown builder": (_set("builder", "Nope"), "unknown builder 'Nope'"),
    "anchors not a list": (_set("anchors", {"name": "vit"}), "anchors must be a list"),
    "anchor name a path": (lambda m: m["anchors"][0].__setitem__("name", "../x"), r"anchors\[0\].name"),
    "unknown timm name": (lambda m: m["anchors"][0].__setitem__("name", "no_such_model"), "no_such_model"),
    "kwargs not an object": (lambda m: m["anchors"][0].__setitem__("kwargs", [1]), r"anchors\[0\].kwargs must be"),
    "checkpoint_path kwarg": (_kwarg("checkpoint_path", "/etc/passwd"), "checkpoint_path is not an allowed"),
    "pretrained_cfg_overlay kwarg": (_kwarg("pretrained_cfg_overlay", {"file": "x"}), "pretrained_cfg_overlay"),
    "pretrained kwarg": (_kwarg("pretrained", True), "pretrained is not an allowed"),
    "act_layer kwarg": (_kwarg("act_layer", "os.system"), "act_layer is not an allowed"),
    "embed_dim a string": (_kwarg("embed_dim", "64"), r"kwargs.embed_dim must be an integer"),
    "drop rate 1": (_kwarg("drop_path_rate", 1.0), "drop_path_rate must be"),
    "mlp_ratio NaN": (_kwarg("mlp_ratio", math.nan), "only finite numbers"),
    "config a list": (_set("config", [2, 1]), "config must be an object"),
    "window a string": (lambda m: m["config"].__setitem__("window", "2"), "config.window must be an integer"),
    "window zero": (lambda m: m["config"].__setitem__("window", 0), "config.window must be"),
    "unknown config key": (lambda m: m["config"].__setitem__("nope", 1), "cannot rebuild"),
    "unknown field": (_set("extra", 1), "unknown field"),
    "missing subnets": (_delete("subnets"), "lacks subnets"),
    "other format": (_set("format", "elastic-checkpoint/9"), "not an elastic checkpoint manifest"),
    "not an object": (lambda m: m.clear(), "not an elastic checkpoint manifest"),
}


PAST_SCHEMA = ["unknown builder", "unknown timm name", "unknown config key"]  # need the registries


@pytest.mark.parametrize("case", sorted(set(MALFORMED) - set(PAST_SCHEMA)))
def test_malformed_manifest_is_refused_before_building(saved, case, nothing_built):
    edit, pattern = MALFORMED[case]
    m = _manifest(saved)
    edit(m)
    _write(saved, m)
    with pytest.raises(CheckpointError, match=pattern):
        elastic.load(saved)


@pytest.mark.parametrize("case", PAST_SCHEMA)
def test_refusals_past_the_schema(saved, case):
    edit, pattern = MALFORMED[case]
    m = _manifest(saved)
    edit(m)
    _write(saved, m)
    with pytest.raises(CheckpointError, match=pattern):
        elastic.load(saved)


RAW = {
    "200k-deep JSON": ("[" * 200_000 + "]" * 200_000, "nests deeper"),
    "20-deep JSON": ("[" * 20 + "]" * 20, "nests 20 levels"),
    "not JSON": ("{not json", "not valid JSON"),
    "not UTF-8": (b"\xff\xfe{}", "not valid JSON"),
    "duplicate keys": ('{"format": "elastic-checkpoint/2", "format": "x"}', "repeats the key 'format'"),
    "a list": ("[]", "must hold a JSON object"),
    "NaN literal": ('{"format": NaN}', "only finite numbers"),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_unparseable_manifest_is_a_checkpoint_error(saved, case, nothing_built):
    text, pattern = RAW[case]
    file = saved / "manifest.json"
    file.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match=pattern):
        elastic.load(saved)
    with pytest.raises(CheckpointError, match=pattern):
        elastic.checkpoint.read_manifest(saved)


def test_the_manifest_is_covered_by_its_own_hash(saved, nothing_built):
    m = _manifest(saved)
    m["subnets"][3]["accuracy"] = 0.99  # valid, but not what was saved
    _write(saved, m, rehash=False)
    with pytest.raises(CheckpointError, match="does not match its own hash"):
        elastic.load(saved)


def test_weights_of_another_checkpoint_are_never_loaded(saved, tmp_path, model):
    """Pointing `weights` at another checkpoint's file, by name or by symlink, is refused
    even with every hash made to match."""
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    m = _manifest(saved)
    m["weights"] = "../other/weights.safetensors"
    _write(saved, m)
    with pytest.raises(CheckpointError, match="inside the checkpoint directory"):
        elastic.load(saved)

    m["weights"] = "weights.safetensors"
    _write(saved, m)
    (saved / "weights.safetensors").unlink()
    (saved / "weights.safetensors").symlink_to(other / "weights.safetensors")
    with pytest.raises(CheckpointError, match="leads outside the checkpoint directory"):
        elastic.load(saved)


def test_size_bound_is_checked_from_the_manifest_before_building(saved, monkeypatch):
    m = _manifest(saved)
    m["anchors"][2] = {"name": "vit_giant_patch14_224", "kwargs": {}, "label": "vit-w128"}  # ~1.0 B params
    _write(saved, m)

    def built(*args, **kwargs):
        raise AssertionError("built before the size check")

    monkeypatch.setattr(elastic.StitchedNet, "from_config", built)
    with pytest.raises(CheckpointError, match="more than max_params=400,000,000"):
        elastic.load(saved)

    m["anchors"][2] = {"name": "vit_tiny_patch16_224", "kwargs": {"depth": 1000}, "label": "vit-w128"}
    _write(saved, m)
    with pytest.raises(CheckpointError, match="asks for 1000 blocks, more than max_blocks=64"):
        elastic.load(saved)


def test_size_bounds_can_be_set_by_the_caller(pristine):
    params = elastic.checkpoint.anchor_params(_manifest(pristine)["anchors"])
    assert params == sum(p.numel() for a in elastic.load(pristine).family.anchors for p in a.parameters())
    with pytest.raises(CheckpointError, match=f"{params:,} parameters, more than max_params={params - 1:,}"):
        elastic.load(pristine, max_params=params - 1)
    with pytest.raises(CheckpointError, match="asks for 4 blocks, more than max_blocks=3"):
        elastic.load(pristine, max_blocks=3)
    loaded = elastic.load(pristine, max_params=params, max_blocks=4)
    assert len(loaded.subnets()) == 23


def test_format_1_checkpoints_still_load(saved, caplog):
    """What the previous code wrote: format 1, no manifest hash; its weights are still checked."""
    m = _manifest(saved)
    m["format"] = FORMAT_V1
    del m["manifest_sha256"]
    _write(saved, m)
    with caplog.at_level(logging.WARNING, "elastic.manifest"):
        loaded = elastic.load(saved)
    assert loaded.subnets()[5].accuracy == 0.625
    assert "format 1" in caplog.text
    m["subnets"][3]["accuracy"] = 7.5  # the schema applies to format 1 as well
    _write(saved, m)
    with pytest.raises(CheckpointError, match="accuracy"):
        elastic.load(saved)


def test_wrong_builder_is_refused(pristine):
    with pytest.raises(CheckpointError, match="not a SortedNet"):
        elastic.load(pristine, builder="SortedNet")
    assert isinstance(elastic.load(pristine, builder=elastic.StitchedNet), elastic.StitchedNet)


# ---- saving ------------------------------------------------------------------------------
def test_models_without_specs_cannot_be_saved(tmp_path):
    import timm

    from elastic.anchors import AnchorFamily

    family = AnchorFamily([timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2)])
    with pytest.raises(CheckpointError, match="from_timm"):
        elastic.save(elastic.StitchedNet(family), tmp_path / "m")


def test_saving_onto_a_file_or_a_foreign_directory_is_refused(model, tmp_path):
    file = tmp_path / "file"
    file.write_text("keep me")
    with pytest.raises(CheckpointError, match="not a directory"):
        elastic.save(model, file)
    assert file.read_text() == "keep me"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="without a manifest.json"):
        elastic.save(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    with pytest.raises(CheckpointError, match="cannot create"):
        elastic.save(model, file / "under" / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_save_refuses_a_manifest_load_would_refuse(model, tmp_path, monkeypatch):
    specs = model.anchor_specs()
    specs[0]["kwargs"]["checkpoint_path"] = "/tmp/x.pth"
    monkeypatch.setattr(model, "anchor_specs", lambda: specs)
    with pytest.raises(CheckpointError, match="cannot save: .*checkpoint_path is not an allowed"):
        elastic.save(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_resave_replaces_the_checkpoint_and_keeps_other_files(model, saved):
    (saved / "profile-cpu.json").write_text("{}")
    (saved / ".weights.safetensors.abc.tmp").write_text("left by the old format's killed save")
    before = sha256_file(saved / "manifest.json")
    model.set_accuracies({1: 0.75})
    try:
        elastic.save(model, saved)
    finally:
        model.set_accuracies({1: None})
    assert sorted(p.name for p in saved.iterdir()) == ["manifest.json", "profile-cpu.json", "weights.safetensors"]
    assert sha256_file(saved / "manifest.json") != before
    assert _siblings(saved) == []
    assert elastic.load(saved).subnets()[1].accuracy == 0.75


def test_a_failed_save_keeps_the_old_checkpoint(model, saved, monkeypatch):
    before = {p.name: sha256_file(p) for p in saved.iterdir()}

    def disk_full(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(elastic.checkpoint, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        elastic.save(model, saved)
    assert {p.name: sha256_file(p) for p in saved.iterdir()} == before
    assert _siblings(saved) == []


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import elastic, elastic.checkpoint as ckpt

    path, where = sys.argv[1], sys.argv[2]
    model = elastic.load(path)
    model.set_accuracies({0: 0.875})

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "writing weights":
        real = ckpt.save_file
        def save_file(state, filename, metadata=None):
            open(filename, "wb").write(b"partial")
            die()
        ckpt.save_file = save_file
    elif where == "after the swap":
        ckpt.shutil.rmtree = die
    elif where == "between the fallback renames":
        ckpt._renameat2 = False
        real_rename = ckpt.os.rename
        calls = []
        def rename(a, b):
            calls.append(a)
            if len(calls) == 2:
                die()
            real_rename(a, b)
        ckpt.os.rename = rename
    elastic.save(model, path)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, survivor",
    [("writing weights", 0.5), ("after the swap", 0.875), ("between the fallback renames", 0.5)],
)
def test_a_killed_save_loses_nothing_and_leaves_nothing_after_the_next_save(
    model, saved, tmp_path_factory, where, survivor
):
    script = tmp_path_factory.mktemp("script") / "killed_save.py"
    script.write_text(KILLED_SAVE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(script), str(saved), where], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _siblings(saved), "the kill should have left a temp or backup directory"
    assert elastic.load(saved).subnets()[0].accuracy == survivor  # old or new, never neither
    elastic.save(model, saved)
    assert _siblings(saved) == [] and sorted(p.name for p in saved.iterdir()) == [
        "manifest.json",
        "weights.safetensors",
    ]
    assert elastic.load(saved).subnets()[0].accuracy == 0.5


# ---- the latency profile beside a checkpoint ----------------------------------------------------
def _profile_doc(tmp_path) -> Path:
    from elastic.serving import LatencyProfile

    profile = LatencyProfile.from_table({0: {1: 1.0, 2: 1.5}, 1: {1: 2.0, 2: 3.0}}, device="cpu", tail=1.2)
    return profile.save(tmp_path)


def test_profile_problems_finds_non_finite_and_negative_latencies(tmp_path):
    doc = json.loads(_profile_doc(tmp_path).read_text())
    assert profile_problems(doc) is None
    for bad in (math.nan, math.inf, -1.0, 0.0, "1.0", None):
        broken = json.loads(json.dumps(doc))
        broken["p50_ms"]["1"]["2"] = bad
        assert "p50_ms[1][2]" in profile_problems(broken)
    broken = json.loads(json.dumps(doc))
    broken["p99_ms"]["0"]["1"] = 0.5
    assert "below p50" in profile_problems(broken)
    assert "batch_sizes" in profile_problems({**doc, "batch_sizes": [0]})


def test_a_profile_with_nan_latencies_is_not_reused(tmp_path):
    from elastic.serving import LatencyProfile

    file = _profile_doc(tmp_path)
    doc = json.loads(file.read_text())
    doc["p50_ms"]["0"]["1"] = math.nan
    doc["p99_ms"]["0"]["1"] = math.nan
    file.write_text(json.dumps(doc))  # Python writes NaN, and reads it back
    assert LatencyProfile.load(tmp_path, "cpu") is None
