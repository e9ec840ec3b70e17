"""Per-device reading series and energy over any interval, with its quality.

The sampler appends readings; readers ask for the energy over [t0, t1]. Reconstruction of the
cumulative energy curve is the native kernel's job (``wattspan.native.energy_at``): counter
deltas where a counter exists, shaped inside each counter step by the power readings, else the
integral of power. This module turns its answers into figures with a quality and a coverage.
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

    def _snapshot(self):
        """Both streams, one after the other (the kernel reads each stream on its own)."""
        with self._lock:
            tc, ec, pc = self._counter.snapshot()
            tp, ep, pp = self._power.snapshot()
        return tc + tp, ec + ep, pc + pp

    # --- reading

    def settled(self, t_ns: int) -> bool:
        """True once readings past ``t_ns`` fix the energy up to it as well as they ever will:
        a counter step after it for counter devices, a power reading after it otherwise."""
        t, e, p = self._snapshot()
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
        """The idle baseline: configured, else a low percentile of the power seen so far."""
        if self.info.idle_w is not None:
            return self.info.idle_w
        t, e, p = self._snapshot()
        if len(t) < 2:
            return None
        pieces = _pieces(t, e, p, min(t), max(t))
        powers = sorted(w for _, _, w in pieces if w == w)
        if not powers:
            return None
        k = min(len(powers) - 1, int(len(powers) * IDLE_PERCENTILE / 100.0))
        return powers[k]

    def energies(self, bounds_ns: list[int], baseline_w: float | None = None) -> list[DeviceEnergy]:
        """Energy over each consecutive interval [bounds[i], bounds[i+1]]."""
        if len(bounds_ns) < 2:
            return []
        t, e, p = self._snapshot()
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
        t, e, p = self._snapshot()
        if not len(t) or end_ns <= start_ns:
            none = native.METHOD_NONE
            return self._figure(start_ns, end_ns, NAN, NAN, none, none, -1, -1, [],
                                baseline_w), []
        points = [start_ns, *native.breakpoints_ns(t, e, p, start_ns, end_ns), end_ns]
        values, methods, lo, hi = native.energy_at(t, e, p, points)
        pieces = []
        shaped = []  # fully covered pieces, as (s, f, power_w), for the peak and dynamic energy
        for s, f, e0, e1 in zip(points, points[1:], values, values[1:], strict=False):
            if lo <= s and f <= hi:
                pieces.append((s, f, e1 - e0, f - s))
                shaped.append((s, f, (e1 - e0) / ((f - s) * 1e-9)))
                continue
            covered = (f if f < hi else hi) - (s if s > lo else lo)
            pieces.append((s, f, e1 - e0, covered if covered > 0 else 0))
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


def _pieces(t, e, p, start_ns: int, end_ns: int) -> list[tuple[int, int, float]]:
    """The reconstructed curve as (start, end, power_w) pieces of constant power."""
    inner = list(native.breakpoints_ns(t, e, p, start_ns, end_ns))
    points = [start_ns, *inner, end_ns]
    values, _, lo, hi = native.energy_at(t, e, p, points)
    pieces = []
    for i in range(len(points) - 1):
        s, f = points[i], points[i + 1]
        if f <= s or s < lo or f > hi:
            continue
        pieces.append((s, f, (values[i + 1] - values[i]) / ((f - s) * 1e-9)))
    return pieces


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
