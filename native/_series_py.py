"""Pure-Python twin of ``_series_c``: the per-device reading ring and the energy kernel.

Both implementations expose exactly ``PUBLIC_API`` (see ``wattspan.native``) and give the same
results; the parity tests hold them to it.

Energy reconstruction
---------------------
A device's readings are ``(t_ns, energy_j, power_w)`` with NaN for "not read". From them the
kernel rebuilds the cumulative energy E(t) at any query time:

* **Counter anchors.** A hardware counter advances in steps (NVML about every 10–100 ms), so
  the time a value was reached is not the time it was read. An anchor is placed where the
  value changed: at the read time when the previous read had changed too (the counter moves
  faster than we poll), else halfway between the last unchanged read and this one. The first
  reading is an anchor only for devices without power readings (nothing better exists); for
  them it counts as a change, so a counter that moves at every read is anchored at every read.
  Anchors strictly increase: one that would not is moved just after the previous one.
* **Power shape.** A power reading describes the interval that ends at its time, so power is
  held backwards: P(t) = P_j on (t_{j-1}, t_j], where t_{j-1} is the previous power reading.
  After the last power reading, its value is held forward to the device's last reading.
  Its integral S(t) is the shape.
* The counter readings and the power readings are two streams, each in time order; a
  snapshot may hold them one after the other (a reading with NaN in the other column), as
  the timeline stores them apart: a power sample can be dated before the last counter read.
* Between two anchors E follows S scaled to the counter's delta (linear in time when power is
  absent or flat zero): method ``COUNTER``. Outside the anchors but inside power data, E
  extends the nearest anchor by S (or is S alone for power-only devices): method ``POWER``.
  Outside all data the query is clamped to the covered range: method ``CLAMPED``, so callers
  mark the figure partial. No data at all, or a NaN query, gives NaN: method ``NONE``.

Reading times are integer nanoseconds and are compared exactly with the (float) anchors and
queries, as Python compares int with float; the compiled twin does the same, so both agree
past 2**53 ns (CLOCK_MONOTONIC after 104 days of uptime). Times must stay within +-2**62.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from operator import index

METHOD_NONE = 0
METHOD_COUNTER = 1
METHOD_POWER = 2
METHOD_CLAMPED = 3

_NS = 1e-9


class ReadingRing:
    """Fixed-capacity ring of ``(t_ns, energy_j, power_w)``; the oldest is overwritten.

    Memory never grows: overwriting an unread reading is counted in ``overruns``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"ring capacity must be at least 2, got {capacity}")
        self._cap = capacity
        self._t = array("q", bytes(8 * capacity))
        self._e = array("d", bytes(8 * capacity))
        self._p = array("d", bytes(8 * capacity))
        self._head = 0  # next slot to write
        self._len = 0
        self.overruns = 0

    @property
    def capacity(self) -> int:
        return self._cap

    def __len__(self) -> int:
        return self._len

    def append(self, t_ns: int, energy_j: float, power_w: float) -> None:
        """Store one reading; pass NaN for a value that was not read.

        A bad argument (wrong type, out of range) raises and leaves the ring unchanged."""
        h = self._head
        saved = self._t[h], self._e[h], self._p[h]
        try:
            self._t[h] = t_ns
            self._e[h] = energy_j
            self._p[h] = power_w
        except BaseException:
            self._t[h], self._e[h], self._p[h] = saved
            raise
        self._head = (h + 1) % self._cap
        if self._len == self._cap:
            self.overruns += 1
        else:
            self._len += 1

    def _index(self, i: int) -> int:
        return (self._head - self._len + i) % self._cap

    def first_t_ns(self) -> int:
        if not self._len:
            raise IndexError("empty ring")
        return self._t[self._index(0)]

    def last_t_ns(self) -> int:
        if not self._len:
            raise IndexError("empty ring")
        return self._t[self._index(self._len - 1)]

    def snapshot(self, start_ns=None, end_ns=None) -> tuple[array, array, array]:
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
        n = self._len
        i0, i1 = 0, n
        start = None if start_ns is None else _bound(start_ns)
        end = None if end_ns is None else _bound(end_ns)
        if start is not None and end is not None and start > end:
            raise ValueError(f"snapshot start_ns {start!r} is after end_ns {end!r}")
        if start is not None:
            lo, hi = 0, n  # bisect_right: the first reading after start
            while lo < hi:
                mid = (lo + hi) // 2
                if start < self._t[self._index(mid)]:
                    hi = mid
                else:
                    lo = mid + 1
            i0 = lo - 1 if lo else 0
        if end is not None:
            lo, hi = 0, n  # bisect_left: the first reading at or after end
            while lo < hi:
                mid = (lo + hi) // 2
                if self._t[self._index(mid)] < end:
                    lo = mid + 1
                else:
                    hi = mid
            i1 = lo + 1 if lo < n else n
        if i1 <= i0 < n:  # readings at equal times on both bounds: the last at start alone
            i1 = i0 + 1
        return self._copy(i0, i1 - i0)

    def _copy(self, i: int, n: int) -> tuple[array, array, array]:
        """Copies of ``n`` readings from logical index ``i`` on."""
        start = self._index(i) if n else 0
        t, e, p = array("q"), array("d"), array("d")
        for src, dst in ((self._t, t), (self._e, e), (self._p, p)):
            end = start + n
            if end <= self._cap:
                dst.extend(src[start:end])
            else:
                dst.extend(src[start:])
                dst.extend(src[: end - self._cap])
        return t, e, p

    def discard_before(self, t_ns: int) -> int:
        """Drop readings older than ``t_ns``, keeping the newest one before it (interpolation
        needs a point on each side). Returns how many were dropped."""
        n = self._len
        drop = 0
        while drop + 1 < n and self._t[self._index(drop + 1)] <= t_ns:
            drop += 1
        self._len -= drop
        return drop


