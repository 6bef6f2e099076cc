"""Keep Python's garbage collector from stopping serving to scan the whole start-up heap.

A collection of the oldest generation walks every container object the process holds, and
while it runs no other thread moves: not the worker, not the threads that submit. A
process that imported torch and timm and loaded a model holds some 400,000 of them; one
such collection took about 180 ms on the development machine (2 cores), longer than most
latency budgets. Serving allocates fast enough to trigger one every so often: in the load
suite's real runs at aef6a87, 8 of the 70 demo runs at 0.25× load (2–5 s each) had one
225–245 ms stall, and the requests waiting then were shed or late. Freezing the heap once
the model and its executor are ready (`gc.freeze()`: everything alive moves to a permanent
generation the collector skips) makes later collections scan only what serving allocates;
vLLM's engine does the same at start-up (`freeze_gc_heap`). Cyclic garbage among the frozen
objects is never reclaimed, which for a start-up heap (modules, weights, imported code) is
the point, and for anything shorter-lived a leak: the runtime freezes before it builds its
own book-keeping (metrics, engines, scheduler, all full of reference cycles), so that a
closed runtime's is collected.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_gc_heap() -> float:
    """Collect what is garbage now, then freeze every object still alive (`gc.freeze`).

    Returns:
        seconds it took (the collection: the first one in a process walks the whole heap).
    """
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    elapsed = time.perf_counter() - start
    log.debug("froze %d objects out of the garbage collector's scans in %.3f s", gc.get_freeze_count(), elapsed)
    return elapsed
