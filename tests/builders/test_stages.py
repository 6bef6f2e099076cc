"""The staged forward's helpers (`elastic/builders/stages.py`)."""

import pytest
import torch

from elastic.builders.stages import flops_fractions, run_in_stages, then


def test_flops_fractions_are_the_share_done_after_each_block_but_the_last():
    assert flops_fractions(10, [20, 30, 40], 0) == pytest.approx((0.3, 0.6))
    assert flops_fractions(0, [5], 5) == ()


def test_run_in_stages_pauses_between_blocks_only():
    calls: list[str] = []

    def piece(name, add):
        def run(x):
            calls.append(name)
            return x + add

        return run

    stages = run_in_stages(
        torch.zeros(1), piece("stem", 1), [piece("a", 2), then(piece("b", 3), piece("s", 4))], piece("head", 5)
    )
    next(stages)
    assert calls == ["stem", "a"]  # paused after the first block, before the second
    with pytest.raises(StopIteration) as stop:
        next(stages)
    assert calls == ["stem", "a", "b", "s", "head"] and stop.value.value.item() == 15
