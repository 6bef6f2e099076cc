"""The compiled front search and busy-period charge (serving/_front_search.c) against their
Python reference (serving/front_search.py, `Demand.charge_curve`): the same numbers bit for
bit, and so the same decisions."""

import bisect
import math
import os
import random

import pytest

from elastic.bench.scheduler import synthetic
from elastic.errors import BudgetInfeasible, Overloaded
from elastic.serving import BudgetScheduler, Request, front_search
from elastic.serving.cost_table import concave_hull
from elastic.serving.demand import Demand
from elastic.serving.front_search import FrontQuery, pure_python

native = front_search.native
needs_native = pytest.mark.skipif(native is None, reason="elastic.serving._front_search not built")


def test_the_compiled_module_is_built():
    # `make test` installs the package, which compiles it; without it the scheduler still
    # works (in Python) but every test below would be skipped, so say so
    if os.environ.get("ELASTIC_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("ELASTIC_PURE_PYTHON is set")
    assert native is not None, "elastic.serving._front_search is not built: pip install -e . with a C compiler"


def random_fronts(rng: random.Random, sizes: int = 8, length: int = 40):
    """(lat, ids, acc, hull, pos) per batch size, as `CostTable._build_fronts` lays them out."""
    lat, ids, acc, hull, pos = [[]], [[]], [[]], [[]], [{}]
    for _ in range(sizes):
        n = rng.randint(0, length)
        xs = sorted(rng.choice([rng.uniform(0.1, 50.0), float(rng.randint(1, 20))]) for _ in range(n))
        lat.append(xs)
        ids.append(rng.sample(range(1000), n))
        acc.append(sorted(rng.uniform(0.0, 1.0) for _ in range(n)))
        hull.append(concave_hull(lat[-1], acc[-1]))
        pos.append({sid: k for k, sid in enumerate(ids[-1])})
    return lat, ids, acc, hull, pos


def random_query_args(rng: random.Random) -> tuple:
    shared = rng.choice([1.0, rng.uniform(0.3, 3.0)])
    tail = rng.choice([1.0, rng.uniform(1.0, 2.0)])
    per_batch, per_request = rng.choice([(0.0, 0.0), (rng.uniform(0, 1), rng.uniform(0, 0.2))])
    return (*random_fronts(rng), shared, tail, per_batch, per_request, rng.random() < 0.9)


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_best_within_is_the_python_search_bit_for_bit(seed):
    rng = random.Random(seed)
    for _ in range(60):
        args = random_query_args(rng)
        lat, ids, acc, _, _, shared, tail, per_batch, per_request, _ = args
        py, c = FrontQuery(*args), native.FrontQuery(*args)
        for _ in range(80):
            b = rng.randint(1, len(lat) - 1)
            expected = rng.random() < 0.3
            if lat[b] and rng.random() < 0.6:  # a window exactly at a product: the boundary cases
                j = rng.randrange(len(lat[b]))
                over = per_batch + per_request * b
                max_ms = lat[b][j] * shared * (1.0 if expected else tail) + over
                max_ms = rng.choice([max_ms, math.nextafter(max_ms, math.inf), math.nextafter(max_ms, -math.inf)])
            else:
                max_ms = rng.choice([rng.uniform(-5.0, 120.0), math.inf, -math.inf, 0.0])
            floor = rng.choice([-math.inf, rng.uniform(0.0, 1.0), *(acc[b][:1])])
            want = py.best_within(b, floor, max_ms, expected)
            assert c.best_within(b, floor, max_ms, expected) == want
            assert c.best_within(b, floor, max_ms, expected=expected) == want
            if want is not None:
                assert type(want[1]) is float and want[0] in ids[b]


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_best_priced_is_the_python_search_bit_for_bit(seed):
    rng = random.Random(seed)
    demand = loaded_demand(rng)
    for _ in range(60):
        args = random_query_args(rng)
        py, c = FrontQuery(*args), native.FrontQuery(*args)
        ids = args[1]
        curve = demand.charge_curve(rng.uniform(0.1, 5.0), rng.uniform(0.0, 2.0))
        rest, fluid = rng.uniform(0.0, 30.0), rng.uniform(0.0, 30.0)
        for _ in range(40):
            b = rng.randint(1, len(ids) - 1)
            top = rng.choice([*ids[b], 5000]) if ids[b] else 5000  # 5000: off the front
            floor = rng.choice([-math.inf, rng.uniform(0.0, 1.0)])
            members, price = rng.randint(0, 8), rng.choice([0.0, -1.0, rng.uniform(0.01, 2.0), 0.9])
            charge = rng.choice([lambda ms, c=curve, r=rest, f=fluid: c(ms, r, f), lambda ms: 0.01 * ms * ms])
            known = None
            if top in args[4][b] and rng.random() < 0.5:  # the caller priced top already, as here
                ms = args[0][b][args[4][b][top]] * args[5] * args[6] + args[7] + args[8] * b
                known = (members * args[2][b][args[4][b][top]] - price * charge(ms), ms)
            want = py.best_priced(b, floor, top, members, price, charge, known)
            assert c.best_priced(b, floor, top, members, price, charge, known) == want
            if price <= 0 or top == 5000:
                assert want is None


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_the_queue_plan_is_the_python_plan_bit_for_bit(seed):
    # admission's plan (`QueuePlan._plan_late`): who misses when the queue is served in order,
    # each batch on the fastest subnet its floors allow, as large as its deadlines allow
    rng = random.Random(seed)
    plans = someone_late = 0
    for _ in range(40):
        args = random_query_args(rng)
        if not all(args[0][1:]):  # every batch size has a front (a scheduler's always does)
            continue
        py, c = FrontQuery(*args), native.FrontQuery(*args)
        max_batch = len(args[0]) - 1
        plans += 60
        for _ in range(60):
            n = rng.randint(0, 40)
            t = rng.uniform(0.0, 0.05)
            hard = sorted(rng.choice([math.inf, t + rng.uniform(0.0, 0.25)]) for _ in range(n))
            floors = rng.choice([None, [], [rng.choice([-math.inf, rng.uniform(0.0, 1.0)]) for _ in range(n)]])
            want = py.plan_late(hard, floors, t, max_batch)
            assert c.plan_late(hard, floors, t, max_batch) == want
            someone_late += bool(want)
            for size in range(1, max_batch + 1):
                floor = rng.choice([-math.inf, rng.uniform(0.0, 1.0)])
                assert c.service_ms(size, floor) == py.service_ms(size, floor)
    assert 0.05 * plans < someone_late < 0.95 * plans  # plans with and without misses


@needs_native
def test_the_compiled_query_refuses_what_python_refuses():
    lat, ids, acc, hull, pos = [[], [1.0, 2.0]], [[], [0, 1]], [[], [0.5, 0.6]], [[], [0, 1]], [{}, {0: 0, 1: 1}]
    c = native.FrontQuery(lat, ids, acc, hull, pos, 1.0, 1.0, 0.0, 0.0, True)
    py = FrontQuery(lat, ids, acc, hull, pos, 1.0, 1.0, 0.0, 0.0, True)
    with pytest.raises(IndexError):
        c.best_within(2, -math.inf, 5.0)
    assert c.best_within(-1, -math.inf, 5.0) == py.best_within(-1, -math.inf, 5.0)
    with pytest.raises(TypeError):
        c.best_within(1, -math.inf)
    with pytest.raises(TypeError):
        c.best_within(1, -math.inf, 5.0, speed=True)
    with pytest.raises(ZeroDivisionError):
        native.FrontQuery(lat, ids, acc, hull, pos, 0.0, 1.0, 0.0, 0.0, True).best_within(1, -math.inf, 5.0)
    with pytest.raises(TypeError):  # the fronts hold floats (`CostTable._build_fronts` makes them so)
        native.FrontQuery([[], [1, 2]], ids, acc, hull, pos, 1.0, 1.0, 0.0, 0.0, True).best_within(1, -math.inf, 5.0)
    with pytest.raises(ValueError):
        native.FrontQuery([[], [1.0]], ids, acc, hull, pos, 1.0, 1.0, 0.0, 0.0, True)
    with pytest.raises(ZeroDivisionError):  # what the charge raises, the search raises
        c.best_priced(1, -math.inf, 1, 2, 1.0, lambda ms: 1 / 0)
    with pytest.raises(TypeError):
        c.best_priced(1, -math.inf, 1, 2, 1.0)
    # lists changed after the query was built (the scheduler never does): errors, never a read
    # out of bounds
    acc[1].pop()
    ids[1].pop()
    hull[1].append(7)
    with pytest.raises(IndexError):
        c.best_within(1, 0.1, 5.0)
    with pytest.raises(IndexError):
        c.best_within(1, -math.inf, 5.0)
    with pytest.raises(IndexError):
        c.best_priced(1, -math.inf, 1, 2, 1.0, lambda ms: ms)


def loaded_demand(rng: random.Random) -> Demand:
    demand = Demand()
    now = 0.0
    for _ in range(rng.randint(6, 300)):
        now += rng.expovariate(500.0)
        budget = rng.choice([math.inf, rng.uniform(0.5, 40.0), float(rng.randint(1, 30))])
        demand.record(now, budget, busy=rng.random() < 0.8)
        if rng.random() < 0.4:
            demand.busy_ended(rng.uniform(0.5, 10.0))
    return demand


@needs_native
@pytest.mark.parametrize("seed", range(4))
def test_the_charge_curve_is_the_python_curve_bit_for_bit(seed):
    rng = random.Random(seed)
    for _ in range(40):
        demand = loaded_demand(rng)
        service_ms = rng.choice([rng.uniform(0.1, 20.0), *[x for x in list(demand._budgets)[:2] if x < math.inf]])
        weight = rng.choice([0.0, rng.uniform(0.0, 3.0)])
        with pure_python():
            py = demand.charge_curve(service_ms, weight)
        c = demand.charge_curve(service_ms, weight)
        if demand._bound(service_ms) is None:
            assert c is py  # no rate yet: no charge, in either
            continue
        assert isinstance(c, native.ChargeCurve)
        budgets = [x for x in demand._sorted if x < math.inf] or [1.0]
        for _ in range(200):
            if rng.random() < 0.3:  # a busy period ending exactly at a budget: the boundary cases
                ms = rng.choice(budgets) - service_ms - rng.choice([0.0, 1.0])
                rest, fluid = rng.choice([0.0, 1.0]), rng.uniform(0.0, 5.0)
            else:
                ms, rest, fluid = rng.uniform(-2.0, 30.0), rng.uniform(-5.0, 60.0), rng.uniform(-5.0, 60.0)
            assert c(ms, rest, fluid) == py(ms, rest, fluid)
    with pytest.raises(TypeError):
        c(1.0, 2.0)


def run_scheduler(seed: int, depth: int) -> list:
    """Every output of a scheduler under load with moving predictions: requests with floors,
    best-effort ones, rejections, shedding, batches."""
    rng = random.Random(seed)
    subnets, profile = synthetic(40)
    s = BudgetScheduler(subnets, profile, "elastic", max_batch_size=8, max_queue=200)
    trace, now, running = [], 0.0, None
    for k in range(600):
        r = Request(
            k,
            now,
            rng.uniform(5.0, 300.0),
            min_accuracy=rng.choice([None, None, None, 0.6, 0.8]),
            best_effort=rng.random() < 0.1,
        )
        try:
            trace.append(("shed", [x.request_id for x in s.add_request(r, now)]))
        except (BudgetInfeasible, Overloaded) as e:
            trace.append(("refused", type(e).__name__))
        if s.get_num_waiting() >= depth or rng.random() < 0.2:
            if running is not None:
                ms = profile.latency_ms(running.subnet, running.size, "p50") * rng.uniform(0.7, 1.6)
                trace.append(("ratio", s.update_from_output(running, ms, now)))
                s.observe_overhead(running.size, rng.uniform(0.0, 0.4))
                running = None
            out = s.schedule(now)
            batch = out.batch and (out.batch.subnet, out.batch.request_ids)
            trace.append(("step", [x.request_id for x in out.shed], batch))
            running = out.batch
        now += rng.choice([0.0002, 0.0005, 0.002])
    return trace


@needs_native
@pytest.mark.parametrize("seed,depth", [(0, 8), (1, 8), (2, 40)])
def test_a_scheduler_decides_the_same_with_and_without_the_compiled_module(seed, depth):
    compiled = run_scheduler(seed, depth)
    with pure_python():
        reference = run_scheduler(seed, depth)
    assert compiled == reference
    assert sum(1 for t in compiled if t[0] == "step" and t[2]) > 50  # batches ran
    assert len({t[2][0] for t in compiled if t[0] == "step" and t[2]}) > 2  # on several subnets


def test_best_within_bisects_like_bisect():
    # the reference itself: the most accurate subnet within the window is the last point of the
    # front whose planned ms fits, found by `bisect` and settled on the exact products
    lat, ids, acc = [[], [1.0, 2.0, 3.0]], [[], [7, 8, 9]], [[], [0.1, 0.2, 0.3]]
    q = FrontQuery(lat, ids, acc, [[], [0, 2]], [{}, {7: 0, 8: 1, 9: 2}], 1.5, 1.0, 0.25, 0.0, True)
    for max_ms in (0.0, 1.75, 1.7499, 3.25, 4.75, 100.0):
        j = bisect.bisect_right([x * 1.5 + 0.25 for x in lat[1]], max_ms) - 1
        assert q.best_within(1, -math.inf, max_ms) == ((ids[1][j], lat[1][j] * 1.5 + 0.25) if j >= 0 else None)
    assert q.best_within(1, 0.25, 100.0) == (9, 4.75)
    assert q.best_within(1, 0.35, 100.0) is None
