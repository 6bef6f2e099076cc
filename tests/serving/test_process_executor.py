"""`ProcessExecutor`: forwards in a child process give the eager outputs; a failed forward
fails its batch only; a child that dies fails requests with a typed error; nothing is left
behind on close."""

import os
import signal

import pytest
import torch

from elastic.errors import ExecutionError
from elastic.serving import Runtime
from elastic.serving.executor import make_executor


def test_a_failed_forward_fails_its_batch_and_the_child_serves_on(served_model):
    executor = make_executor("process", served_model)
    try:
        x = torch.randn(2, 3, 32, 32)
        with pytest.raises(RuntimeError, match="UnknownSubnet"):
            executor.run(10_000, x)
        with torch.inference_mode():
            expected = served_model(x, subnet=5)
        torch.testing.assert_close(executor.run(5, x), expected, atol=1e-4, rtol=1e-4)
    finally:
        executor.close()


def test_the_runtime_serves_through_a_child_and_close_leaves_nothing_behind(served_model, served_profile):
    x = torch.randn(3, 32, 32)
    with Runtime(served_model, max_batch_size=4, profile=served_profile, executor="process") as rt:
        executor = rt.executor
        result = rt.infer(x, 1e6)
        with torch.inference_mode():
            expected = served_model(x.unsqueeze(0), subnet=result.subnet)[0]
        torch.testing.assert_close(result.output, expected, atol=1e-4, rtol=1e-4)
        folder = executor._dir
        assert folder.exists() and executor._proc.poll() is None
    assert executor._proc.poll() is not None  # the runtime made it, so the runtime closed it
    assert not folder.exists()


def test_a_child_that_dies_fails_requests_with_a_typed_error(served_model, served_profile):
    with Runtime(served_model, max_batch_size=4, profile=served_profile, executor="process") as rt:
        os.kill(rt.executor._proc.pid, signal.SIGKILL)
        rt.executor._proc.wait()
        for _ in range(2):  # the batch that finds it gone, and every one after
            with pytest.raises(ExecutionError, match="executor process is gone"):
                rt.infer(torch.randn(3, 32, 32), 1e6)


def test_the_process_executor_runs_on_the_cpu_only(served_model):
    with pytest.raises(ValueError, match="on the CPU"):  # a ConfigError from `Runtime`
        make_executor("process", served_model, "meta")
