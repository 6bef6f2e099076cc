"""The `elastic` CLI: a user error is one `error: ...` line and exit code 2, found before any
long work starts; anything else (a bug) keeps its traceback."""

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import elastic
from elastic.cli import main
from elastic.manifest import manifest_digest


def _root_conftest(config: pytest.Config):
    return config.pluginmanager.get_plugin(str(Path(__file__).parent / "conftest.py"))


@pytest.fixture(scope="module")
def saved(request, tmp_path_factory):
    """A small StitchedNet for 1x28x28 inputs (Fashion-MNIST's), saved once for the module."""
    from elastic.anchors import AnchorFamily

    specs = _root_conftest(request.config).tiny_vit_specs(widths=(32, 64), depth=2, img=28, in_chans=1, patch=7)
    torch.manual_seed(0)
    net = elastic.StitchedNet(AnchorFamily.from_timm(specs)).eval()
    net.set_accuracies({0: 0.5, 1: 0.625})
    return elastic.save(net, tmp_path_factory.mktemp("cli") / "model")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert any(line.startswith("error: ") or ": error: " in line for line in err.splitlines()), err
    for needle in needles:
        assert needle in err


def test_info_prints_the_table(saved, capsys):
    code, out, _ = _run(capsys, "info", str(saved))
    assert code == 0
    assert "StitchedNet over vit-w32, vit-w64: " in out and "62.50" in out


def _rewrite(saved: Path, tmp_path: Path, edit) -> Path:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes())
    m = json.loads((saved / "manifest.json").read_text())
    text = edit(m)
    if text is None:
        with contextlib.suppress(ValueError):  # NaN: refused by the parser before any hash
            m["manifest_sha256"] = manifest_digest(m)
        text = json.dumps(m)
    (broken / "manifest.json").write_text(text)
    return broken


def _subnet(field, value):
    def edit(m):
        m["subnets"][1][field] = value

    return edit


def _top(field, value):
    def edit(m):
        m[field] = value

    return edit


