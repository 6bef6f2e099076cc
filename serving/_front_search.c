/* elastic.serving._front_search: the inner calls of the elastic policy's decision and admission's
 * queue plan, compiled.
 *
 * One decision (serving/fronts_decision.py) asks a scheduler's fronts "the most accurate subnet
 * within t ms" some ten times and prices a batch's busy period a dozen times, and every admission
 * plans the queue (serving/queue_plan.py); in Python each call costs as much as the rest of its
 * loop. These are the same functions, bit for bit:
 *
 *   FrontQuery.best_within   = serving/front_search.py `FrontQuery.best_within`
 *   FrontQuery.best_priced   = serving/front_search.py `FrontQuery.best_priced`
 *   FrontQuery.plan_late     = serving/front_search.py `FrontQuery.plan_late` (admission's queue plan)
 *   ChargeCurve.__call__     = serving/demand.py `Demand.charge_curve`'s `charge`
 *
 * Every float operation is the Python one in the Python order (IEEE doubles, no contraction:
 * built with -ffp-contract=off), and every binary search is `bisect`'s, comparison for comparison,
 * so a decision is the same with or without this module (tests/serving/test_front_search.py checks
 * it on random fronts and curves). The lists are read in place (never copied): they hold floats
 * (`CostTable._build_fronts` and `Demand.record` make them so); anything else is a TypeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>

/* IndexError unless 0 <= i < len(list): every read is checked, so a list changed since a query was
 * built (the scheduler never does) gives an error, not a read out of bounds */
