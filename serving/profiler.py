"""Measure a `LatencyProfile`: every (subnet, batch size) timed on the serving device.

Follows the profiling step of Clockwork (OSDI'20) and SuperServe (NSDI'25): warm up, then
time each configuration many times, interleaved (round r visits the configurations in a
fresh shuffled order), so that drift of the machine — other processes, clock changes — is
spread over all configurations instead of landing on whichever ran last. On CUDA every
timed call is bracketed by `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import logging
import platform
import random
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import torch

from elastic.model import ElasticModel

from .executor import Executor
from .profile import LatencyProfile, fingerprint, quantile

log = logging.getLogger(__name__)


def device_name(device: str | torch.device) -> str:
    """A name for the hardware behind `device`: the GPU name or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def example_batch(example: torch.Tensor, batch: int) -> torch.Tensor:
    """`batch` copies of one sample.

    Shape:
        example: (C, H, W) or (1, C, H, W) -> (batch, C, H, W)
    """
    if example.dim() == 3:
        example = example.unsqueeze(0)
    return example[:1].expand(batch, *example.shape[1:]).contiguous()


@torch.inference_mode()
def measure_latency(
    model: ElasticModel,
    example: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 2, 4, 8),
    device: str | torch.device | None = None,
    repeats: int = 10,
    warmup: int = 2,
    subnets: Sequence[int] | None = None,
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = False,
) -> LatencyProfile:
    """Time every subnet at every batch size on the device the model's weights are on.

    The one latency timer of the project: the runtime profiles through it (on its worker
    thread, through its executor), and so do the demo and the benchmarks.

    Args:
        model: the elastic model, in eval mode, already on `device`.
        example: one input sample, (C, H, W) or (1, C, H, W); copied to make batches.
        batch_sizes: batch sizes to measure.
        device: where to run; defaults to the device of the model's first parameter.
        repeats: timed runs per (subnet, batch size); p99 of few runs is close to their max.
        warmup: untimed runs per (subnet, batch size) first.
        subnets: ids to measure (default: all).
        seed: seeds the per-round shuffle.
        executor: run the forwards through this executor (its `warmup` prepares each
            (subnet, batch size) first: compiles, captures); default: the model's own forward.
        progress: show a progress bar over the rounds.

    Returns:
        the profile, with `fingerprint` set to the model's subnet table.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    cuda = device.type == "cuda"
    ids = list(subnets) if subnets is not None else [s.id for s in model.subnets()]
    sizes = sorted({int(b) for b in batch_sizes})
    batches = {b: example_batch(example, b).to(device) for b in sizes}
    model.check_input(batches[sizes[0]])
    configs = [(sid, b) for sid in ids for b in sizes]

    forward = executor.run if executor is not None else (lambda sid, x: model(x, subnet=sid))

    def run(sid: int, b: int) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        forward(sid, batches[b])
        if cuda:
            torch.cuda.synchronize(device)
        return 1e3 * (time.perf_counter() - t0)

    t_start = time.perf_counter()
    if executor is not None:
        for sid, b in configs:
            executor.warmup(sid, b)
    for _ in range(warmup):
        for sid, b in configs:
            run(sid, b)
    samples: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    rng = random.Random(seed)
    rounds = range(repeats)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="profiling", unit="round")
    for _ in rounds:
        order = configs[:]
        rng.shuffle(order)
        for sid, b in order:
            samples[(sid, b)].append(run(sid, b))
    p50 = {sid: {b: quantile(samples[(sid, b)], 0.5) for b in sizes} for sid in ids}
    p99 = {sid: {b: quantile(samples[(sid, b)], 0.99) for b in sizes} for sid in ids}
    elapsed = time.perf_counter() - t_start
    log.info(
        "profiled %d subnets x %d batch sizes on %s in %.1f s",
        len(ids),
        len(sizes),
        device,
        elapsed,
    )
    return LatencyProfile(
        device=str(device),
        device_name=device_name(device),
        batch_sizes=tuple(sizes),
        p50_ms=p50,
        p99_ms=p99,
        fingerprint=fingerprint(model.subnets()),
        repeats=repeats,
        warmup=warmup,
        meta={
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "executor": executor.name if executor is not None else "model",
            "seconds": round(elapsed, 3),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