MALFORMED = {
    "weights null": _top("weights", None),
    "weights outside": _top("weights", "../model/weights.safetensors"),
    "hash not a string": _top("weights_sha256", 7),
    "subnets not a list": _top("subnets", {"0": {}}),
    "accuracy high": _subnet("accuracy", "high"),
    "accuracy NaN": _subnet("accuracy", math.nan),
    "accuracy 7.5": _subnet("accuracy", 7.5),
    "200k-deep JSON": lambda m: "[" * 200_000 + "]" * 200_000,
    "bad JSON": lambda m: "{",
    "edited, not rehashed": lambda m: json.dumps({**m, "builder": "SortedNet"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_info_on_a_malformed_manifest_is_a_user_error(saved, tmp_path, capsys, case):
    code, out, err = _run(capsys, "info", str(_rewrite(saved, tmp_path, MALFORMED[case])))
    _user_error(code, err, "manifest.json")
    assert out == ""


def test_info_on_a_missing_or_non_directory_path(saved, tmp_path, capsys):
    _user_error(*_run(capsys, "info", str(tmp_path / "nowhere"))[::2], "not a checkpoint directory")
    _user_error(*_run(capsys, "info", str(saved / "manifest.json"))[::2], "not a checkpoint directory")


def test_usage_errors_exit_2_and_help_exits_0(capsys):
    _user_error(*_run(capsys, "info")[::2], "the following arguments are required: path")
    _user_error(*_run(capsys, "no-such-command")[::2], "invalid choice")
    assert _run(capsys, "--help")[0] == 0


@pytest.mark.parametrize(
    "option, needle",
    [
        (["--policy", "bogus"], "unknown policy 'bogus'"),
        (["--policy", "static:x"], "unknown policy 'static:x'"),
        (["--budgets", "10,fast"], "comma-separated numbers"),
        (["--budgets", "10,nan"], "finite number of ms > 0"),
        (["--device", "nope"], "not a torch device"),
        (["--max-batch", "0"], "must be > 0"),
        (["--rate", "-3"], "must be > 0"),
    ],
)
def test_serve_demo_bad_options_fail_before_anything_loads(tmp_path, capsys, monkeypatch, option, needle):
    """Checked while parsing: the model (which does not exist) is never opened."""

    def loaded(*args, **kwargs):
        raise AssertionError("loaded a model despite a bad option")

    monkeypatch.setattr(elastic.checkpoint, "load", loaded)
    _user_error(*_run(capsys, "serve-demo", "--model", str(tmp_path / "none"), *option)[::2], needle)


def test_serve_demo_static_policy_of_a_missing_subnet(saved, capsys):
    code, _, err = _run(capsys, "serve-demo", "--model", str(saved), "--policy", "static:9999", "--requests", "4")
    _user_error(code, err, "no subnet 9999")


def test_serve_demo_on_a_model_for_other_inputs(capsys, tmp_path, request):
    """A 3x32x32 model cannot serve Fashion-MNIST's 1x28x28 images: an InvalidInput, exit 2."""
    from elastic.anchors import AnchorFamily

    specs = _root_conftest(request.config).tiny_vit_specs(widths=(32,), depth=1)
    path = elastic.save(elastic.StitchedNet(AnchorFamily.from_timm(specs)), tmp_path / "rgb")
    code, _, err = _run(capsys, "serve-demo", "--model", str(path), "--requests", "4")
    _user_error(code, err, "expected shape")


def test_demo_out_is_checked_before_training(tmp_path, capsys, monkeypatch):
    import elastic.demo.pipeline

    def trained(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(elastic.demo.pipeline, "run_demo", trained)
    file = tmp_path / "file"
    file.write_text("")
    for out, needle in [(file, "is not a directory"), (file / "out", "is not writable")]:
        code, _, err = _run(capsys, "demo", "--quick", "--out", str(out), "--no-progress")
        _user_error(code, err, f"--out {out}", needle)
    for builder in ("sorted", "learngene"):
        code, _, err = _run(capsys, "demo", "--builder", builder, "--out", str(file / "out"))
        _user_error(code, err, "is not writable")


def test_bench_with_a_model_that_cannot_load_exits_2_before_running(tmp_path, capsys, monkeypatch):
    import elastic.bench.overhead

    def ran(*args, **kwargs):
        raise AssertionError("the suite ran without its model")

    monkeypatch.setattr(elastic.bench.overhead, "run", ran)
    code, _, err = _run(capsys, "bench", "overhead", "--model", "/nonexistent", "--out", str(tmp_path))
    _user_error(code, err, "/nonexistent")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"format": "elastic-checkpoint/2"}')
    code, _, err = _run(capsys, "bench", "overhead", "--model", str(tmp_path / "bad"), "--out", str(tmp_path))
    _user_error(code, err, "lacks")


def test_bench_load_options_are_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    import elastic.bench.load
    import elastic.bench.overhead

    def ran(*args, **kwargs):
        raise AssertionError("a suite ran despite a bad option")

    monkeypatch.setattr(elastic.bench.load, "run", ran)
    monkeypatch.setattr(elastic.bench.overhead, "run", ran)
    for option, value, message in (("--loads", "1,fast", "--loads"), ("--patterns", "bursty", "--patterns")):
        code, _, err = _run(capsys, "bench", "load", option, value, "--out", str(tmp_path))
        _user_error(code, err, message)
    code, _, err = _run(capsys, "bench", "load", "--repeats", "1", "--out", str(tmp_path))
    _user_error(code, err, "at least 2")
    code, _, err = _run(capsys, "bench", "overhead", "--repeats", "9", "--out", str(tmp_path))
    _user_error(code, err, "load suite only")


def test_bugs_keep_their_traceback(saved, monkeypatch):
    import elastic.commands.info

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(elastic.commands.info, "register", _register_with(bug))
    with pytest.raises(ZeroDivisionError):
        main(["info", str(saved)])


def _register_with(func):
    import elastic.commands.info

    register = elastic.commands.info.register

    def patched(sub):
        register(sub)
        sub.choices["info"].set_defaults(func=func)

    return patched


def test_interrupt_exits_130(saved, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("elastic.commands.info.register", _register_with(interrupted))
    assert main(["info", str(saved)]) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_installed_command_as_a_subprocess(saved, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(
        [sys.executable, "-m", "elastic.cli", "info", str(saved)], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and "vit-w32[0:1] -> vit-w64[1:2]" in ok.stdout, ok.stderr
    broken = _rewrite(saved, tmp_path, MALFORMED["200k-deep JSON"])
    bad = subprocess.run(
        [sys.executable, "-m", "elastic.cli", "info", str(broken)], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_serve_demo_measures_again_instead_of_reusing_a_nan_profile(saved, tmp_path, capsys):
    import shutil

    model = Path(shutil.copytree(saved, tmp_path / "model"))
    argv = ["serve-demo", "--model", str(model), "--requests", "16", "--profile-repeats", "1", "--max-batch", "2"]
    argv += ["--report", str(tmp_path / "report.json")]
    assert _run(capsys, *argv)[0] == 0
    file = model / "profile-cpu.json"
    doc = json.loads(file.read_text())
    doc["p50_ms"]["0"]["1"] = math.nan
    file.write_text(json.dumps(doc))
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert f"not reusing {file}: p50_ms[0][1] must be a finite latency" in out
    assert math.isfinite(json.loads(file.read_text())["p50_ms"]["0"]["1"])