static inline int
in_range(PyObject *list, Py_ssize_t i)
{
    if (i < 0 || i >= PyList_GET_SIZE(list)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    return 0;
}

/* list[i] as a double; the list holds exact floats (else TypeError) */
static inline int
item(PyObject *list, Py_ssize_t i, double *out)
{
    if (in_range(list, i) < 0)
        return -1;
    PyObject *v = PyList_GET_ITEM(list, i);
    if (!PyFloat_CheckExact(v)) {
        PyErr_Format(PyExc_TypeError, "expected a float at index %zd, got %.100s", i, Py_TYPE(v)->tp_name);
        return -1;
    }
    *out = PyFloat_AS_DOUBLE(v);
    return 0;
}

/* bisect.bisect_right(list, x): the first index whose item is > x (`x < a[mid]`) */
static Py_ssize_t
bisect_right(PyObject *list, double x)
{
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(list);
    while (lo < hi) {
        Py_ssize_t mid = ((size_t)lo + hi) / 2;
        double a;
        if (item(list, mid, &a) < 0)
            return -1;
        if (x < a)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* bisect.bisect_left(list, x, lo): the first index from lo whose item is >= x (`a[mid] < x`) */
static Py_ssize_t
bisect_left(PyObject *list, double x, Py_ssize_t lo)
{
    Py_ssize_t hi = PyList_GET_SIZE(list);
    while (lo < hi) {
        Py_ssize_t mid = ((size_t)lo + hi) / 2;
        double a;
        if (item(list, mid, &a) < 0)
            return -1;
        if (a < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int
as_double(PyObject *o, double *out)
{
    *out = PyFloat_AsDouble(o);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int
check_lists(PyObject *lists, const char *name)
{
    if (!PyList_Check(lists)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of lists", name);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(lists); i++) {
        if (!PyList_Check(PyList_GET_ITEM(lists, i))) {
            PyErr_Format(PyExc_TypeError, "%s must be a list of lists", name);
            return -1;
        }
    }
    return 0;
}

/* ---- FrontQuery ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *lat, *ids, *acc; /* tuples, per batch size: uncorrected latencies, subnet ids, accuracies */
    PyObject *hull, *pos;      /* tuples, per batch size: the upper concave hull's indices, id -> index */
    double shared, tail, per_batch, per_request;
    int accuracy_known;
} FrontQuery;

static void
fq_dealloc(FrontQuery *self)
{
    Py_XDECREF(self->lat);
    Py_XDECREF(self->ids);
    Py_XDECREF(self->acc);
    Py_XDECREF(self->hull);
    Py_XDECREF(self->pos);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
fq_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lat", "ids", "acc", "hull", "pos", "shared", "tail", "per_batch", "per_request",
                             "accuracy_known", NULL};
    PyObject *lat, *ids, *acc, *hull, *pos;
    double shared, tail, per_batch, per_request;
    int known;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO!ddddp", kwlist, &lat, &ids, &acc, &hull, &PyList_Type, &pos,
                                     &shared, &tail, &per_batch, &per_request, &known))
        return NULL;
    if (check_lists(lat, "lat") < 0 || check_lists(ids, "ids") < 0 || check_lists(acc, "acc") < 0 ||
        check_lists(hull, "hull") < 0)
        return NULL;
    Py_ssize_t sizes = PyList_GET_SIZE(lat);
    if (PyList_GET_SIZE(ids) != sizes || PyList_GET_SIZE(acc) != sizes || PyList_GET_SIZE(hull) != sizes ||
        PyList_GET_SIZE(pos) != sizes) {
        PyErr_SetString(PyExc_ValueError, "lat, ids, acc, hull and pos must have one entry per batch size each");
        return NULL;
    }
    for (Py_ssize_t b = 0; b < sizes; b++) {
        if (!PyDict_Check(PyList_GET_ITEM(pos, b))) {
            PyErr_SetString(PyExc_TypeError, "pos must be a list of dicts");
            return NULL;
        }
    }
    for (Py_ssize_t b = 0; b < PyList_GET_SIZE(lat); b++) {
        Py_ssize_t n = PyList_GET_SIZE(PyList_GET_ITEM(lat, b));
        if (PyList_GET_SIZE(PyList_GET_ITEM(ids, b)) != n || PyList_GET_SIZE(PyList_GET_ITEM(acc, b)) != n) {
            PyErr_Format(PyExc_ValueError, "front %zd: lat, ids and acc differ in length", b);
            return NULL;
        }
    }
    FrontQuery *self = (FrontQuery *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* the per-size entries, fixed in tuples: each front's own list is read with its length checked */
    self->lat = PyList_AsTuple(lat);
    self->ids = PyList_AsTuple(ids);
    self->acc = PyList_AsTuple(acc);
    self->hull = PyList_AsTuple(hull);
    self->pos = PyList_AsTuple(pos);
    if (!self->lat || !self->ids || !self->acc || !self->hull || !self->pos) {
        Py_DECREF(self);
        return NULL;
    }
    self->shared = shared;
    self->tail = tail;
    self->per_batch = per_batch;
    self->per_request = per_request;
    self->accuracy_known = known;
    return (PyObject *)self;
}

/* (ids[j], ms): what a search returns */
static PyObject *
found(PyObject *ids, Py_ssize_t j, double ms)
{
    if (in_range(ids, j) < 0)
        return NULL;
    PyObject *service = PyFloat_FromDouble(ms);
    if (service == NULL)
        return NULL;
    PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(ids, j), service);
    Py_DECREF(service);
    return pair;
}

/* best_within(batch, floor, max_ms, expected=False) -> (id, service ms) | None */
static PyObject *
fq_best_within(FrontQuery *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *expected_obj = NULL;
    if (nargs + nkw > 4 || nargs < 3) {
        PyErr_SetString(PyExc_TypeError, "best_within(batch, floor, max_ms, expected=False)");
        return NULL;
    }
    if (nargs == 4)
        expected_obj = args[3];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        if (nargs == 4 || !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, k)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, k), "expected") != 0) {
            PyErr_SetString(PyExc_TypeError, "best_within(batch, floor, max_ms, expected=False)");
            return NULL;
        }
        expected_obj = args[nargs + k];
    }
    Py_ssize_t batch = PyNumber_AsSsize_t(args[0], PyExc_IndexError);
    if (batch == -1 && PyErr_Occurred())
        return NULL;
    double floor, max_ms;
    if (as_double(args[1], &floor) < 0 || as_double(args[2], &max_ms) < 0)
        return NULL;
    int expected = 0;
    if (expected_obj != NULL && (expected = PyObject_IsTrue(expected_obj)) < 0)
        return NULL;

    Py_ssize_t sizes = PyTuple_GET_SIZE(self->lat);
    Py_ssize_t index = batch < 0 ? batch + sizes : batch; /* Python's indexing of the fronts */
    if (index < 0 || index >= sizes) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return NULL;
    }
    PyObject *lat = PyTuple_GET_ITEM(self->lat, index);
    double shared = self->shared, tail = self->tail;
    double bound = expected ? 1.0 : tail;
    double over = self->per_batch + self->per_request * (double)batch;
    double limit = max_ms - over;
    double scale = shared * bound;
    if (scale == 0.0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        return NULL;
    }
    Py_ssize_t j = bisect_right(lat, limit / scale);
    if (j < 0)
        return NULL;
    j -= 1;
    double a, ms = 0.0;
    if (j >= 0) {
        if (item(lat, j, &a) < 0)
            return NULL;
        ms = a * shared * bound;
    }
    while (j >= 0 && ms > limit) { /* the bisect may be one rounding off: settle on the exact products */
        j -= 1;
        if (j >= 0) {
            if (item(lat, j, &a) < 0)
                return NULL;
            ms = a * shared * bound;
        }
    }
    Py_ssize_t n = PyList_GET_SIZE(lat);
    while (j + 1 < n) {
        if (item(lat, j + 1, &a) < 0)
            return NULL;
        double after = a * shared * bound;
        if (after > limit)
            break;
        j += 1;
        ms = after;
    }
    if (j < 0)
        Py_RETURN_NONE;
    if (floor > -INFINITY) {
        double acc;
        if (!self->accuracy_known)
            Py_RETURN_NONE;
        if (item(PyTuple_GET_ITEM(self->acc, index), j, &acc) < 0)
            return NULL;
        if (acc < floor)
            Py_RETURN_NONE;
    }
    if (!(bound == tail)) {
        if (item(lat, j, &a) < 0)
            return NULL;
        ms = a * shared * tail;
    }
    return found(PyTuple_GET_ITEM(self->ids, index), j, ms + over);
}

