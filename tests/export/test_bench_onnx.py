"""`elastic bench onnx`: which subnets it times (the timing itself is the benchmark's job)."""

from elastic.bench.onnx import choose_subnets
from elastic.subnet import pareto


def test_times_the_pareto_front_when_the_model_has_accuracies(fresh_small_model):
    front = pareto(fresh_small_model.subnets())
    assert set(choose_subnets(fresh_small_model, most=10)) == set(front)
    few = choose_subnets(fresh_small_model, most=2)
    flops = {s.id: s.flops for s in fresh_small_model.subnets()}
    assert len(few) == 2 and set(few) <= set(front)
    assert few == sorted(few, key=flops.get)


def test_without_accuracies_times_the_anchors_and_some_stitches(fresh_small_model):
    fresh_small_model.set_accuracies({s.id: None for s in fresh_small_model.subnets()})
    chosen = choose_subnets(fresh_small_model, most=4)
    kinds = {s.id: s.kind for s in fresh_small_model.subnets()}
    assert len(chosen) == 4 and {0, 1} <= set(chosen) and any(kinds[s] == "stitch" for s in chosen)
