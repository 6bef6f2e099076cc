"""Per-subnet latency on this machine, measured interleaved (the demo's latency axis).

SN-Net (Pan et al., CVPR 2023) plots accuracy against FLOPs and against measured throughput;
FLOPs do not tell a CPU's real cost of many small matmuls, so the demo times every subnet
at a few batch sizes. Timings here swing a lot between runs (other processes, frequency
changes): each round times every subnet once, in an order that rotates between rounds, so
drift spreads evenly over the subnets, and the median over rounds is kept.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from elastic.model import ElasticModel

log = logging.getLogger(__name__)


@torch.inference_mode()
def measure_latency(
    model: ElasticModel,
    batch_sizes: Sequence[int] = (1, 8),
    repeats: int = 15,
    warmup: int = 2,
    subnets: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[int, dict[int, float]]:
    """Median milliseconds per forward of each subnet at each batch size.

    Args:
        model: the elastic model, on the device to time (CPU here).
        batch_sizes: batch sizes to time.
        repeats: timed rounds; each times every (subnet, batch size) once.
        warmup: untimed rounds first.
        subnets: ids to time; default all.
        progress: tqdm bar over rounds.

    Returns:
        {subnet id: {batch size: median ms}}.
    """
    was_training = model.training
    model.eval()
    ids = list(subnets) if subnets is not None else [s.id for s in model.subnets()]
    param = next(model.parameters())
    inputs = {b: torch.randn(b, *model.input_size(), device=param.device, dtype=param.dtype) for b in batch_sizes}
    jobs = [(sid, b) for sid in ids for b in batch_sizes]
    samples: dict[tuple[int, int], list[float]] = {job: [] for job in jobs}
    sync = torch.cuda.synchronize if param.device.type == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            for sid, b in jobs:
                model(inputs[b], sid)
        for r in tqdm(range(repeats), desc="latency", unit="round", disable=not progress, leave=False):
            shift = (r * 7) % len(jobs)  # rotate the order each round
            for sid, b in jobs[shift:] + jobs[:shift]:
                sync()
                t0 = time.perf_counter()
                model(inputs[b], sid)
                sync()
                samples[(sid, b)].append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    result = {sid: {b: 1e3 * statistics.median(samples[(sid, b)]) for b in batch_sizes} for sid in ids}
    log.info("timed %d subnets at batch sizes %s, %d rounds", len(ids), list(batch_sizes), repeats)
    return result