/* hull[i] as an index (the hull holds ints) */
static int
index_item(PyObject *list, Py_ssize_t i, Py_ssize_t *out)
{
    if (in_range(list, i) < 0)
        return -1;
    *out = PyLong_AsSsize_t(PyList_GET_ITEM(list, i));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* bisect over a list of ints: bisect_right (`x < a[mid]`) when `right`, else bisect_left (`a[mid] < x`) */
static Py_ssize_t
bisect_index(PyObject *list, Py_ssize_t x, int right)
{
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(list);
    while (lo < hi) {
        Py_ssize_t mid = ((size_t)lo + hi) / 2, a;
        if (index_item(list, mid, &a) < 0)
            return -1;
        if (right ? x < a : !(a < x))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

#define MEMO 160 /* a priced search evaluates at most ~2 log2(front) + 3 points */

typedef struct {
    Py_ssize_t n, j[MEMO];
    double value[MEMO], ms[MEMO];
    PyObject *lat, *acc, *charge;
    double shared, tail, over, members, price;
} Priced;

/* (members × acc[j] − price × charge(ms), ms) with ms = lat[j] × shared × tail + over, memoised */
static int
priced_value(Priced *p, Py_ssize_t j, double *value, double *ms)
{
    for (Py_ssize_t k = 0; k < p->n; k++) {
        if (p->j[k] == j) {
            *value = p->value[k];
            *ms = p->ms[k];
            return 0;
        }
    }
    double lat, acc;
    if (item(p->lat, j, &lat) < 0 || item(p->acc, j, &acc) < 0)
        return -1;
    *ms = lat * p->shared * p->tail + p->over;
    PyObject *arg = PyFloat_FromDouble(*ms);
    if (arg == NULL)
        return -1;
    PyObject *res = PyObject_CallOneArg(p->charge, arg);
    Py_DECREF(arg);
    if (res == NULL)
        return -1;
    double charge = PyFloat_AsDouble(res);
    Py_DECREF(res);
    if (charge == -1.0 && PyErr_Occurred())
        return -1;
    *value = p->members * acc - p->price * charge;
    if (p->n < MEMO) {
        p->j[p->n] = j;
        p->value[p->n] = *value;
        p->ms[p->n] = *ms;
        p->n++;
    }
    return 0;
}

/* best_priced(batch, floor, top, members, price, charge, known=None) -> (id, service ms) | None */
static PyObject *
fq_best_priced(FrontQuery *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 6 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError, "best_priced(batch, floor, top, members, price, charge, known=None)");
        return NULL;
    }
    Py_ssize_t batch = PyNumber_AsSsize_t(args[0], PyExc_IndexError);
    if (batch == -1 && PyErr_Occurred())
        return NULL;
    double floor, price;
    if (as_double(args[1], &floor) < 0 || as_double(args[4], &price) < 0)
        return NULL;
    PyObject *top = args[2];
    Py_ssize_t members = PyLong_AsSsize_t(args[3]);
    if (members == -1 && PyErr_Occurred())
        return NULL;
    PyObject *known = nargs == 7 ? args[6] : Py_None;
    Py_ssize_t sizes = PyTuple_GET_SIZE(self->lat);
    Py_ssize_t index = batch < 0 ? batch + sizes : batch;
    if (index < 0 || index >= sizes) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return NULL;
    }
    if (price <= 0)
        Py_RETURN_NONE;
    PyObject *at = PyDict_GetItemWithError(PyTuple_GET_ITEM(self->pos, index), top);
    if (at == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE; /* top is not on the front */
    }
    Py_ssize_t j_top = PyLong_AsSsize_t(at);
    if (j_top == -1 && PyErr_Occurred())
        return NULL;
    PyObject *ids = PyTuple_GET_ITEM(self->ids, index), *hull = PyTuple_GET_ITEM(self->hull, index);
    Priced p = {
        .n = 0,
        .lat = PyTuple_GET_ITEM(self->lat, index),
        .acc = PyTuple_GET_ITEM(self->acc, index),
        .charge = args[5],
        .shared = self->shared,
        .tail = self->tail,
        .over = self->per_batch + self->per_request * (double)batch,
        .members = (double)members,
        .price = price,
    };
    Py_ssize_t n = PyList_GET_SIZE(p.lat);
    if (j_top < 0 || j_top >= n) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return NULL;
    }
    if (known != Py_None) {
        if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2) {
            PyErr_SetString(PyExc_TypeError, "known must be a (value, ms) tuple");
            return NULL;
        }
        if (as_double(PyTuple_GET_ITEM(known, 0), &p.value[0]) < 0 || as_double(PyTuple_GET_ITEM(known, 1), &p.ms[0]) < 0)
            return NULL;
        p.j[0] = j_top;
        p.n = 1;
    }
    double v, w, ms;
    Py_ssize_t first = 0;
    if (floor != -INFINITY) {
        first = bisect_left(p.acc, floor, 0);
        if (first < 0)
            return NULL;
    }
    if (members) {
        if (priced_value(&p, j_top, &v, &ms) < 0)
            return NULL;
        Py_ssize_t above = bisect_right(p.acc, v / p.members);
        if (above < 0)
            return NULL;
        if (above > first)
            first = above;
    }
    Py_ssize_t lo = bisect_index(hull, first, 0), hi = bisect_index(hull, j_top, 1);
    if (lo < 0 || hi < 0)
        return NULL;
    hi -= 1;
    while (lo < hi) { /* unimodal along the hull: find its peak */
        Py_ssize_t mid = (lo + hi) / 2, a, b;
        if (index_item(hull, mid + 1, &a) < 0 || index_item(hull, mid, &b) < 0)
            return NULL;
        if (priced_value(&p, a, &v, &ms) < 0 || priced_value(&p, b, &w, &ms) < 0)
            return NULL;
        if (v > w)
            lo = mid + 1;
        else
            hi = mid;
    }
    Py_ssize_t best = j_top;
    if (lo == hi) {
        Py_ssize_t a;
        if (index_item(hull, lo, &a) < 0)
            return NULL;
        if (priced_value(&p, a, &v, &ms) < 0 || priced_value(&p, j_top, &w, &ms) < 0)
            return NULL;
        if (v > w)
            best = a;
    }
    if (best < 0 || best >= PyList_GET_SIZE(ids)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return NULL;
    }
    if (priced_value(&p, best, &v, &ms) < 0)
        return NULL;
    return found(ids, best, ms);
}

