"""Dating the updates of values a device refreshes on its own fixed period.

NVML's energy counter steps every 10-100 ms and instant power is republished every 20-100 ms;
the sampler reads them more often, so most reads return the previous value again. A change
seen at a read says only that the update fell between the previous read and this one.
Dating it at the middle of that window is off by up to half a sampling period, which shows
next to large power swings (a 200 ms step that is mostly idle after a 400 W burst).

Because the updates are periodic, every window constrains one phase and period: update i
lies at ``u0 + n_i * period`` with ``a_i < u0 + n_i * period <= b_i``. The sampler dithers its
reads against its own grid (see ``agent.sampler``), so the windows fall at different phases
and their intersection narrows to a small fraction of a sampling period. ``UpdateDater`` fits
``(u0, period)`` to the recent windows and dates each change inside its own window, falling
back to the window's middle whenever no consistent fit exists (an irregular device).
"""

from __future__ import annotations

from collections import deque

from wattspan.collectors.base import Reading

#: Windows kept for the fit: a few seconds of updates, short enough to follow slow drift.
HISTORY = 48
#: Fewer windows than this give no fit yet.
MIN_WINDOWS = 6


class UpdateDater:
    """Dates changes of one periodically updated value (all times in ns)."""

    __slots__ = ("_windows", "_fit", "_since_fit")

    def __init__(self) -> None:
        self._windows: deque[tuple[int, int]] = deque(maxlen=HISTORY)
        self._fit: tuple[float, float] | None = None
        self._since_fit = 0

    @property
    def period_ns(self) -> float | None:
        return self._fit[1] if self._fit else None

    def date(self, previous_read_ns: int, read_ns: int) -> int:
        """When the change first seen at ``read_ns`` (not at ``previous_read_ns``) happened."""
        self._windows.append((previous_read_ns, read_ns))
        self._since_fit += 1
        if self._fit is None or self._since_fit >= 4 or not self._inside(*self._windows[-1]):
            self._fit = fit_periodic(self._windows)
            self._since_fit = 0
        if self._fit is not None:
            u0, period = self._fit
            n = round((read_ns - u0) / period)
            for k in (n, n - 1):
                u = u0 + k * period
                if previous_read_ns < u <= read_ns:
                    return int(u)
        return (previous_read_ns + read_ns) // 2

    def _inside(self, a: int, b: int) -> bool:
        if self._fit is None:
            return False
        u0, period = self._fit
        k = round((b - u0) / period)
        return any(a < u0 + j * period <= b for j in (k, k - 1))


def fit_periodic(windows) -> tuple[float, float] | None:
    """``(u0, period)`` such that every window (a, b] holds one ``u0 + n * period``, taking the
    middle of the feasible set; None when the windows admit no such fit.

    The period is first estimated from the windows' middles (shortest gap, then least squares
    as the windows are taken in one by one), then refined by a ternary search for the period
    that leaves the widest intersection, a concave function of the period once each window's
    multiple is fixed.
    """
    if len(windows) < MIN_WINDOWS:
        return None
    lo = [a for a, _ in windows]
    hi = [b for _, b in windows]
    mids = [(a + b) / 2 for a, b in windows]
    widest = max(b - a for a, b in windows)
    gaps = [mids[i + 1] - mids[i] for i in range(len(mids) - 1)]
    period = min(gaps)
    if period <= 2 * widest:
        return None  # updates about as fast as the reads: the windows already date them
    # Multiples of the period, assigned window by window while the period is refined by
    # least squares over the windows so far, so errors never accumulate over many periods.
    idx = [0]
    sum_i = sum_m = sum_ii = sum_im = 0.0
    sum_m += mids[0]
    for i in range(1, len(mids)):
        k = round((mids[i] - mids[0]) / period)
        if k <= idx[-1]:
            return None
        idx.append(k)
        sum_i += k
        sum_m += mids[i]
        sum_ii += k * k
        sum_im += k * mids[i]
        n = i + 1
        var = sum_ii - sum_i * sum_i / n
        if var > 0:
            period = (sum_im - sum_i * sum_m / n) / var

    def width(p: float) -> float:
        return (min(b - k * p for b, k in zip(hi, idx, strict=True))
                - max(a - k * p for a, k in zip(lo, idx, strict=True)))

    span = widest / max(1, idx[-1])
    p_lo, p_hi = period - span, period + span
    for _ in range(40):
        m1 = p_lo + (p_hi - p_lo) / 3
        m2 = p_hi - (p_hi - p_lo) / 3
        if width(m1) < width(m2):
            p_lo = m1
        else:
            p_hi = m2
    period = (p_lo + p_hi) / 2
    if width(period) <= 0:
        return None
    upper = min(b - k * period for b, k in zip(hi, idx, strict=True))
    lower = max(a - k * period for a, k in zip(lo, idx, strict=True))
    return (upper + lower) / 2, period


