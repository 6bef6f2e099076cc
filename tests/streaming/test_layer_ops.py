"""The transformer step's cached parameter tuple never goes stale, the step is differentiable with grad on,
and importing the package installs no process-wide hook."""

from __future__ import annotations

import subprocess
import sys

import torch
from stepping import assert_steps_match_forward
from torch import nn

import elastic.streaming as es


def _encoder(layers: int) -> es.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return es.convert(nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), window=4).eval()


def test_weights_changed_in_place_or_moved_are_picked_up():
    for layers in (1, 2, 3):
        co = _encoder(layers)
        x = torch.randn(2, 16, 7)
        assert_steps_match_forward(co, x)  # fills the cached parameter tuples
        fresh = _encoder(layers)
        with torch.no_grad():
            for p in fresh.parameters():
                p.mul_(1.5).add_(0.1)
        co.load_state_dict(fresh.state_dict())  # in place: same storage, new version
        assert_steps_match_forward(co, x)
        co.to(torch.float64)  # new storage
        assert_steps_match_forward(co, x.double())


def test_step_with_grad_reaches_the_weights():
    co = _encoder(2)
    state = co.init_state(1, (16,))
    y = None
    for _ in range(4):
        y, state = co.step(torch.randn(1, 16), state)
    y.sum().backward()
    assert all(p.grad is not None for p in co.parameters())


def test_a_parameter_assigned_anew_is_picked_up():
    co = _encoder(1)
    x = torch.randn(1, 16, 6)
    assert_steps_match_forward(co, x)
    layer = co.first.layer
    layer.linear1.weight = nn.Parameter(torch.randn_like(layer.linear1.weight))
    layer.self_attn.out_proj.bias = nn.Parameter(torch.randn_like(layer.self_attn.out_proj.bias))
    assert_steps_match_forward(co, x)
    layer.linear2 = nn.Linear(32, 16)  # a submodule replaced whole
    layer.norm1 = nn.LayerNorm(16, eps=1e-3)
    assert_steps_match_forward(co, x)


def test_importing_the_package_registers_no_global_module_hook():
    code = (
        "import torch.nn.modules.module as m\n"
        "import elastic.streaming\n"
        "hooks = [m._global_parameter_registration_hooks, m._global_module_registration_hooks,"
        " m._global_buffer_registration_hooks, m._global_forward_hooks, m._global_forward_pre_hooks]\n"
        "assert not any(hooks), hooks\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flop_counter_counts_the_fused_feed_forward():
    """Under inference linear1 + ReLU is one `_addmm_activation`; torch's FLOP counter must still count it."""
    from torch.utils.flop_counter import FlopCounterMode

    co = _encoder(1)
    x = torch.randn(1, 16)

    def count(grad: bool) -> int:
        counter = FlopCounterMode(display=False)
        with torch.set_grad_enabled(grad), counter:
            co.step(x, co.init_state(1, (16,)))
        return counter.get_total_flops()

    assert count(grad=False) == count(grad=True) > 2 * 16 * 32 * 2  # both feed-forward products at least
