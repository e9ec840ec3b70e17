"""Turn raw hardware energy counters into one cumulative, never-decreasing series.

Every collector with an energy counter goes through ``CumulativeCounter``: it is the one place
that handles wraparound (RAPL ``energy_uj`` wraps at ``max_energy_range_uj``) and resets
(NVML's counter restarts at zero when the driver reloads).
"""

from __future__ import annotations


class CumulativeCounter:
    """Accumulates deltas of a raw counter.

    ``max_range`` is the value at which the raw counter wraps to zero; None means it never
    wraps, so a decrease is a reset and the new raw value counts as energy since the reset.
    Units are whatever the raw counter uses; ``update`` returns the cumulative total in them.
    """

    __slots__ = ("max_range", "_last_raw", "total", "wraps", "resets")

    def __init__(self, max_range: int | None = None) -> None:
        self.max_range = max_range
        self._last_raw: int | None = None
        self.total = 0
        self.wraps = 0
        self.resets = 0

    def update(self, raw: int) -> int:
        last = self._last_raw
        self._last_raw = raw
        if last is None:
            return self.total
        delta = raw - last
        if delta < 0:
            if self.max_range is not None and self.max_range > 0:
                delta += self.max_range
                self.wraps += 1
            else:
                delta = raw
                self.resets += 1
        self.total += delta
        return self.total
