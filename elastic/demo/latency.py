"""The demo's latency axis: median ms per subnet and batch size, from the one project timer.

SN-Net (Pan et al., CVPR 2023) plots accuracy against FLOPs and against measured throughput.
The timing itself is `elastic.serving.profiler.measure_latency` (warm-up, interleaved rounds
in a shuffled order, p50/p99); this module only turns its profile into the demo report's
{subnet id: {batch size: median ms}} table. Kept under its old name, `measure_latency`,
until elastic/demo/sorted.py and learngene.py call `latency_table` directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from elastic.model import ElasticModel


def latency_table(
    model: ElasticModel,
    batch_sizes: Sequence[int] = (1, 8),
    repeats: int = 15,
    warmup: int = 2,
    subnets: Sequence[int] | None = None,
    progress: bool = False,
    seed: int = 0,
) -> dict[int, dict[int, float]]:
    """Median milliseconds per forward of each subnet at each batch size.

    Args:
        model: the elastic model, on the device to time (CPU here).
        batch_sizes, repeats, warmup, subnets, progress, seed: as
            `elastic.serving.profiler.measure_latency`.

    Returns:
        {subnet id: {batch size: median ms}}.
    """
    from elastic.serving.profiler import measure_latency as profile_latency

    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        example = torch.randn(*model.input_size(), generator=torch.Generator().manual_seed(seed), dtype=param.dtype).to(
            param.device
        )
        profile = profile_latency(
            model,
            example,
            batch_sizes=batch_sizes,
            repeats=repeats,
            warmup=warmup,
            subnets=subnets,
            seed=seed,
            progress=progress,
        )
    finally:
        model.train(was_training)
    return {sid: dict(row) for sid, row in profile.p50_ms.items()}


measure_latency = latency_table  # the old name (sorted.py, learngene.py); not a second timer
