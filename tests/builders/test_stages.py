"""The staged forward's helpers (`elastic/builders/stages.py`)."""

import pytest
import torch

from elastic.builders.stages import flops_fractions, in_stages, run_in_stages, then


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

    pieces = in_stages(piece("stem", 1), [piece("a", 2), then(piece("b", 3), piece("s", 4))], piece("head", 5))
    assert len(pieces) == 2  # the stem runs with the first block, the head with the last
    stages = run_in_stages(torch.zeros(1), pieces)
    next(stages)
    assert calls == ["stem", "a"]  # paused after the first block, before the second
    with pytest.raises(StopIteration) as stop:
        next(stages)
    assert calls == ["stem", "a", "b", "s", "head"] and stop.value.value.item() == 15


@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_in_stages_gives_one_function_per_block_that_compose_to_the_forward(blocks):
    calls: list[str] = []

    def piece(name, scale):
        def run(x):
            calls.append(name)
            return x * scale + 1

        return run

    block_pieces = [piece(f"b{k}", k + 2) for k in range(blocks)]
    stages = in_stages(piece("stem", 3), block_pieces, piece("head", 5))
    assert len(stages) == max(1, blocks)
    x = torch.ones(1)
    for stage in stages:
        x = stage(x)
    expected = torch.ones(1) * 3 + 1
    for k in range(blocks):
        expected = expected * (k + 2) + 1
    assert x.item() == (expected * 5 + 1).item()
    assert calls == ["stem", *(f"b{k}" for k in range(blocks)), "head"]