/* a number from a caller's list (deadlines, floors): exact floats read directly, else converted */
static inline int
number(PyObject *list, Py_ssize_t i, double *out)
{
    if (in_range(list, i) < 0)
        return -1;
    PyObject *v = PyList_GET_ITEM(list, i);
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    return as_double(v, out);
}

/* service ms of `size` requests on the fastest subnet meeting `floor` (inf: none does) */
static int
service(FrontQuery *self, Py_ssize_t size, double floor, double *out)
{
    if (size < 0 || size >= PyTuple_GET_SIZE(self->lat)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    PyObject *acc = PyTuple_GET_ITEM(self->acc, size);
    Py_ssize_t i = 0;
    if (floor != -INFINITY && (i = bisect_left(acc, floor, 0)) < 0)
        return -1;
    if (i == PyList_GET_SIZE(acc)) {
        *out = INFINITY;
        return 0;
    }
    double lat;
    if (item(PyTuple_GET_ITEM(self->lat, size), i, &lat) < 0)
        return -1;
    *out = lat * self->shared * self->tail + (self->per_batch + self->per_request * (double)size);
    return 0;
}

/* service_ms(size, floor) -> float */
static PyObject *
fq_service_ms(FrontQuery *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "service_ms(size, floor)");
        return NULL;
    }
    Py_ssize_t size = PyNumber_AsSsize_t(args[0], PyExc_IndexError);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    double floor, ms;
    if (as_double(args[1], &floor) < 0)
        return NULL;
    Py_ssize_t sizes = PyTuple_GET_SIZE(self->lat);
    if (service(self, size < 0 ? size + sizes : size, floor, &ms) < 0)
        return NULL;
    return PyFloat_FromDouble(ms);
}

