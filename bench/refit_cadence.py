"""What the latency model's refit cadence costs a request: `Runtime(refit_ms=...)` A/B.

Part of `elastic bench overhead`. The same model, subnet and input as its batch-1 rows, one
runtime per `refit_ms` setting, all open at once; blocks of `per_block` rounds go to one
runtime at a time, the settings' order rotating from block to block, so each runtime sees
the cadence it would serve at (its refits are timed by the wall clock) and the machine's
drift is spread over the settings. Each round is one `infer` and one direct forward of the
same input; the row reports the median of (infer − direct) over the rounds with its 95 %
interval (`median_interval`), as the batch-1 rows do.

It backs the choice of `refit.REFIT_MS` (serving/refit.py): a fold and the rebuild of the
cached predictions it invalidates run on caches a forward has just evicted, so folding less
often takes time off every request.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from elastic.serving import Runtime
from elastic.serving.refit import REFIT_MS

from .stats import median_interval

SETTINGS = (0.0, 5.0, REFIT_MS)  # ms: after every batch, the previous default, the default
WARMUP = 20  # rounds per runtime before the timed blocks
SKIP = 5  # rounds at the start of each block left out (the switch between runtimes)


@torch.inference_mode()
def refit_cadence(model, subnet: int, profile, blocks: int = 8, per_block: int = 200) -> list[dict]:
    """One row per `refit_ms` setting: µs the runtime adds to a batch-1 request (median of
    the rounds' infer − direct, with its 95 % interval)."""
    x = torch.randn(1, *model.input_size())
    settings = tuple(dict.fromkeys(SETTINGS))  # REFIT_MS may equal one of the others
    added: dict[float, list[float]] = {ms: [] for ms in settings}
    clock = time.perf_counter
    with contextlib.ExitStack() as stack:
        runtimes = {
            ms: stack.enter_context(
                Runtime(model, max_batch_size=8, policy=f"static:{subnet}", profile=profile, refit_ms=ms)
            )
            for ms in settings
        }
        for rt in runtimes.values():
            for _ in range(WARMUP):
                rt.infer(x, math.inf)
                model(x, subnet=subnet)
        for b in range(blocks):
            order = settings[b % len(settings) :] + settings[: b % len(settings)]
            for ms in order:
                rt, out = runtimes[ms], added[ms]
                for i in range(per_block):
                    t0 = clock()
                    rt.infer(x, math.inf)
                    t1 = clock()
                    model(x, subnet=subnet)
                    t2 = clock()
                    if i >= SKIP:
                        out.append(1e6 * ((t1 - t0) - (t2 - t1)))
    rows = []
    for ms in settings:
        median, lo, hi = median_interval(added[ms])
        rows.append(
            {
                "refit_ms": ms,
                "default": ms == REFIT_MS,
                "subnet": subnet,
                "added_us_per_request": median,
                "added_us_ci95": [lo, hi],
                "rounds": len(added[ms]),
            }
        )
    return rows
