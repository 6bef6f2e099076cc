"""The runtime freezes the start-up heap out of the garbage collector's scans (`gc_heap.py`)."""

import gc
import math
import weakref

import torch

from elastic.serving import Runtime
from elastic.serving.gc_heap import freeze_gc_heap


def test_freezing_moves_live_objects_out_of_the_scanned_generations():
    gc.unfreeze()
    try:
        kept = [[] for _ in range(1000)]  # container objects the collector tracks
        assert gc.get_freeze_count() == 0
        freeze_gc_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_count()[1:] == (0, 0)  # the older generations it scans are empty
    finally:
        gc.unfreeze()


def test_runtime_freezes_the_heap_unless_told_not_to(served_model, served_profile):
    x = torch.zeros(3, 32, 32)
    gc.unfreeze()
    try:
        with Runtime(served_model, profile=served_profile, freeze_gc=False) as rt:
            assert gc.get_freeze_count() == 0
            rt.infer(x, math.inf)
        with Runtime(served_model, profile=served_profile) as rt:
            assert gc.get_freeze_count() > 0
            assert rt.infer(x, math.inf).output.shape == (served_model.family[0].num_classes(),)
    finally:
        gc.unfreeze()


def test_a_closed_runtime_is_collected_though_it_froze_the_heap(served_model, served_profile):
    """The heap is frozen before the runtime builds its book-keeping: frozen, the reference
    cycles of its metrics and scheduler would never be collected, and each runtime a process
    built and closed would stay in memory."""
    gc.unfreeze()
    try:
        rt = Runtime(served_model, profile=served_profile)
        assert gc.get_freeze_count() > 0
        rt.infer(torch.zeros(3, 32, 32), math.inf)
        rt.close()
        parts = [weakref.ref(p) for p in (rt, rt._engine, rt.scheduler, rt.metrics, rt.metrics.registry)]
        del rt
        gc.collect()
        assert [p() for p in parts] == [None] * len(parts)
    finally:
        gc.unfreeze()