/* plan_late(hard, floors, t, max_batch) -> [positions late] */
static PyObject *
fq_plan_late(FrontQuery *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "plan_late(hard, floors, t, max_batch)");
        return NULL;
    }
    PyObject *hard = args[0], *floors = args[1];
    if (!PyList_Check(hard) || (floors != Py_None && !PyList_Check(floors))) {
        PyErr_SetString(PyExc_TypeError, "plan_late: hard must be a list, floors a list or None");
        return NULL;
    }
    double t;
    if (as_double(args[2], &t) < 0)
        return NULL;
    Py_ssize_t B = PyLong_AsSsize_t(args[3]);
    if (B == -1 && PyErr_Occurred())
        return NULL;
    if (B < 1) {
        PyErr_SetString(PyExc_ValueError, "max_batch must be >= 1");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(hard), i = 0;
    /* Python's `if floors`: None and an empty list both mean no floors */
    int floored = floors != Py_None && PyList_GET_SIZE(floors) > 0;
    if (floored && PyList_GET_SIZE(floors) < n) {
        PyErr_SetString(PyExc_IndexError, "floors is shorter than hard");
        return NULL;
    }
    double *earliest = PyMem_Malloc(sizeof(double) * 2 * (size_t)B), *strictest = earliest + B;
    if (earliest == NULL)
        return PyErr_NoMemory();
    PyObject *late = PyList_New(0);
    if (late == NULL)
        goto fail;
    double svc, v, w;
    if (floors == Py_None) { /* the common case first: full batches that all make it */
        double full;
        if (service(self, B, -INFINITY, &full) < 0)
            goto fail;
        full = full / 1e3;
        while (i + B <= n) {
            double least;
            if (number(hard, i, &least) < 0)
                goto fail;
            for (Py_ssize_t k = i + 1; k < i + B; k++) {
                if (number(hard, k, &v) < 0)
                    goto fail;
                if (v < least)
                    least = v;
            }
            if (!(t + full <= least))
                break;
            t += full;
            i += B;
        }
    }
    while (i < n) {
        Py_ssize_t m = B < n - i ? B : n - i;
        /* running minimum of the deadlines and maximum of the floors over the chunk */
        for (Py_ssize_t k = 0; k < m; k++) {
            if (number(hard, i + k, &v) < 0)
                goto fail;
            /* accumulate(chunk, min): min(a, b) keeps a unless b < a; max keeps a unless b > a */
            earliest[k] = k == 0 || v < earliest[k - 1] ? v : earliest[k - 1];
            if (floored) {
                if (number(floors, i + k, &w) < 0)
                    goto fail;
                strictest[k] = k == 0 || w > strictest[k - 1] ? w : strictest[k - 1];
            }
        }
        if (service(self, m, floored ? strictest[m - 1] : -INFINITY, &svc) < 0)
            goto fail;
        svc = svc / 1e3;
        if (t + svc <= earliest[m - 1]) { /* the common case: a full batch makes it */
            t += svc;
            i += m;
            continue;
        }
        Py_ssize_t lo = 0, hi = m - 1; /* the largest size that makes it: predicate monotone in it */
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi + 1) / 2;
            if (service(self, mid, floored ? strictest[mid - 1] : -INFINITY, &svc) < 0)
                goto fail;
            if (t + svc / 1e3 <= earliest[mid - 1])
                lo = mid;
            else
                hi = mid - 1;
        }
        if (lo == 0) {
            PyObject *at = PyLong_FromSsize_t(i);
            if (at == NULL || PyList_Append(late, at) < 0) {
                Py_XDECREF(at);
                goto fail;
            }
            Py_DECREF(at);
            i += 1;
            continue;
        }
        if (service(self, lo, floored ? strictest[lo - 1] : -INFINITY, &svc) < 0)
            goto fail;
        t += svc / 1e3;
        i += lo;
    }
    PyMem_Free(earliest);
    return late;