def _bound(v):
    """A snapshot bound as the ring compares it: a float (not NaN) or an integer."""
    if isinstance(v, float):
        if v != v:
            raise ValueError("snapshot bound is NaN")
        return v
    return index(v)


class _Series:
    """Anchors and power shape derived from one snapshot (see the module docstring)."""

    __slots__ = ("pt", "ps", "pv", "at", "ac", "sw")

    def __init__(self, t, e, p) -> None:
        if not len(t) == len(e) == len(p):
            raise ValueError(
                f"t_ns, energy_j and power_w differ in length ({len(t)}, {len(e)}, {len(p)})"
            )
        pt, ps, pv = [], [], []
        for i in range(len(t)):
            pw = p[i]
            if math.isnan(pw):
                continue
            if pt:
                ps.append(ps[-1] + pw * (t[i] - pt[-1]) * _NS)
            else:
                ps.append(0.0)
            pt.append(t[i])
            pv.append(pw)
        last_t = max(t) if len(t) else None
        if pt and last_t > pt[-1]:
            # The device was read after its last power value: hold that value up to the last read.
            ps.append(ps[-1] + pv[-1] * (last_t - pt[-1]) * _NS)
            pt.append(last_t)
            pv.append(pv[-1])
        at, ac = [], []
        prev_t = prev_c = None
        prev_changed = False
        seen = 0
        for i in range(len(t)):
            c = e[i]
            if math.isnan(c):
                continue
            if seen == 0:
                # Without power readings nothing better than the first read exists, and the
                # counter is then taken to move at least as fast as we poll.
                if not pt:
                    at.append(float(t[i]))
                    ac.append(c)
                prev_changed = not pt
            elif c != prev_c:
                if prev_changed:
                    tau = float(t[i])
                else:
                    tau = (prev_t + t[i]) / 2.0
                if at and tau <= at[-1]:
                    tau = at[-1] + 0.5
                    if tau <= at[-1]:  # from 2**52 ns on, half a ns is below float resolution
                        tau = math.nextafter(at[-1], math.inf)
                at.append(tau)
                ac.append(c)
                prev_changed = True
            else:
                prev_changed = False
            prev_t, prev_c = t[i], c
            seen += 1
        self.pt, self.ps, self.pv, self.at, self.ac = pt, ps, pv, at, ac
        self.sw = [self._switch(k) for k in range(len(at) - 1)]

    def _switch(self, k: int) -> tuple[float, float, float] | None:
        """Where the power switches inside counter step k, when the samples show exactly one
        change there: ``(x, p_before, p_after)`` with x solved so both levels add up to the
        counter's delta; None (scale the shape instead) otherwise."""
        pt, pv = self.pt, self.pv
        t0, t1 = self.at[k], self.at[k + 1]
        if not pt or pt[0] > t0 or pt[-1] < t1:
            return None
        change = None
        for j in range(bisect_right(pt, t0), len(pt) - 1):
            if pt[j] >= t1:
                break
            if pv[j + 1] != pv[j]:
                if change is not None:
                    return None
                change = j
        if change is None:
            return None
        p_before, p_after = pv[change], pv[change + 1]
        x = t0 + ((self.ac[k + 1] - self.ac[k]) / _NS - p_after * (t1 - t0)) / (p_before - p_after)
        if not t0 <= x <= t1:
            return None
        return x, p_before, p_after

    def shape(self, x: float) -> float | None:
        """S(x), the integral of held-back power from the first power reading; None outside."""
        pt = self.pt
        if not pt or x < pt[0] or x > pt[-1]:
            return None
        j = bisect_left(pt, x)
        if pt[j] == x:
            return self.ps[j]
        return self.ps[j - 1] + self.pv[j] * (x - pt[j - 1]) * _NS

    def bounds(self) -> tuple[float, float] | None:
        """The covered range [lo, hi] over which E is known."""
        at, pt = self.at, self.pt
        if at:
            lo, hi = at[0], at[-1]
            if pt and pt[0] < lo <= pt[-1]:
                lo = pt[0]
            if pt and pt[0] <= hi < pt[-1]:
                hi = pt[-1]
            return lo, hi
        if len(pt) >= 2:
            return pt[0], pt[-1]
        return None

    def energy_at(self, x: float) -> tuple[float, int]:
        if x != x:  # a NaN query has no answer (and must not be clamped)
            return math.nan, METHOD_NONE
        at, ac = self.at, self.ac
        if at:
            n = len(at)
            if at[0] <= x <= at[-1]:
                if n == 1:
                    return ac[0], METHOD_COUNTER
                k = min(bisect_right(at, x) - 1, n - 2)
                t0, t1 = at[k], at[k + 1]
                sw = self.sw[k]
                if sw is not None:
                    if x <= sw[0]:
                        return ac[k] + sw[1] * (x - t0) * _NS, METHOD_COUNTER
                    return ac[k + 1] - sw[2] * (t1 - x) * _NS, METHOD_COUNTER
                s0, s1, sx = self.shape(t0), self.shape(t1), self.shape(x)
                if s0 is not None and s1 is not None and sx is not None and s1 > s0:
                    frac = (sx - s0) / (s1 - s0)
                else:
                    frac = (x - t0) / (t1 - t0)
                return ac[k] + (ac[k + 1] - ac[k]) * frac, METHOD_COUNTER
            if x > at[-1]:
                sx, sa = self.shape(x), self.shape(at[-1])
                if sx is not None and sa is not None:
                    return ac[-1] + sx - sa, METHOD_POWER
            else:
                sx, sa = self.shape(x), self.shape(at[0])
                if sx is not None and sa is not None:
                    return ac[0] - (sa - sx), METHOD_POWER
        elif len(self.pt) >= 2:
            sx = self.shape(x)
            if sx is not None:
                return sx, METHOD_POWER
        b = self.bounds()
        if b is None:
            return math.nan, METHOD_NONE
        value, _ = self.energy_at(min(max(x, b[0]), b[1]))
        return value, METHOD_CLAMPED