class PublishedValue:
    """Turns polled reads of a value the board republishes on its own period into dated
    samples.

    Instant power is republished every 20 ms (Volta) to 100 ms (A100/H100), each value
    describing the period before its publication; a read that returns the previous value
    again carries nothing new. When the value changes, it was published within the read
    window (dated by ``UpdateDater``), and it covers one period back from there: the old value
    held until then. A change therefore yields the old value dated at the start of the new
    period (when that is later than the last sample) and the new value at its publication.
    The timeline holds power backwards from each sample, so both land where they belong
    instead of one period late.
    """

    __slots__ = ("nominal_period_ns", "_dater", "_value", "_last_sample_ns")

    def __init__(self, nominal_period_ns: int) -> None:
        self.nominal_period_ns = nominal_period_ns
        self._dater = UpdateDater()
        self._value = None
        self._last_sample_ns = 0

    def restart(self) -> None:
        self._value = None

    def update(self, previous_read_ns: int | None, read_ns: int, value) -> list[tuple[int, float]]:
        """The ``(t_ns, value)`` samples that a read at ``read_ns`` adds."""
        if self._value is None or previous_read_ns is None:
            self._value = value
            self._last_sample_ns = read_ns
            return [(read_ns, value)]
        if value == self._value:
            return []
        published_ns = self._dater.date(previous_read_ns, read_ns)
        # A fitted period can be a multiple of the true one while the value rarely changes.
        period_ns = min(self._dater.period_ns or self.nominal_period_ns, self.nominal_period_ns)
        samples = []
        period_start_ns = int(published_ns - period_ns)
        if period_start_ns > self._last_sample_ns:
            samples.append((period_start_ns, self._value))
        samples.append((published_ns, value))
        self._value = value
        self._last_sample_ns = published_ns
        return samples


class DatedReadings:
    """Readings of one device whose energy counter steps and whose power is republished on
    their own periods: only what changed, each dated when it happened.

    A counter step is passed on as two readings: the old value just before the step and the
    new value at it (a re-read of an unchanged counter says nothing more), so the timeline's
    kernel anchors the step at its dated time.
    """

    __slots__ = ("device_id", "_counter_dater", "_power", "_last_read_ns", "_last_energy_j")

    def __init__(self, device_id: str, power_period_ns: int) -> None:
        self.device_id = device_id
        self._counter_dater = UpdateDater()
        self._power = PublishedValue(power_period_ns)
        self._last_read_ns: int | None = None
        self._last_energy_j: float | None = None

    def restart(self) -> None:
        """Forget the last read (after a gap, such as a lost device coming back)."""
        self._last_read_ns = None
        self._last_energy_j = None
        self._power.restart()

    def read(self, t_ns: int, energy_j: float | None, power_w: float | None) -> list[Reading]:
        out = []
        previous = self._last_read_ns
        if energy_j is not None:
            last = self._last_energy_j
            if last is None or previous is None:
                out.append(Reading(self.device_id, t_ns, energy_j=energy_j))
            elif energy_j != last:
                step_ns = self._counter_dater.date(previous, t_ns)
                if step_ns - 1 > previous:
                    out.append(Reading(self.device_id, step_ns - 1, energy_j=last))
                out.append(Reading(self.device_id, step_ns, energy_j=energy_j))
            self._last_energy_j = energy_j
        if power_w is not None:
            out.extend(Reading(self.device_id, t, power_w=w)
                       for t, w in self._power.update(previous, t_ns, power_w))
        self._last_read_ns = t_ns
        return out