fail:
    PyMem_Free(earliest);
    Py_XDECREF(late);
    return NULL;
}

static PyMethodDef fq_methods[] = {
    {"best_within", (PyCFunction)(void (*)(void))fq_best_within, METH_FASTCALL | METH_KEYWORDS,
     "best_within(batch, floor, max_ms, expected=False): (id, service ms) of the most accurate subnet with "
     "accuracy >= floor whose service time at batch is <= max_ms, or None (`CostTable.best_within`)."},
    {"best_priced", (PyCFunction)(void (*)(void))fq_best_priced, METH_FASTCALL,
     "best_priced(batch, floor, top, members, price, charge, known=None): the priced search on the front's hull, "
     "or None without a price or with top off the front (`FrontQuery.best_priced`)."},
    {"service_ms", (PyCFunction)(void (*)(void))fq_service_ms, METH_FASTCALL,
     "service_ms(size, floor): service ms of size requests on the fastest subnet meeting floor, inf if none "
     "(`FrontQuery.service_ms`)."},
    {"plan_late", (PyCFunction)(void (*)(void))fq_plan_late, METH_FASTCALL,
     "plan_late(hard, floors, t, max_batch): positions that miss their deadline in the engine's cheapest plan "
     "(`FrontQuery.plan_late`)."},
    {NULL},
};

static PyTypeObject FrontQueryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "elastic.serving._front_search.FrontQuery",
    .tp_basicsize = sizeof(FrontQuery),
    .tp_dealloc = (destructor)fq_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrontQuery(lat, ids, acc, hull, pos, shared, tail, per_batch, per_request, accuracy_known): the fronts of one "
              "prediction state (serving/front_search.py).",
    .tp_methods = fq_methods,
    .tp_new = fq_new,
};

