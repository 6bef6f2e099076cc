"""CUDAGraphExecutor: bucket and padding logic and refusals on the CPU; graphs on a GPU.

The GPU tests (marker `gpu`) capture real graphs of the tiny stitched model and check them
against the eager forward; without CUDA they are skipped.
"""

import logging

import pytest
import torch

from elastic.errors import ConfigError
from elastic.serving.cuda_graph_executor import (
    CUDAGraphExecutor,
    GraphBudgetExceeded,
    bucket_for,
    check_buckets,
    pad_rows,
)
from elastic.serving.executor import EXECUTORS, make_executor

CUDA = torch.cuda.is_available()


def test_bucket_for_picks_the_smallest_bucket_that_holds_the_batch():
    buckets = (1, 2, 4, 8)
    assert [bucket_for(b, buckets) for b in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, None]
    assert bucket_for(3, (3,)) == 3 and bucket_for(1, (5, 7)) == 5
    with pytest.raises(ValueError, match="at least one row"):
        bucket_for(0, buckets)


def test_check_buckets_sorts_and_refuses_bad_sizes():
    assert check_buckets([8, 1, 4, 4]) == (1, 4, 8)
    for bad in ([], [0, 2], [-1], ["x"], None):
        with pytest.raises(ConfigError, match="buckets"):
            check_buckets(bad)


def test_pad_rows_appends_zero_rows_and_keeps_the_real_ones():
    x = torch.randn(3, 2, 5)
    padded = pad_rows(x, 8)
    assert padded.shape == (8, 2, 5) and padded.dtype == x.dtype
    assert torch.equal(padded[:3], x) and not padded[3:].any()
    assert pad_rows(x, 3) is x
    with pytest.raises(ValueError, match="cannot pad"):
        pad_rows(x, 2)


def test_registered_under_its_name():
    assert EXECUTORS["cuda_graphs"] == "elastic.serving.cuda_graph_executor:CUDAGraphExecutor"


def test_refuses_a_cpu_device(served_model):
    with pytest.raises(ConfigError, match="CUDA device"):
        make_executor("cuda_graphs", served_model, "cpu")


@pytest.mark.skipif(CUDA, reason="a GPU is here: the no-CUDA refusal cannot be seen")
def test_refuses_cleanly_without_cuda(served_model):
    with pytest.raises(ConfigError, match="torch finds none"):
        CUDAGraphExecutor(served_model, "cuda")


# ---- GPU ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_model(served_model):
    if not CUDA:
        pytest.skip("needs a CUDA device")
    import copy

    return copy.deepcopy(served_model).to("cuda").eval()


def eager(model, subnet, x):
    with torch.inference_mode():
        return model(x.to("cuda"), subnet=subnet)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("subnet", [0, 5, 20])  # an anchor and two stitched paths
def test_gpu_graph_outputs_equal_eager(cuda_model, subnet):
    executor = CUDAGraphExecutor(cuda_model, "cuda", buckets=(1, 4, 8))
    for b in (1, 3, 8):  # 3 is padded to 4
        executor.warmup(subnet, b)
        x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b))
        got = executor.run(subnet, x)
        assert got.shape[0] == b and got.device.type == "cuda"
        torch.testing.assert_close(got, eager(cuda_model, subnet, x), atol=1e-4, rtol=1e-4)
    assert set(executor.graphs) == {(subnet, 1), (subnet, 4), (subnet, 8)}
    assert executor.memory_bytes > 0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_replays_do_not_alias_earlier_results(cuda_model):
    """A result stays as it was after later replays of the same graph."""
    executor = CUDAGraphExecutor(cuda_model, "cuda", buckets=(2,))
    executor.warmup(5, 2)
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    y1 = executor.run(5, x1)
    kept = y1.clone()
    executor.run(5, x2)
    torch.testing.assert_close(y1, kept, atol=0, rtol=0)
    torch.testing.assert_close(y1, eager(cuda_model, 5, x1), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_budget_refuses_capture_and_falls_back_to_eager(cuda_model, caplog):
    executor = CUDAGraphExecutor(cuda_model, "cuda", buckets=(1, 8), memory_budget_bytes=1)
    with caplog.at_level(logging.WARNING, logger="elastic.serving.cuda_graph_executor"):
        executor.warmup(5, 8)
    assert not executor.graphs and (5, 8) in executor.refused
    assert any("budget" in r.getMessage() for r in caplog.records)
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(executor.run(5, x), eager(cuda_model, 5, x), atol=1e-4, rtol=1e-4)
    strict = CUDAGraphExecutor(cuda_model, "cuda", buckets=(1,), memory_budget_bytes=1, strict=True)
    with pytest.raises(GraphBudgetExceeded, match="budget"):
        strict.warmup(0, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_past_the_largest_bucket_and_uncaptured_run_eagerly(cuda_model):
    executor = CUDAGraphExecutor(cuda_model, "cuda", buckets=(1, 2))
    x = torch.randn(5, 3, 32, 32)
    executor.warmup(20, 5)  # past the largest bucket: nothing captured
    torch.testing.assert_close(executor.run(20, x), eager(cuda_model, 20, x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(executor.run(20, x[:1]), eager(cuda_model, 20, x[:1]), atol=1e-4, rtol=1e-4)
    assert not executor.graphs


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_runtime_profiles_and_serves_through_graphs(cuda_model):
    """The profile is measured through the executor, which captures every profiled bucket."""
    from elastic.serving import measure_latency

    executor = CUDAGraphExecutor(cuda_model, "cuda", buckets=(1, 2, 4))
    measure_latency(
        cuda_model, torch.zeros(3, 32, 32), (1, 4), "cuda", repeats=2, warmup=1, subnets=[0, 20], executor=executor
    )
    assert {(0, 1), (0, 4), (20, 1), (20, 4)} <= set(executor.graphs)


# ---- bench/cuda_graphs_gpu.py: its arithmetic on the CPU ---------------------------------
def load_graphs_bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "cuda_graphs_gpu.py"
    spec = importlib.util.spec_from_file_location("cuda_graphs_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_graphs_bench_rank_correlation_spread_and_switch_cost():
    bench = load_graphs_bench()
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.spearman([1, 2, 3], [5, 5, 5]) == 0.0  # no order at all: launch-bound
    assert bench.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties: mean ranks
    with pytest.raises(ValueError):
        bench.spearman([1], [1])
    ids = list(range(71))
    picked = bench.spread(ids, 12)
    assert picked[0] == 0 and picked[-1] == 70 and len(picked) == 12 and picked == sorted(picked)
    assert bench.spread([3, 1], 5) == [3, 1]
    assert bench.switch_cost(alternating_s=1.2, blocked_s=1.0, switches=99) == pytest.approx(0.2 / 99)


@pytest.mark.skipif(CUDA, reason="a GPU is here: no quick refusal")
def test_graphs_bench_refuses_without_cuda(tmp_path, capsys):
    assert load_graphs_bench().main(["--out", str(tmp_path / "g.json")]) == 2
    assert "needs a GPU" in capsys.readouterr().err and not (tmp_path / "g.json").exists()
