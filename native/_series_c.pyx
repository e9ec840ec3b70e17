# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``_series_py``: the per-device reading ring and the energy kernel.

The module docstring of ``_series_py`` is the specification; this file mirrors it operation
for operation (same float expressions in the same order, the same exact int/float comparisons
that Python makes), so both give the same results. Only storage differs: the ring is three
malloc'd C arrays, and the kernel builds its anchor, power-shape and per-step switch arrays in
one C buffer per call and answers each query by binary search, without the GIL.
"""

from cpython.array cimport array, clone
from cpython.long cimport PyLong_AsLongLong
from libc.math cimport ceil, floor, llrint, nextafter
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy

from operator import index as _as_index

METHOD_NONE = 0
METHOD_COUNTER = 1
METHOD_POWER = 2
METHOD_CLAMPED = 3

cdef enum:
    M_NONE = 0
    M_COUNTER = 1
    M_POWER = 2
    M_CLAMPED = 3
    M_FALLTHROUGH = -1

cdef double _NS = 1e-9
cdef double _INF = float("inf")
cdef double _NAN = float("nan")
cdef double _TWO_63 = 9223372036854775808.0
cdef object _I64_MIN = -(2 ** 63)
cdef object _I64_MAX = 2 ** 63 - 1

cdef array _TEMPLATE_Q = array("q")
cdef array _TEMPLATE_D = array("d")
cdef array _TEMPLATE_B = array("b")


# ---------------------------------------------------------------------------------------------
# Exact comparisons between float and int64, as Python compares float with int.

cdef inline int _cmp_dq(double d, int64_t q) noexcept nogil:
    """sign(d - q) computed exactly: -1, 0, 1, or 2 when d is NaN."""
    cdef double qd = <double>q  # one of the two doubles around q
    cdef int64_t di
    if d < qd:
        return -1  # no double lies strictly between q and qd, so d < q
    if d > qd:
        return 1
    if d != d:
        return 2
    # d == qd, an integral value in [-2**63, 2**63]
    if qd >= _TWO_63:
        return 1
    di = <int64_t>d
    return (di > q) - (di < q)


cdef struct Num:
    # A Python number as the twin sees it: a time is an int (a reading's time) or a float.
    bint is_int
    int64_t i
    double d


cdef inline Num _num_d(double d) noexcept nogil:
    cdef Num r
    r.is_int = False
    r.i = 0
    r.d = d
    return r


cdef inline Num _num_q(int64_t i) noexcept nogil:
    cdef Num r
    r.is_int = True
    r.i = i
    r.d = 0.0
    return r


cdef inline int _cmp_nq(Num x, int64_t q) noexcept nogil:
    """sign(x - q), 2 when unordered."""
    if x.is_int:
        return (x.i > q) - (x.i < q)
    return _cmp_dq(x.d, q)


cdef inline int _cmp_nd(Num x, double a) noexcept nogil:
    """sign(x - a), 2 when unordered."""
    cdef int c
    if x.is_int:
        c = _cmp_dq(a, x.i)
        return 2 if c == 2 else -c
    if x.d < a:
        return -1
    if x.d > a:
        return 1
    if x.d == a:
        return 0
    return 2


cdef inline int _cmp_nn(Num x, Num y) noexcept nogil:
    """sign(x - y), 2 when unordered."""
    if y.is_int:
        return _cmp_nq(x, y.i)
    return _cmp_nd(x, y.d)


cdef inline double _sub_nq(Num x, int64_t q) noexcept nogil:
    # int - int is exact in Python, then made a float; float - int makes the int a float first.
    if x.is_int:
        return <double>(x.i - q)
    return x.d - <double>q


cdef inline double _sub_nd(Num x, double a) noexcept nogil:
    if x.is_int:
        return <double>x.i - a
    return x.d - a


cdef inline double _sub_dn(double a, Num x) noexcept nogil:
    if x.is_int:
        return a - <double>x.i
    return a - x.d


cdef int _to_num(object v, Num* out) except -1:
    """A bound given from Python (int or float) as a Num, comparing as Python would."""
    if isinstance(v, float):
        out[0] = _num_d(v)
        return 0
    try:
        iv = _as_index(v)
    except TypeError:
        out[0] = _num_d(float(v))
        return 0
    if iv < _I64_MIN:
        out[0] = _num_d(-_INF)
    elif iv > _I64_MAX:
        out[0] = _num_d(_INF)
    else:
        out[0] = _num_q(iv)
    return 0


cdef object _bound(object v):
    """A snapshot bound as the ring compares it: a float (not NaN) or an integer."""
    if isinstance(v, float):
        if v != v:
            raise ValueError("snapshot bound is NaN")
        return v
    return _as_index(v)


# ---------------------------------------------------------------------------------------------
# The ring


cdef class ReadingRing:
    """Fixed-capacity ring of ``(t_ns, energy_j, power_w)``; the oldest is overwritten.

    Memory never grows: overwriting an unread reading is counted in ``overruns``.
    """

    cdef int64_t* _t
    cdef double* _e
    cdef double* _p
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _head  # next slot to write
    cdef Py_ssize_t _len
    cdef public long long overruns

    def __cinit__(self, Py_ssize_t capacity):
        if capacity < 2:
            raise ValueError(f"ring capacity must be at least 2, got {capacity}")
        if <size_t>capacity > (<size_t>-1) // 8:
            raise MemoryError()
        self._t = <int64_t*>malloc(capacity * sizeof(int64_t))
        self._e = <double*>malloc(capacity * sizeof(double))
        self._p = <double*>malloc(capacity * sizeof(double))
        if self._t == NULL or self._e == NULL or self._p == NULL:
            raise MemoryError()
        self._cap = capacity
        self._head = 0
        self._len = 0
        self.overruns = 0

    def __dealloc__(self):
        free(self._t)
        free(self._e)
        free(self._p)

    @property
    def capacity(self):
        return self._cap

    def __len__(self):
        return self._len

    def append(self, t_ns, double energy_j, double power_w):
        """Store one reading; pass NaN for a value that was not read.

        A bad argument (wrong type, out of range) raises and leaves the ring unchanged."""
        # As array('q') stores it: integers and __index__ only, never a truncated float.
        cdef int64_t t = PyLong_AsLongLong(t_ns)
        cdef Py_ssize_t h = self._head
        self._t[h] = t
        self._e[h] = energy_j
        self._p[h] = power_w
        h += 1
        self._head = 0 if h == self._cap else h
        if self._len == self._cap:
            self.overruns += 1
        else:
            self._len += 1

    cdef inline Py_ssize_t _index(self, Py_ssize_t i) noexcept nogil:
        cdef Py_ssize_t j = self._head - self._len + i
        if j < 0:
            j += self._cap
        elif j >= self._cap:
            j -= self._cap
        return j

    def first_t_ns(self):
        if not self._len:
            raise IndexError("empty ring")
        return self._t[self._index(0)]

    def last_t_ns(self):
        if not self._len:
            raise IndexError("empty ring")
        return self._t[self._index(self._len - 1)]

    def snapshot(self, start_ns=None, end_ns=None):
        """Copies of the readings, oldest first: ``array('q')`` times, ``array('d')`` energies
        and ``array('d')`` powers.

        With bounds, only the readings from the last one at or before ``start_ns`` (the first
        one when none is) through the first one at or after ``end_ns`` (the last one when none
        is), found by binary search: the ring must be in time order for that to mean anything
        (of readings that share a time, the last is taken at ``start_ns`` and the first at
        ``end_ns``; where those cross, at ``start_ns == end_ns``, the last alone).
        A bound is an int or a float (compared exactly, as Python compares them), or None for
        that end of the ring; a NaN bound, or ``start_ns`` after ``end_ns``, raises ValueError.
        """
        cdef Py_ssize_t n = self._len, i0 = 0, i1 = n, lo, hi, mid
        cdef Num start, end
        if start_ns is not None:
            start_ns = _bound(start_ns)
        if end_ns is not None:
            end_ns = _bound(end_ns)
        if start_ns is not None and end_ns is not None and start_ns > end_ns:
            raise ValueError(f"snapshot start_ns {start_ns!r} is after end_ns {end_ns!r}")
        if start_ns is not None:
            _to_num(start_ns, &start)
            lo = 0
            hi = n
            with nogil:
                while lo < hi:  # bisect_right: the first reading after start
                    mid = (lo + hi) // 2
                    if _cmp_nq(start, self._t[self._index(mid)]) == -1:
                        hi = mid
                    else:
                        lo = mid + 1
            i0 = lo - 1 if lo else 0
        if end_ns is not None:
            _to_num(end_ns, &end)
            lo = 0
            hi = n
            with nogil:
                while lo < hi:  # bisect_left: the first reading at or after end
                    mid = (lo + hi) // 2
                    if _cmp_nq(end, self._t[self._index(mid)]) == 1:
                        lo = mid + 1
                    else:
                        hi = mid
            i1 = lo + 1 if lo < n else n
        if i1 <= i0 < n:  # readings at equal times on both bounds: the last at start alone
            i1 = i0 + 1
        return self._copy(i0, i1 - i0)

    cdef tuple _copy(self, Py_ssize_t i, Py_ssize_t n):
        """Copies of ``n`` readings from logical index ``i`` on."""
        cdef Py_ssize_t start = self._index(i) if n else 0
        cdef Py_ssize_t first = self._cap - start
        cdef array t = clone(_TEMPLATE_Q, n, False)
        cdef array e = clone(_TEMPLATE_D, n, False)
        cdef array p = clone(_TEMPLATE_D, n, False)
        if first > n:
            first = n
        memcpy(t.data.as_longlongs, self._t + start, first * sizeof(int64_t))
        memcpy(e.data.as_doubles, self._e + start, first * sizeof(double))
        memcpy(p.data.as_doubles, self._p + start, first * sizeof(double))
        if n > first:
            memcpy(t.data.as_longlongs + first, self._t, (n - first) * sizeof(int64_t))
            memcpy(e.data.as_doubles + first, self._e, (n - first) * sizeof(double))
            memcpy(p.data.as_doubles + first, self._p, (n - first) * sizeof(double))
        return t, e, p

    def __reduce__(self):
        # Pickling and copying keep what is observable: capacity, readings, overruns.
        return _restore_ring, (type(self), self._cap, self.snapshot(), self.overruns)

    def discard_before(self, t_ns):
        """Drop readings older than ``t_ns``, keeping the newest one before it (interpolation
        needs a point on each side). Returns how many were dropped."""
        cdef Num bound
        cdef Py_ssize_t n = self._len
        cdef Py_ssize_t drop = 0
        cdef int c
        _to_num(t_ns, &bound)
        while drop + 1 < n:
            c = _cmp_nq(bound, self._t[self._index(drop + 1)])  # sign(t_ns - t)
            if c != 0 and c != 1:
                break
            drop += 1
        self._len -= drop
        return drop


def _restore_ring(cls, capacity, readings, overruns):
    ring = cls(capacity)
    for t, e, p in zip(*readings):
        ring.append(t, e, p)
    ring.overruns = overruns
    return ring


# ---------------------------------------------------------------------------------------------
# The kernel


cdef struct Series:
    Py_ssize_t np  # power readings: times, shape S at each, held-back power
    bint pt_sorted  # power times non-decreasing (each stream in time order: always in use)
    int64_t* pt
    double* ps
    double* pv
    Py_ssize_t na  # anchors: times (strictly increasing), counter values
    double* at
    double* ac
    # per counter step k (anchors k, k + 1): the switch time, NaN for none (scale the shape),
    # and the power before and after it
    double* sw_x
    double* sw_a
    double* sw_b


cdef struct Bounds:
    bint ok
    Num lo
    Num hi


cdef const int64_t[:] _view_q(object x):
    cdef const int64_t[:] v
    try:
        v = x
    except (TypeError, ValueError, BufferError):
        v = array("q", x)
    return v


cdef const double[:] _view_d(object x):
    cdef const double[:] v
    try:
        v = x
    except (TypeError, ValueError, BufferError):
        v = array("d", x)
    return v


cdef void _build(Series* s, const int64_t[:] t, const double[:] e, const double[:] p) noexcept nogil:
    cdef Py_ssize_t n = t.shape[0]
    cdef Py_ssize_t i, np = 0, na = 0, seen = 0
    cdef double pw, c, tau, prev_c = 0.0
    cdef int64_t prev_t = 0, last_t
    cdef bint prev_changed = False
    s.pt_sorted = True
    for i in range(n):
        pw = p[i]
        if pw != pw:
            continue
        if np:
            if t[i] < s.pt[np - 1]:
                s.pt_sorted = False
            s.ps[np] = s.ps[np - 1] + pw * <double>(t[i] - s.pt[np - 1]) * _NS
        else:
            s.ps[np] = 0.0
        s.pt[np] = t[i]
        s.pv[np] = pw
        np += 1
    if np:
        last_t = t[0]
        for i in range(1, n):
            if t[i] > last_t:
                last_t = t[i]
        if last_t > s.pt[np - 1]:
            # The device was read after its last power value: hold it up to the last read.
            s.ps[np] = s.ps[np - 1] + s.pv[np - 1] * <double>(last_t - s.pt[np - 1]) * _NS
            s.pt[np] = last_t
            s.pv[np] = s.pv[np - 1]
            np += 1
    s.np = np
    for i in range(n):
        c = e[i]
        if c != c:
            continue
        if seen == 0:
            # Without power readings nothing better than the first read exists, and the
            # counter is then taken to move at least as fast as we poll.
            if np == 0:
                s.at[na] = <double>t[i]
                s.ac[na] = c
                na += 1
            prev_changed = np == 0
        elif c != prev_c:
            if prev_changed:
                tau = <double>t[i]
            else:
                tau = <double>(prev_t + t[i]) / 2.0
            if na and tau <= s.at[na - 1]:
                tau = s.at[na - 1] + 0.5
                if tau <= s.at[na - 1]:  # from 2**52 ns on, half a ns is below float resolution
                    tau = nextafter(s.at[na - 1], _INF)
            s.at[na] = tau
            s.ac[na] = c
            na += 1
            prev_changed = True
        else:
            prev_changed = False
        prev_t = t[i]
        prev_c = c
        seen += 1
    s.na = na
    _switches(s)


cdef void _switches(Series* s) noexcept nogil:
    """Where the power switches inside each counter step k, when the samples show exactly one
    change there: x solved so both levels add up to the counter's delta (NaN: scale instead).

    Mirrors the twin's ``_Series._switch``, whose scan for step k starts at
    ``bisect_right(pt, at[k])``. Power times are sorted (each stream is in time order), so one
    pointer walks them alongside the anchors (which strictly increase): O(np + na) in all.
    Unsorted power times (no caller makes them) take the twin's own bisection instead, so the
    results are the same there too."""
    cdef Py_ssize_t np = s.np, na = s.na, j, j0 = 0, k, change, lo, hi, mid
    cdef double t0, t1, p_before, p_after, x
    cdef int c
    for k in range(na - 1):
        s.sw_x[k] = _NAN
        s.sw_a[k] = _NAN
        s.sw_b[k] = _NAN
        t0 = s.at[k]
        t1 = s.at[k + 1]
        # not pt or pt[0] > t0 or pt[-1] < t1
        if np == 0 or _cmp_dq(t0, s.pt[0]) == -1 or _cmp_dq(t1, s.pt[np - 1]) == 1:
            continue
        if s.pt_sorted:  # bisect_right(pt, t0): the first power time above t0
            while j0 < np and _cmp_dq(t0, s.pt[j0]) != -1:
                j0 += 1
            j = j0
        else:
            lo = 0
            hi = np
            while lo < hi:
                mid = (lo + hi) // 2
                if _cmp_dq(t0, s.pt[mid]) == -1:
                    hi = mid
                else:
                    lo = mid + 1
            j = lo
        change = -1
        while j < np - 1:
            c = _cmp_dq(t1, s.pt[j])
            if c == -1 or c == 0:  # pt[j] >= t1
                break
            if s.pv[j + 1] != s.pv[j]:
                if change != -1:
                    change = -2  # more than one change: no switch
                    break
                change = j
            j += 1
        if change < 0:
            continue
        p_before = s.pv[change]
        p_after = s.pv[change + 1]
        x = t0 + ((s.ac[k + 1] - s.ac[k]) / _NS - p_after * (t1 - t0)) / (p_before - p_after)
        if not (t0 <= x and x <= t1):
            continue
        s.sw_x[k] = x
        s.sw_a[k] = p_before
        s.sw_b[k] = p_after


cdef bint _shape(const Series* s, Num x, double* out) noexcept nogil:
    """S(x), the integral of held-back power from the first power reading; False outside."""
    cdef Py_ssize_t lo = 0, hi = s.np, mid, j
    if s.np == 0 or _cmp_nq(x, s.pt[0]) == -1 or _cmp_nq(x, s.pt[s.np - 1]) == 1:
        return False
    while lo < hi:  # bisect_left
        mid = (lo + hi) // 2
        if _cmp_nq(x, s.pt[mid]) == 1:
            lo = mid + 1
        else:
            hi = mid
    j = lo
    if _cmp_nq(x, s.pt[j]) == 0:
        out[0] = s.ps[j]
    else:
        out[0] = s.ps[j - 1] + s.pv[j] * _sub_nq(x, s.pt[j - 1]) * _NS
    return True


cdef void _bounds(const Series* s, Bounds* b) noexcept nogil:
    """The covered range [lo, hi] over which E is known."""
    cdef Py_ssize_t na = s.na, np = s.np
    cdef int c
    b.ok = True
    if na:
        b.lo = _num_d(s.at[0])
        b.hi = _num_d(s.at[na - 1])
        if np:
            c = _cmp_dq(s.at[0], s.pt[np - 1])
            if _cmp_dq(s.at[0], s.pt[0]) == 1 and (c == -1 or c == 0):
                b.lo = _num_q(s.pt[0])
            c = _cmp_dq(s.at[na - 1], s.pt[0])
            if (c == 0 or c == 1) and _cmp_dq(s.at[na - 1], s.pt[np - 1]) == -1:
                b.hi = _num_q(s.pt[np - 1])
    elif np >= 2:
        b.lo = _num_q(s.pt[0])
        b.hi = _num_q(s.pt[np - 1])
    else:
        b.ok = False


cdef int _energy(const Series* s, Num x, double* out) noexcept nogil:
    """E(x) and its method, or M_FALLTHROUGH when x is outside the data (x is not NaN)."""
    cdef Py_ssize_t na = s.na, lo, hi, mid, k
    cdef double t0, t1, s0 = 0.0, s1 = 0.0, sx = 0.0, sa = 0.0, frac
    cdef bint ok0, ok1, okx, oka
    cdef int c0, c1
    if na:
        c0 = _cmp_nd(x, s.at[0])
        c1 = _cmp_nd(x, s.at[na - 1])
        if (c0 == 0 or c0 == 1) and (c1 == -1 or c1 == 0):
            if na == 1:
                out[0] = s.ac[0]
                return M_COUNTER
            lo = 0
            hi = na
            while lo < hi:  # bisect_right
                mid = (lo + hi) // 2
                if _cmp_nd(x, s.at[mid]) == -1:
                    hi = mid
                else:
                    lo = mid + 1
            k = lo - 1
            if k > na - 2:
                k = na - 2
            t0 = s.at[k]
            t1 = s.at[k + 1]
            if s.sw_x[k] == s.sw_x[k]:  # a switch inside the step: each level on its side
                c0 = _cmp_nd(x, s.sw_x[k])
                if c0 == -1 or c0 == 0:
                    out[0] = s.ac[k] + s.sw_a[k] * _sub_nd(x, t0) * _NS
                else:
                    out[0] = s.ac[k + 1] - s.sw_b[k] * _sub_dn(t1, x) * _NS
                return M_COUNTER
            ok0 = _shape(s, _num_d(t0), &s0)
            ok1 = _shape(s, _num_d(t1), &s1)
            okx = _shape(s, x, &sx)
            if ok0 and ok1 and okx and s1 > s0:
                frac = (sx - s0) / (s1 - s0)
            else:
                frac = _sub_nd(x, t0) / (t1 - t0)
            out[0] = s.ac[k] + (s.ac[k + 1] - s.ac[k]) * frac
            return M_COUNTER
        if c1 == 1:
            okx = _shape(s, x, &sx)
            oka = _shape(s, _num_d(s.at[na - 1]), &sa)
            if okx and oka:
                out[0] = s.ac[na - 1] + sx - sa
                return M_POWER
        else:
            okx = _shape(s, x, &sx)
            oka = _shape(s, _num_d(s.at[0]), &sa)
            if okx and oka:
                out[0] = s.ac[0] - (sa - sx)
                return M_POWER
    elif s.np >= 2:
        if _shape(s, x, &sx):
            out[0] = sx
            return M_POWER
    return M_FALLTHROUGH


cdef int _query(const Series* s, const Bounds* b, double q, double* out) noexcept nogil:
    cdef Num x, r
    cdef int m
    if q != q:  # a NaN query has no answer (and must not be clamped)
        out[0] = _NAN
        return M_NONE
    x = _num_d(q)
    m = _energy(s, x, out)
    if m != M_FALLTHROUGH:
        return m
    if not b.ok:
        out[0] = _NAN
        return M_NONE
    r = x  # min(max(x, lo), hi), as Python's min and max pick
    if _cmp_nn(b.lo, r) == 1:
        r = b.lo
    if _cmp_nn(b.hi, r) == -1:
        r = b.hi
    if _energy(s, r, out) == M_FALLTHROUGH:  # cannot happen: [lo, hi] is covered
        out[0] = _NAN
    return M_CLAMPED


cdef class _SeriesBuffer:
    """Owns the C arrays of one Series for the length of one call."""

    cdef Series s
    cdef void* block

    def __cinit__(self, Py_ssize_t n):
        # pt, ps, pv, at, ac, sw_x, sw_a, sw_b: eight arrays of n + 1 8-byte items (the power
        # arrays take one point more than the readings where the last read is not a power one)
        cdef Py_ssize_t m = n + 1
        if <size_t>n > (<size_t>-1) // 64 - 1:
            raise MemoryError()
        self.block = malloc(<size_t>m * 64)
        if self.block == NULL:
            raise MemoryError()
        self.s.np = 0
        self.s.na = 0
        self.s.pt_sorted = True
        self.s.pt = <int64_t*>self.block
        self.s.ps = <double*>self.block + m
        self.s.pv = <double*>self.block + 2 * m
        self.s.at = <double*>self.block + 3 * m
        self.s.ac = <double*>self.block + 4 * m
        self.s.sw_x = <double*>self.block + 5 * m
        self.s.sw_a = <double*>self.block + 6 * m
        self.s.sw_b = <double*>self.block + 7 * m

    def __dealloc__(self):
        free(self.block)


cdef _SeriesBuffer _series(t_ns, energy_j, power_w):
    cdef const int64_t[:] t = _view_q(t_ns)
    cdef const double[:] e = _view_d(energy_j)
    cdef const double[:] p = _view_d(power_w)
    if not (t.shape[0] == e.shape[0] == p.shape[0]):
        raise ValueError(
            f"t_ns, energy_j and power_w differ in length ({t.shape[0]}, {e.shape[0]}, {p.shape[0]})"
        )
    cdef _SeriesBuffer buf = _SeriesBuffer(t.shape[0])
    with nogil:
        _build(&buf.s, t, e, p)
    return buf


cdef void _query_q(const Series* s, const Bounds* b, const int64_t[:] q, double* oe,
                   signed char* om) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(q.shape[0]):
        om[j] = <signed char>_query(s, b, <double>q[j], &oe[j])


cdef void _query_d(const Series* s, const Bounds* b, const double[:] q, double* oe,
                   signed char* om) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(q.shape[0]):
        om[j] = <signed char>_query(s, b, q[j], &oe[j])


def energy_at(t_ns, energy_j, power_w, query_ns):
    """Cumulative energy E (J) at each query time, and how each was obtained.

    ``t_ns``/``energy_j``/``power_w`` are a snapshot, oldest first; ``query_ns`` any times.
    Returns ``(array('d') energies, array('b') methods, lo_ns, hi_ns)`` where [lo_ns, hi_ns] is
    the covered range (both -1 when nothing is covered).
    """
    cdef _SeriesBuffer buf = _series(t_ns, energy_j, power_w)
    cdef Bounds b
    cdef const int64_t[:] qi
    cdef const double[:] qd = None
    cdef Py_ssize_t nq
    cdef array out_e, out_m
    try:
        qi = query_ns  # integer times: each made a float as the twin's float(q) does
    except (TypeError, ValueError, BufferError):
        qi = None
        qd = _view_d(query_ns)
    nq = qi.shape[0] if qi is not None else qd.shape[0]
    out_e = clone(_TEMPLATE_D, nq, False)
    out_m = clone(_TEMPLATE_B, nq, False)
    with nogil:
        _bounds(&buf.s, &b)
        if qi is not None:
            _query_q(&buf.s, &b, qi, out_e.data.as_doubles, out_m.data.as_schars)
        else:
            _query_d(&buf.s, &b, qd, out_e.data.as_doubles, out_m.data.as_schars)
    if not b.ok:
        return out_e, out_m, -1, -1
    lo = b.lo.i if b.lo.is_int else <int64_t>ceil(b.lo.d)
    hi = b.hi.i if b.hi.is_int else <int64_t>floor(b.hi.d)
    return out_e, out_m, lo, hi


cdef int _cmp_i64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef inline bint _inside(int64_t x, Num start, Num end) noexcept nogil:
    # start < x < end, exactly as Python compares
    return _cmp_nq(start, x) == -1 and _cmp_nq(end, x) == 1


def breakpoints_ns(t_ns, energy_j, power_w, start_ns, end_ns):
    """Times strictly inside (start, end) where the reconstructed power may change.

    E is linear between consecutive breakpoints, so the power on each piece is its energy
    delta over its duration: what the dynamic-energy and attribution sums need.
    """
    cdef _SeriesBuffer buf = _series(t_ns, energy_j, power_w)
    cdef Num start, end
    cdef Py_ssize_t j, m = 0, u = 0
    cdef int64_t r
    cdef int64_t* pts
    cdef array out
    _to_num(start_ns, &start)
    _to_num(end_ns, &end)
    pts = <int64_t*>malloc((buf.s.np + 2 * buf.s.na + 1) * sizeof(int64_t))
    if pts == NULL:
        raise MemoryError()
    try:
        with nogil:
            for j in range(buf.s.np):
                if _inside(buf.s.pt[j], start, end):
                    pts[m] = buf.s.pt[j]
                    m += 1
            for j in range(buf.s.na):
                # Anchors sit on half nanoseconds: the rounded time must itself be strictly
                # inside, or a caller would get an empty piece at start_ns/end_ns.
                r = <int64_t>llrint(buf.s.at[j])  # round half to even, as Python's round()
                if _inside(r, start, end):
                    pts[m] = r
                    m += 1
            for j in range(buf.s.na - 1):
                if buf.s.sw_x[j] == buf.s.sw_x[j]:  # a solved switch
                    r = <int64_t>llrint(buf.s.sw_x[j])
                    if _inside(r, start, end):
                        pts[m] = r
                        m += 1
            qsort(pts, m, sizeof(int64_t), _cmp_i64)
            for j in range(m):
                if u == 0 or pts[j] != pts[u - 1]:
                    pts[u] = pts[j]
                    u += 1
        out = clone(_TEMPLATE_Q, u, False)
        memcpy(out.data.as_longlongs, pts, u * sizeof(int64_t))
    finally:
        free(pts)
    return out
