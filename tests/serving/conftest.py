"""Shared fixtures of the serving tests: one tiny real model and its profile per module.

The model is built exactly as the root `tiny_stitched` fixture builds it, but once per test
module (building it takes seconds), with made-up accuracies rising with FLOPs. Serving tests
run torch on one thread: on a small CPU the test's team and a runtime worker's team of two
make GNU OpenMP throttle its barrier spin, and small forwards run several times slower
(docs/serving.md, "Worker threading").
"""

from pathlib import Path

import pytest
import torch


def _root_conftest(config: pytest.Config):
    """The tests/conftest.py module (conftest modules without a package share one name)."""
    return config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def served_model(request):
    from elastic import StitchedNet
    from elastic.anchors import AnchorFamily

    specs = _root_conftest(request.config).tiny_vit_specs()
    torch.manual_seed(0)
    family = AnchorFamily.from_timm(specs)
    torch.manual_seed(1)
    net = StitchedNet(family).eval()
    net.init_stitches(torch.randn(8, 3, 32, 32))
    top = max(s.flops for s in net.subnets())
    net.set_accuracies({s.id: round(0.5 + 0.4 * s.flops / top, 4) for s in net.subnets()})
    return net


@pytest.fixture(scope="module")
def served_profile(served_model):
    """A quick profile of `served_model` on the CPU: the anchors and a few stitches, 2 repeats."""
    from elastic.serving import measure_latency

    ids = [0, 1, 2, 5, 10, 15, 20]
    return measure_latency(served_model, torch.zeros(3, 32, 32), (1, 2, 4, 8), "cpu", repeats=2, warmup=1, subnets=ids)


@pytest.fixture
def rt(served_model, served_profile):
    """A runtime serving `served_model` (batches of up to 8, 4096 queued), drained at the end."""
    from elastic.serving import Runtime

    runtime = Runtime(served_model, max_batch_size=8, max_queue=4096, profile=served_profile)
    yield runtime
    runtime.close(drain=True, timeout=60)
