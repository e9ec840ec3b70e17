"""Sharing each device's measured energy among the spans active on it (DESIGN.md, "Attribution").

For every device d and every instant t, the spans active on d (``d in span.devices`` and
``start_ns <= t < end_ns``) share the power P_d(t) in proportion to their weights:

    energy_j(s, d)         = ∫ P_d(t)             · w_s / Σ_active w  dt
    dynamic_energy_j(s, d) = ∫ max(P_d(t) - B_d, 0) · w_s / Σ_active w  dt

Energy while no span is active on d goes to d's unattributed bucket, so per device and window
``Σ span shares + unattributed == E_d(end) - E_d(start)`` to floating-point rounding.

:class:`Attributor` is a deterministic state machine (no threads, no clock): the agent calls
``advance(until, spans)`` with the spans overlapping ``[cursor, until]`` and later ``take(key)``
for each span whose end the cursor has passed.

How a window is computed, per device:

* The timeline gives the figure over the window and the reconstructed curve as pieces of
  constant power, from one snapshot (``DeviceTimeline.energy_pieces``). A piece's energy is
  the difference of E at its bounds, so the pieces add up to the figure exactly (to rounding);
  a piece cut by a span boundary is split in proportion to time (E is linear on a piece).
* The spans' start/end events are sorted once per window and walked against the cumulative
  energy of the pieces; between two consecutive events the set of active spans is constant
  (an "epoch"), so its energy and dynamic energy are computed once and shared out by weight.
* Dynamic energy uses B_d: the configured ``idle_w`` (constructor, else ``DeviceInfo.idle_w``),
  else B learned as the 5th percentile of the power of the last ``IDLE_HISTORY`` pieces during
  which no span was active on d (learned from the windows *before* this one, so a window's
  figures do not depend on themselves), else the timeline's ``baseline_w()`` (cached: it scans
  the whole ring), else the lowest piece power in the window. The B used is reported in
  ``DeviceInterval.idle_w``.

Choices the contract leaves open:

* **Weights.** A weight that is not a finite number > 0 counts as 0: such a span gets nothing
  while a span of positive weight is active. When every active span has weight 0, they split
  the power equally (the time is theirs; nobody else can claim it).
* **process_share** (``{device: {pid: fraction}}``, e.g. CPU time for the CPU package): each
  instant's energy is first split by process, then among that process's active spans by
  weight. A process's fraction while it has no active span, the fractions of processes with
  no span at all, and ``1 - Σ fractions`` go to unattributed; a span whose pid has no fraction
  gets 0 J on that device (its process did not use it). Negative or non-finite fractions count
  as 0; fractions summing to more than 1 are scaled down to sum to 1.
* **Unknown is never 0.** When a device's energy over a window is unknown (the figure's
  ``energy_j`` is None) nothing is shared on it: the window's ``DeviceInterval`` carries None
  energies, and each span active there on that device keeps what the known windows gave it
  with quality ``partial``. A device whose energy was unknown in *every* window of a span is
  left out of that span's ``SpanEnergy.devices`` (its energy is not known, so no number is
  given), and the span's overall quality is ``partial``.
* **Quality.** A span's share on d has the worst quality of d's figures over the windows in
  which the span was active on d. It is ``partial`` on every device when the span's status is
  ``incomplete``, when it began before the first window it was given in (its begin arrived
  late: energy before that window was never shared with it), or when it is taken before the
  cursor has passed its end.
* Devices a span names that the timeline does not have are ignored for that span.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from itertools import accumulate

from wattspan.agent.spans import DeviceInterval, DeviceShare, Span, SpanEnergy
from wattspan.agent.timeline import DeviceTimeline, Timeline
from wattspan.collectors.base import Quality

#: Percentile of idle-piece power taken as the learned baseline.
IDLE_PERCENTILE = 5.0
#: Idle piece powers kept per device for the learned baseline (bounded memory).
IDLE_HISTORY = 2048
#: Fewer idle pieces than this: the baseline is not learned yet.
MIN_IDLE_PIECES = 16
#: How long (timeline time) the timeline's whole-ring ``baseline_w()`` is reused.
BASELINE_REFRESH_NS = 60 * 1_000_000_000

_QUALITIES = list(Quality)
_RANK = {q: i for i, q in enumerate(_QUALITIES)}
_PARTIAL = _RANK[Quality.PARTIAL]
_INF = math.inf

# A span's running share of one device: [energy_j, dynamic_energy_j, worst quality rank,
# some window known, some window unknown].
_E, _D, _Q, _KNOWN, _UNKNOWN = range(5)


class _Accumulated:
    __slots__ = ("span", "cells", "began_unseen", "window")

    def __init__(self, span: Span, began_unseen: bool) -> None:
        self.span = span
        self.cells: dict[str, list] = {}
        self.began_unseen = began_unseen
        self.window = -1  # the last window that counted it: a span given twice counts once


class Attributor:
    """Attributes device energy to spans, window after window (see the module docstring)."""

    def __init__(self, timeline: Timeline, *, idle_w: dict[str, float] | None = None) -> None:
        self.timeline = timeline
        self.cursor_ns: int | None = None
        #: Start of the first window: spans that began earlier are partial.
        self.origin_ns: int | None = None
        self._idle_w = dict(idle_w or {})
        self._acc: dict[tuple[int, int], _Accumulated] = {}
        self._idle: dict[str, deque[float]] = {}
        self._learned: dict[str, float | None] = {}  # cached percentile; absent when stale
        self._fallback: dict[str, tuple[int, float | None]] = {}
        self._windows = 0

    # --- public

    @property
    def pending(self) -> int:
        """Spans with accumulated energy not yet taken."""
        return len(self._acc)

    def baseline_w(self, device_id: str) -> float | None:
        """The baseline the next window of ``device_id`` would use (None: not known yet)."""
        timeline = self.timeline.devices.get(device_id)
        if timeline is None:
            return None
        at = self.cursor_ns if self.cursor_ns is not None else 0
        return self._baseline(device_id, timeline, at)[0]

    def advance(self, until_ns: int, spans: Iterable[Span], *,
                process_share: dict[str, dict[int, float]] | None = None,
                start_ns: int | None = None) -> list[DeviceInterval]:
        """Attribute the window [cursor, until] (or [start_ns, until] on the first call).

        ``spans``: every span that overlaps the window, with its final weight, or its current
        one if still open (``end_ns`` None: active until at least ``until``). On the first
        call without ``start_ns`` the window starts at the earliest span start. Later calls
        continue from the cursor (a ``start_ns`` given then must equal it). Returns one
        ``DeviceInterval`` per device of the timeline (none when the window is empty).
        """
        if self.cursor_ns is None:
            if start_ns is None:
                spans = list(spans)
                start_ns = min((s.start_ns for s in spans), default=until_ns)
                start_ns = min(start_ns, until_ns)
            if until_ns < start_ns:
                raise ValueError(f"window ends ({until_ns}) before it starts ({start_ns})")
            self.origin_ns = start_ns
        else:
            if start_ns is not None and start_ns != self.cursor_ns:
                raise ValueError(f"start_ns {start_ns} is not the cursor {self.cursor_ns}: "
                                 "windows must follow each other")
            start_ns = self.cursor_ns
            if until_ns < start_ns:
                raise ValueError(f"until_ns {until_ns} is before the cursor {start_ns}")
        a, b = int(start_ns), int(until_ns)
        self.cursor_ns = b
        if b == a:
            return []

        self._windows += 1
        window = self._windows
        devices = self.timeline.devices
        per_device: dict[str, list] = {d: [] for d in devices}
        acc_by_key = self._acc
        for span in spans:
            s, e = span.start_ns, span.end_ns
            s0 = s if s > a else a
            s1 = b if e is None or e > b else e
            if s1 <= s0 and not (e == s and a <= s < b):
                continue  # outside the window (a span of zero length inside it is kept)
            key = (span.pid, span.span_id)
            acc = acc_by_key.get(key)
            if acc is None:
                acc = acc_by_key[key] = _Accumulated(span, s < a)  # began unseen: partial
            elif acc.window == window:
                continue
            else:
                acc.span = span
            acc.window = window
            w = span.weight
            if not 0.0 < w < _INF:  # also NaN
                w = 0.0
            cells = acc.cells
            used = span.devices
            if len(used) > 1:
                used = dict.fromkeys(used)  # each device once
            for d in used:
                entries = per_device.get(d)
                if entries is None:
                    continue
                cell = cells.get(d)
                if cell is None:
                    cell = cells[d] = [0.0, 0.0, -1, False, False]
                entries.append((s0, s1, w, cell, span.pid))

        intervals = []
        for d, timeline in devices.items():
            intervals.append(self._device_window(
                d, timeline, a, b, per_device[d],
                process_share.get(d) if process_share else None))
        return intervals

    def take(self, key: tuple[int, int]) -> SpanEnergy | None:
        """Pop the accumulated result of span ``key`` (None if it got no window)."""
        acc = self._acc.pop(key, None)
        if acc is None:
            return None
        span = acc.span
        partial_all = (span.status == "incomplete" or acc.began_unseen or span.end_ns is None
                       or self.cursor_ns is None or span.end_ns > self.cursor_ns)
        worst = 0
        partial = partial_all
        shares = {}
        for d, cell in acc.cells.items():
            if not cell[_KNOWN]:
                partial = True  # unknown in every window: no number for this device
                continue
            rank = _PARTIAL if partial_all or cell[_UNKNOWN] else cell[_Q]
            if rank > worst:
                worst = rank
            shares[d] = DeviceShare(cell[_E], cell[_D], _QUALITIES[rank])
        if partial or not shares:
            worst = _PARTIAL
        return SpanEnergy(span, shares, _QUALITIES[worst])

    # --- one device over one window

    def _device_window(self, d: str, timeline: DeviceTimeline, a: int, b: int,
                       entries: list, share: dict[int, float] | None) -> DeviceInterval:
        baseline, learning = self._baseline(d, timeline, b)
        # Only the figure's energy, quality and coverage are used: no baseline, which spares
        # it a dynamic-energy sum of its own.
        figure, pieces = timeline.energy_pieces(a, b)
        rank = _RANK[figure.quality]
        known = figure.energy_j is not None
        flag = _KNOWN if known else _UNKNOWN
        for entry in entries:
            cell = entry[3]
            if rank > cell[_Q]:
                cell[_Q] = rank
            cell[flag] = True
        if not known or not pieces:
            return DeviceInterval(d, a, b, figure.energy_j, None if not known else 0.0,
                                  figure.energy_j, baseline, figure.quality)

        if baseline is None:  # no data to learn from yet: the lowest power in this window
            powers = [e / (c * 1e-9) for _, _, e, c in pieces if c]
            baseline = min(powers) if powers else None
        floor_w = baseline if baseline is not None else 0.0
        starts = [p[0] for p in pieces]
        durations = [p[1] - p[0] for p in pieces]
        energies = [p[2] for p in pieces]
        above = [e - floor_w * c * 1e-9 for _, _, e, c in pieces]  # uncovered: ~0 J anyway
        dynamic = [x if x > 0.0 else 0.0 for x in above]
        f_cum = list(accumulate(energies, initial=0.0))
        g_cum = list(accumulate(dynamic, initial=0.0))
        curve = (starts, durations, energies, dynamic, f_cum, g_cum)
        total = f_cum[-1]

        if share is None:
            attributed, unattributed = _sweep(entries, curve, a, 1.0)
        else:
            fractions = _fractions(share)
            groups: dict[int, list] = {}
            for entry in entries:
                groups.setdefault(entry[4], []).append(entry)
            attributed = 0.0
            for pid, group in groups.items():
                fraction = fractions.get(pid, 0.0)
                if fraction > 0.0:
                    active, _ = _sweep(group, curve, a, fraction)
                    attributed += fraction * active
            unattributed = total - attributed

        if learning:
            self._learn(d, pieces, entries)
        return DeviceInterval(d, a, b, figure.energy_j, attributed, unattributed, baseline,
                              figure.quality)

    # --- baseline

    def _baseline(self, d: str, timeline: DeviceTimeline, now_ns: int
                  ) -> tuple[float | None, bool]:
        """(B, whether idle pieces should be learned from)."""
        configured = self._idle_w.get(d)
        if configured is None:
            configured = timeline.info.idle_w
        if configured is not None:
            return float(configured), False
        if d in self._learned:
            learned = self._learned[d]
        else:
            learned = self._learned[d] = _percentile(self._idle.get(d))
        if learned is not None:
            return learned, True
        cached = self._fallback.get(d)
        if cached is None or cached[1] is None or now_ns - cached[0] >= BASELINE_REFRESH_NS:
            cached = self._fallback[d] = (now_ns, timeline.baseline_w())
        return cached[1], True

    def _learn(self, d: str, pieces: list, entries: list) -> None:
        """Remember the power of the fully covered pieces during which no span was active."""
        busy: list[list[int]] = []
        for s0, s1 in sorted((e[0], e[1]) for e in entries if e[1] > e[0]):
            if busy and s0 <= busy[-1][1]:
                if s1 > busy[-1][1]:
                    busy[-1][1] = s1
            else:
                busy.append([s0, s1])
        history = self._idle.get(d)
        if history is None:
            history = self._idle[d] = deque(maxlen=IDLE_HISTORY)
        k, n = 0, len(busy)
        added = False
        for s, f, e, covered in pieces:
            if covered != f - s:
                continue
            while k < n and busy[k][1] <= s:
                k += 1
            if k < n and busy[k][0] < f:
                continue
            history.append(e / (covered * 1e-9))
            added = True
        if added:
            self._learned.pop(d, None)


def _percentile(history: deque[float] | None) -> float | None:
    if history is None or len(history) < MIN_IDLE_PIECES:
        return None
    powers = sorted(history)
    k = min(len(powers) - 1, int(len(powers) * IDLE_PERCENTILE / 100.0))
    return powers[k]


def _fractions(share: dict[int, float]) -> dict[int, float]:
    out = {pid: (f if 0.0 < f < _INF else 0.0) for pid, f in share.items()}
    total = math.fsum(out.values())
    if total > 1.0:
        out = {pid: f / total for pid, f in out.items()}
    return out


def _sweep(entries: list, curve: tuple, a: int, scale: float) -> tuple[float, float]:
    """Share the curve among ``entries`` ((s0, s1, weight, cell, pid), inside the window),
    adding ``scale`` times each share to the cells. Returns the (unscaled) energy of the time
    during which some entry was active, and that of the time during which none was.

    The distinct event times cut the window into epochs, each with a constant set of active
    entries. One walk gives every epoch its energy per unit of weight; an entry is active over
    a contiguous run of epochs, so its share is its weight times the exact sum (``fsum``) of
    that run: no per-epoch loop over the active entries, and no cancellation between
    cumulative sums however much the weights differ.
    """
    starts, durations, energies, dynamic, f_cum, g_cum = curve
    events = []
    for i, entry in enumerate(entries):
        s0, s1 = entry[0], entry[1]
        if s1 > s0:
            events.append((s0, 1, i))
            events.append((s1, 0, i))
    if not events:
        return 0.0, f_cum[-1]
    events.sort()
    n_entries = len(entries)
    first = [0] * n_entries  # the entry's first epoch
    last = [0] * n_entries  # one past its last epoch
    r_f: list[float] = []  # per epoch: energy per unit of weight (per entry when all are 0)
    r_g: list[float] = []
    zero_f: list[float] | None = None  # the same, only where every active weight is 0
    zero_g: list[float] | None = None

    active: dict[int, float] = {}  # entry -> weight, over the current epoch
    total_w = 0.0
    positive = 0
    prev_t, prev_f, prev_g = a, 0.0, 0.0
    j = 0
    active_e = idle_e = 0.0
    k, m = 0, len(events)
    while k < m:
        t = events[k][0]
        if t > prev_t:
            # Cumulative energy at t: the piece holding t, split in proportion to time.
            j = bisect_right(starts, t, j) - 1
            frac = (t - starts[j]) / durations[j]
            f_t = f_cum[j] + energies[j] * frac
            g_t = g_cum[j] + dynamic[j] * frac
            d_f = f_t - prev_f
            if not active:
                idle_e += d_f
            else:
                active_e += d_f
                if positive:
                    r_f.append(d_f / total_w)
                    r_g.append((g_t - prev_g) / total_w)
                    if zero_f is not None:
                        zero_f.append(0.0)
                        zero_g.append(0.0)
                else:  # every active weight is 0: equal shares
                    n = len(active)
                    if zero_f is None:
                        zero_f, zero_g = [0.0] * len(r_f), [0.0] * len(r_g)
                    r_f.append(d_f / n)
                    r_g.append((g_t - prev_g) / n)
                    zero_f.append(r_f[-1])
                    zero_g.append(r_g[-1])
            prev_t, prev_f, prev_g = t, f_t, g_t
        # Epochs are numbered over active time only (an idle gap has no entry to pay):
        # an entry is active over the epochs [first, last).
        removed = False
        epoch = len(r_f)
        while k < m and events[k][0] == t:
            _, starting, i = events[k]
            w = entries[i][2]
            if starting:
                first[i] = epoch
                active[i] = w
                if w:
                    positive += 1
                    total_w += w
            else:
                last[i] = epoch
                del active[i]
                if w:
                    positive -= 1
                    removed = True
            k += 1
        if removed:  # recompute rather than subtract: no cancellation with mixed magnitudes
            total_w = sum(active.values()) if positive else 0.0
    # Every entry ends by the window's end: the rest of the window is idle.
    idle_e += f_cum[-1] - prev_f
    fsum = math.fsum
    for i, entry in enumerate(entries):
        lo, hi = first[i], last[i]
        if hi <= lo:
            continue
        w, cell = entry[2], entry[3]
        if w:
            cell[0] += scale * w * fsum(r_f[lo:hi])
            cell[1] += scale * w * fsum(r_g[lo:hi])
        elif zero_f is not None:
            cell[0] += scale * fsum(zero_f[lo:hi])
            cell[1] += scale * fsum(zero_g[lo:hi])
    return active_e, idle_e