/* ---- ChargeCurve ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *budgets, *prefix; /* sorted budgets (ms) and their prefix sums */
    Py_ssize_t k0;
    double below, scale, service_ms, sat_weight;
} ChargeCurve;

static void
cc_dealloc(ChargeCurve *self)
{
    Py_XDECREF(self->budgets);
    Py_XDECREF(self->prefix);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* (k0 * busy + (k1 - k0) * end - (prefix[k1] - below)) * scale, with k1 = bisect_left(budgets, end, k0) */
static int
blocked(ChargeCurve *self, double busy, double *out)
{
    double end = busy + self->service_ms;
    Py_ssize_t k1 = bisect_left(self->budgets, end, self->k0);
    if (k1 < 0)
        return -1;
    double p;
    if (k1 >= PyList_GET_SIZE(self->prefix)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    if (item(self->prefix, k1, &p) < 0)
        return -1;
    *out = ((double)self->k0 * busy + (double)(k1 - self->k0) * end - (p - self->below)) * self->scale;
    return 0;
}

static PyObject *
cc_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ChargeCurve *self = (ChargeCurve *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 3 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "charge(ms, rest_ms, fluid_ms) takes 3 positional arguments");
        return NULL;
    }
    double ms, rest_ms, fluid_ms;
    if (as_double(args[0], &ms) < 0 || as_double(args[1], &rest_ms) < 0 || as_double(args[2], &fluid_ms) < 0)
        return NULL;
    double sat = 0.0, busy = ms + fluid_ms, value;
    if (self->sat_weight != 0.0 && busy > 0) {
        if (blocked(self, busy, &value) < 0)
            return NULL;
        sat = self->sat_weight * value;
    }
    busy = ms + rest_ms;
    if (busy <= 0)
        return PyFloat_FromDouble(0.0 + sat);
    if (blocked(self, busy, &value) < 0)
        return NULL;
    return PyFloat_FromDouble(value + sat);
}

static PyObject *
cc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"budgets", "prefix", "k0", "below", "scale", "service_ms", "sat_weight", NULL};
    PyObject *budgets, *prefix;
    Py_ssize_t k0;
    double below, scale, service_ms, sat_weight;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!ndddd", kwlist, &PyList_Type, &budgets, &PyList_Type, &prefix,
                                     &k0, &below, &scale, &service_ms, &sat_weight))
        return NULL;
    if (k0 < 0 || k0 > PyList_GET_SIZE(budgets)) {
        PyErr_SetString(PyExc_ValueError, "k0 must index the budgets");
        return NULL;
    }
    ChargeCurve *self = (ChargeCurve *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = cc_call;
    Py_INCREF(budgets);
    Py_INCREF(prefix);
    self->budgets = budgets;
    self->prefix = prefix;
    self->k0 = k0;
    self->below = below;
    self->scale = scale;
    self->service_ms = service_ms;
    self->sat_weight = sat_weight;
    return (PyObject *)self;
}

static PyTypeObject ChargeCurveType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "elastic.serving._front_search.ChargeCurve",
    .tp_basicsize = sizeof(ChargeCurve),
    .tp_dealloc = (destructor)cc_dealloc,
    .tp_vectorcall_offset = offsetof(ChargeCurve, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "ChargeCurve(budgets, prefix, k0, below, scale, service_ms, sat_weight): "
              "`Demand.charge_curve`'s charge(ms, rest_ms, fluid_ms).",
    .tp_new = cc_new,
};

/* ---- module ---------------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "elastic.serving._front_search",
    .m_doc = "The elastic policy's front search and busy-period charge, compiled (serving/front_search.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__front_search(void)
{
    if (PyType_Ready(&FrontQueryType) < 0 || PyType_Ready(&ChargeCurveType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FrontQueryType);
    if (PyModule_AddObject(m, "FrontQuery", (PyObject *)&FrontQueryType) < 0) {
        Py_DECREF(&FrontQueryType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ChargeCurveType);
    if (PyModule_AddObject(m, "ChargeCurve", (PyObject *)&ChargeCurveType) < 0) {
        Py_DECREF(&ChargeCurveType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
