"""Per-device reading series and energy over any interval, with its quality.

The sampler appends readings; readers ask for the energy over [t0, t1]. Reconstruction of the
cumulative energy curve is the native kernel's job (``wattspan.native.energy_at``): counter
deltas where a counter exists, shaped inside each counter step by the power readings, else the
integral of power. This module turns its answers into figures with a quality and a coverage.
A query hands the kernel only the readings around its window, which give the answers the whole
rings give (see ``CONTEXT_NS``), so its cost does not grow with the rings.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

from wattspan import native
from wattspan.collectors.base import DeviceInfo, Quality, Reading

NAN = math.nan

#: Readings kept per device: 10 minutes at 100 Hz. Memory is fixed (24 bytes a reading).
DEFAULT_CAPACITY = 60_000

#: Percentile of piecewise power taken as the idle baseline when none is configured.
IDLE_PERCENTILE = 5.0

#: Context a query takes around its window: the readings from at least this long before the
#: window's start to at least this long after its end (where the rings hold them) ...
CONTEXT_NS = 2_000_000_000
#: ... and at least this many readings of each stream beyond each edge of it (see below).
CONTEXT_READINGS = 3
#: History the learned baseline (``baseline_w``) looks at, so that its cost stays bounded.
BASELINE_HISTORY_NS = 60_000_000_000

# Why a query over [start, end] may reconstruct from the readings around it alone
# (``_snapshot(start, end)``, built by ``_context``) and get the answers the whole rings give:
# the same methods, covered range, breakpoints, pieces, qualities and coverage, and energies
# equal to rounding (the power shape S is a running sum from the snapshot's first power
# reading, so its differences round differently: ~1e-16 of the cumulative energy). It
# follows the kernel's docstring (``native/_series_py.py``); each stream is in strictly
# increasing time order (``_append`` drops the rest).
#
# * Anchors. Counter reading i (NaN ones are skipped) is an anchor when e[i] != e[i-1]: at
#   t[i] when e[i-1] != e[i-2] too, else halfway between t[i-1] and t[i], so in
#   (t[i-1], t[i]]. It depends on readings i-2, i-1 and i only, so from a snapshot's third
#   counter reading on every anchor is the one the whole ring has; the first two may
#   differ (the first is an anchor only without power, the second may be placed otherwise).
#   The kernel also moves an anchor that would not come after the previous one; with
#   increasing integer times that never happens below 2**52 ns, and above it only for reads
#   closer together than a double's resolution (1 us at 2**62 ns), which no poll is.
# * Steps. E(x) inside the step between anchors k and k+1 uses those two anchors, the
#   switch solved in that step and the power over it. So the counter snapshot must hold a
#   change at an index i >= 2 (with e[i-2], e[i-1], e[i] not NaN) read at or before start
#   (an anchor at or before start), and one with t[i-1] >= end (an anchor after end): every
#   step that meets [start, end] is then the whole ring's. A side where there is no such
#   change goes on to the ring's end, and is then the whole ring's (anchors are built from
#   the oldest reading on; past the newest nothing follows): so are the POWER and CLAMPED
#   regions beyond the first or last anchor, and the covered range's bounds on that side.
# * Power is held back: P(t) = P_j on (t_{j-1}, t_j]. The switch solver for a step reads the
#   power readings from the last at or before its first anchor through the first at or
#   after its second; S(x) needs those around x. The power snapshot runs from the last power
#   reading at or before min(start, first counter reading kept) through the first at or
#   after max(end, last counter reading kept): it spans the window and every anchor kept.
#   The point the kernel adds after the last power reading (that value held up to the last
#   read) can only sit elsewhere than in the whole ring past the anchors and the window
#   used, and it holds the same value.
# * Covered range [lo, hi]: a side with the context above has lo <= start (hi >= end) both
#   in the snapshot and in the whole ring, and lo and hi are only compared with times in
#   [start, end]; a side without it reaches the ring's end, as above.
#
# CONTEXT_NS and CONTEXT_READINGS (3 readings beyond the last at or before start and the
# first at or after end, of each stream) make the first try; then the conditions above are
# checked, and a side that lacks them widens (8-fold a try) up to the ring's end. For a GPU
# read every few ms, whose counter moves at every read, the first try holds: 2 * 2 s of
# context. The conditions alone make the result the whole rings' (the tests check it with a
# 1 ns margin too); the time margin keeps the usual case to one try of each stream.


@dataclass(frozen=True)
class DeviceEnergy:
    """Energy of one device over one interval.

    ``energy_j`` is None when nothing is known (never 0 for "unknown"). ``coverage`` is the
    fraction of the interval the readings cover; below 1 the quality is ``partial`` and the
    energy is that of the covered part.
    """

    device_id: str
    start_ns: int
    end_ns: int
    energy_j: float | None
    dynamic_energy_j: float | None
    idle_w: float | None
    avg_power_w: float | None
    peak_power_w: float | None
    quality: Quality
    coverage: float

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9


class DeviceTimeline:
    """The readings of one device, in a fixed-size native ring. Thread-safe."""

    def __init__(self, info: DeviceInfo, capacity: int = DEFAULT_CAPACITY) -> None:
        self.info = info
        # Counter and power readings are kept apart: a power sample may be dated before the
        # last counter read (see collectors.nvml.PublishedValue), and each stream stays in
        # time order on its own.
        self._counter = native.ReadingRing(capacity)
        self._power = native.ReadingRing(capacity)
        self._lock = threading.Lock()
        self._last_error: tuple[int, str] | None = None
        self._errors_ns: deque[int] = deque(maxlen=4096)
        self.out_of_order = 0

    # --- writing

    def add(self, reading: Reading) -> None:
        with self._lock:
            if reading.error is not None:
                self._errors_ns.append(reading.t_ns)
                self._last_error = (reading.t_ns, reading.error)
                return
            if reading.energy_j is not None:
                self._append(self._counter, reading.t_ns, float(reading.energy_j), NAN)
            if reading.power_w is not None:
                self._append(self._power, reading.t_ns, NAN, float(reading.power_w))

    def _append(self, ring, t_ns: int, energy_j: float, power_w: float) -> None:
        if len(ring) and t_ns <= ring.last_t_ns():
            self.out_of_order += 1  # a late or duplicate reading: never reorder history
            return
        ring.append(t_ns, energy_j, power_w)

    @property
    def _has_counter(self) -> bool:
        return len(self._counter) > 0

    @property
    def overruns(self) -> int:
        return self._counter.overruns + self._power.overruns

    @property
    def last_error(self) -> tuple[int, str] | None:
        return self._last_error

    def __len__(self) -> int:
        return len(self._counter) + len(self._power)

    def _snapshot(self, start_ns: int | None = None, end_ns: int | None = None):
        """Both streams, one after the other (the kernel reads each stream on its own).

        Without bounds, all the readings; with them, the readings a query over
        [start_ns, end_ns] needs for the same answer as from all of them (see the comment on
        ``CONTEXT_NS``)."""
        with self._lock:
            if start_ns is None or end_ns is None or not start_ns <= end_ns:  # or NaN
                tc, ec, pc = self._counter.snapshot()
                tp, ep, pp = self._power.snapshot()
            else:
                lo, hi = start_ns - CONTEXT_NS, end_ns + CONTEXT_NS
                tc, ec, pc = _context(self._counter, start_ns, end_ns, True, lo, hi)
                if len(tc):  # power over every counter reading kept, too
                    lo, hi = min(lo, tc[0]), max(hi, tc[-1])
                tp, ep, pp = _context(self._power, start_ns, end_ns, False, lo, hi)
        return tc + tp, ec + ep, pc + pp

    # --- reading

    def settled(self, t_ns: int) -> bool:
        """True once readings past ``t_ns`` fix the energy up to it as well as they ever will:
        a counter step after it for counter devices, a power reading after it otherwise."""
        t, e, p = self._snapshot(t_ns, t_ns)
        if not len(t):
            return False
        _, methods, _, hi = native.energy_at(t, e, p, [t_ns])
        if self._has_counter:
            return methods[0] == native.METHOD_COUNTER and hi >= t_ns
        return hi >= t_ns

    def watermark_ns(self) -> int | None:
        """The latest time whose energy is settled: the last counter step for counter
        devices (a step dates everything before it), else the last power reading."""
        with self._lock:
            ring = self._counter if len(self._counter) else self._power
            return ring.last_t_ns() - 1 if len(ring) else None

    def errors_between(self, t0_ns: int, t1_ns: int) -> int:
        with self._lock:
            return sum(1 for t in self._errors_ns if t0_ns <= t <= t1_ns)

    def baseline_w(self) -> float | None:
        """The idle baseline: configured, else a low percentile of the power over the last
        ``BASELINE_HISTORY_NS`` of readings."""
        if self.info.idle_w is not None:
            return self.info.idle_w
        with self._lock:
            last = max((r.last_t_ns() for r in (self._counter, self._power) if len(r)),
                       default=None)
        if last is None:
            return None
        since = last - BASELINE_HISTORY_NS
        t, e, p = self._snapshot(since, last)
        if len(t) < 2:
            return None
        pieces = _pieces(t, e, p, max(since, min(t)), max(t))
        powers = sorted(w for _, _, w in pieces if w == w)
        if not powers:
            return None
        k = min(len(powers) - 1, int(len(powers) * IDLE_PERCENTILE / 100.0))
        return powers[k]

    def energies(self, bounds_ns: list[int], baseline_w: float | None = None) -> list[DeviceEnergy]:
        """Energy over each consecutive interval [bounds[i], bounds[i+1]]."""
        if len(bounds_ns) < 2:
            return []
        t, e, p = self._snapshot(min(bounds_ns), max(bounds_ns))
        values, methods, lo, hi = native.energy_at(t, e, p, bounds_ns)
        # Breakpoints over the whole span at once, then split per interval.
        pieces = _pieces(t, e, p, bounds_ns[0], bounds_ns[-1]) if len(t) else []
        results = []
        j = 0
        for i in range(len(bounds_ns) - 1):
            a, b = bounds_ns[i], bounds_ns[i + 1]
            mine = []
            while j < len(pieces) and pieces[j][1] <= a:
                j += 1
            k = j
            while k < len(pieces) and pieces[k][0] < b:
                mine.append(pieces[k])
                k += 1
            results.append(
                self._figure(a, b, values[i], values[i + 1], methods[i], methods[i + 1],
                             lo, hi, mine, baseline_w)
            )
        return results

    def energy_between(self, t0_ns: int, t1_ns: int,
                       baseline_w: float | None = None) -> DeviceEnergy:
        return self.energies([t0_ns, t1_ns], baseline_w)[0]

    def energy_pieces(self, start_ns: int, end_ns: int, baseline_w: float | None = None
                      ) -> tuple[DeviceEnergy, list[tuple[int, int, float, int]]]:
        """The figure over [start, end] and the curve behind it, both from one snapshot.

        The pieces ``(s_ns, f_ns, energy_j, covered_ns)`` tile [start, end] at the kernel's
        breakpoints, so power is constant on each. ``energy_j`` is E(f) - E(s), so the pieces
        add up to the figure's E(end) - E(start) to rounding (a piece outside the covered
        range, where E is clamped, has 0 J); ``covered_ns`` is the part of the piece inside
        the covered range, and the piece's power ``energy_j / (covered_ns * 1e-9)`` is
        unknown where it is 0. No pieces when the figure is unknown (``energy_j`` None).
        """
        t, e, p = self._snapshot(start_ns, end_ns) if end_ns > start_ns else ((),) * 3
        if not len(t):
            none = native.METHOD_NONE
            return self._figure(start_ns, end_ns, NAN, NAN, none, none, -1, -1, [],
                                baseline_w), []
        points = [start_ns, *native.breakpoints_ns(t, e, p, start_ns, end_ns), end_ns]
        values, methods, lo, hi = native.energy_at(t, e, p, points)
        pieces = []
        for s, f, e0, e1 in zip(points, points[1:], values, values[1:], strict=False):
            covered = (f if f < hi else hi) - (s if s > lo else lo)
            pieces.append((s, f, e1 - e0, covered if covered > 0 else 0))
        # Fully covered pieces, as (s, f, power_w), for the peak and dynamic energy.
        shaped = _covered_power(points, values, lo, hi)
        figure = self._figure(start_ns, end_ns, values[0], values[-1], methods[0], methods[-1],
                              lo, hi, shaped, baseline_w)
        return figure, (pieces if figure.energy_j is not None else [])

    def _figure(self, a, b, e0, e1, m0, m1, lo, hi, pieces, baseline_w) -> DeviceEnergy:
        dev = self.info.device_id
        if m0 == native.METHOD_NONE or m1 == native.METHOD_NONE or b <= a:
            return DeviceEnergy(dev, a, b, None, None, baseline_w, None, None, Quality.PARTIAL, 0.0)
        covered_ns = max(0, min(b, hi) - max(a, lo))
        coverage = min(1.0, covered_ns / (b - a))
        energy = max(0.0, e1 - e0)
        quality = self.info.quality
        if quality is Quality.MEASURED and native.METHOD_POWER in (m0, m1):
            quality = Quality.SAMPLED
        if (native.METHOD_CLAMPED in (m0, m1) or coverage < 1.0
                or self.errors_between(a, b)):
            quality = Quality.PARTIAL
        if covered_ns == 0:
            return DeviceEnergy(dev, a, b, None, None, baseline_w, None, None, Quality.PARTIAL, 0.0)
        peak = None
        dynamic = None
        clipped = [(max(s, a), min(f, b), w) for s, f, w in pieces if min(f, b) > max(s, a)]
        powers = [w for _, _, w in clipped if w == w]
        if powers:
            peak = max(powers)
        if baseline_w is not None:
            if clipped:
                dynamic = sum(max(w - baseline_w, 0.0) * (f - s) * 1e-9 for s, f, w in clipped)
            else:
                dynamic = max(0.0, energy - baseline_w * covered_ns * 1e-9)
        return DeviceEnergy(
            device_id=dev,
            start_ns=a,
            end_ns=b,
            energy_j=energy,
            dynamic_energy_j=dynamic,
            idle_w=baseline_w,
            avg_power_w=energy / (covered_ns * 1e-9),
            peak_power_w=peak,
            quality=quality,
            coverage=coverage,
        )


def _context(ring, start_ns: int, end_ns: int, counter: bool, lo_ns: int, hi_ns: int):
    """Ranged snapshot of ``ring`` for a query over [start_ns, end_ns], first tried over
    [lo_ns, hi_ns], widened on each side that lacks the context the kernel needs there
    (see the comment on ``CONTEXT_NS``)."""
    if not len(ring):
        return ring.snapshot()
    first, last = ring.first_t_ns(), ring.last_t_ns()
    lo = lo_ns if lo_ns > first else None
    hi = hi_ns if hi_ns < last else None
    while True:
        t, e, p = ring.snapshot(lo, hi)
        # A side that reaches the ring's end is the whole ring's.
        wider_lo = (lo is not None and t[0] != first
                    and not _context_before(t, e, start_ns, counter))
        wider_hi = (hi is not None and t[-1] != last
                    and not _context_after(t, e, end_ns, counter))
        if not (wider_lo or wider_hi):
            return t, e, p
        if wider_lo:
            lo = start_ns - max(8 * (start_ns - lo), CONTEXT_NS)
            lo = lo if lo > first else None
        if wider_hi:
            hi = end_ns + max(8 * (hi - end_ns), CONTEXT_NS)
            hi = hi if hi < last else None


def _context_before(t, e, start_ns: int, counter: bool) -> bool:
    """Enough readings at or before ``start_ns``: CONTEXT_READINGS beyond the last one, and
    for a counter a change at index i >= 2 read at or before it (an anchor the whole ring
    places there too)."""
    k = CONTEXT_READINGS
    if len(t) <= k or t[k] > start_ns:
        return False
    if not counter:
        return True
    for i in range(2, len(t)):
        if t[i] > start_ns:
            return False
        c, b = e[i], e[i - 1]
        if c != b and c == c and b == b and e[i - 2] == e[i - 2]:
            return True
    return False


def _context_after(t, e, end_ns: int, counter: bool) -> bool:
    """Enough readings at or after ``end_ns``: CONTEXT_READINGS beyond the first one, and
    for a counter a change at index i >= 2 whose previous reading is at or after it (an
    anchor after ``end_ns`` that the whole ring places there too)."""
    n, k = len(t), CONTEXT_READINGS
    if n <= k or t[n - 1 - k] < end_ns:
        return False
    if not counter:
        return True
    for i in range(n - 1, 1, -1):
        if t[i - 1] < end_ns:
            return False
        c, b = e[i], e[i - 1]
        if c != b and c == c and b == b and e[i - 2] == e[i - 2]:
            return True
    return False


def _pieces(t, e, p, start_ns: int, end_ns: int) -> list[tuple[int, int, float]]:
    """The reconstructed curve as (start, end, power_w) pieces of constant power."""
    inner = list(native.breakpoints_ns(t, e, p, start_ns, end_ns))
    points = [start_ns, *inner, end_ns]
    values, _, lo, hi = native.energy_at(t, e, p, points)
    return _covered_power(points, values, lo, hi)


def _covered_power(points, values, lo: int, hi: int) -> list[tuple[int, int, float]]:
    """(start, end, power_w) of the pieces between consecutive ``points`` that lie wholly
    inside the covered range [lo, hi], from the energies ``values`` at the points."""
    return [(s, f, (e1 - e0) / ((f - s) * 1e-9))
            for s, f, e0, e1 in zip(points, points[1:], values, values[1:], strict=False)
            if f > s and lo <= s and f <= hi]


class Timeline:
    """All device timelines of one host, keyed by device id."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self.devices: dict[str, DeviceTimeline] = {}

    def add_device(self, info: DeviceInfo) -> DeviceTimeline:
        timeline = self.devices.get(info.device_id)
        if timeline is None:
            timeline = self.devices[info.device_id] = DeviceTimeline(info, self._capacity)
        return timeline

    def add(self, reading: Reading) -> None:
        timeline = self.devices.get(reading.device_id)
        if timeline is not None:
            timeline.add(reading)

    def __getitem__(self, device_id: str) -> DeviceTimeline:
        return self.devices[device_id]

    def __iter__(self):
        return iter(self.devices.values())