def energy_at(t_ns, energy_j, power_w, query_ns):
    """Cumulative energy E (J) at each query time, and how each was obtained.

    ``t_ns``/``energy_j``/``power_w`` are a snapshot, oldest first; ``query_ns`` any times.
    Returns ``(array('d') energies, array('b') methods, lo_ns, hi_ns)`` where [lo_ns, hi_ns] is
    the covered range (both -1 when nothing is covered).
    """
    series = _Series(t_ns, energy_j, power_w)
    out_e, out_m = array("d"), array("b")
    for q in query_ns:
        value, method = series.energy_at(float(q))
        out_e.append(value)
        out_m.append(method)
    b = series.bounds()
    if b is None:
        return out_e, out_m, -1, -1
    return out_e, out_m, int(math.ceil(b[0])), int(math.floor(b[1]))


def breakpoints_ns(t_ns, energy_j, power_w, start_ns, end_ns):
    """Times strictly inside (start, end) where the reconstructed power may change.

    E is linear between consecutive breakpoints, so the power on each piece is its energy
    delta over its duration: what the dynamic-energy and attribution sums need.
    """
    series = _Series(t_ns, energy_j, power_w)
    points = set()
    for x in series.pt:
        if start_ns < x < end_ns:
            points.add(int(x))
    for x in series.at:
        # Anchors sit on half nanoseconds: the rounded time must itself be strictly inside,
        # or a caller would get an empty piece at ``start_ns``/``end_ns``.
        r = int(round(x))
        if start_ns < r < end_ns:
            points.add(r)
    for sw in series.sw:
        if sw is not None:
            r = int(round(sw[0]))
            if start_ns < r < end_ns:
                points.add(r)
    return array("q", sorted(points))
