"""The one clock: CLOCK_MONOTONIC in integer nanoseconds, and its mapping to Unix time.

Every process of a host shares CLOCK_MONOTONIC, so spans stamped by applications and readings
stamped by the sampler join without conversion. Records also carry Unix time, converted with
an offset measured from back-to-back reads of both clocks.
"""

from __future__ import annotations

import time


class UnixOffset:
    """Maps CLOCK_MONOTONIC ns to Unix ns; ``refresh`` re-measures it (NTP steps the wall clock)."""

    __slots__ = ("offset_ns",)

    def __init__(self) -> None:
        self.offset_ns = 0
        self.refresh()

    def refresh(self) -> int:
        best = None
        # The tightest of a few bracketed reads bounds the error by that read's width.
        for _ in range(3):
            m0 = time.monotonic_ns()
            real = time.time_ns()
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, real - (m0 + m1) // 2)
        self.offset_ns = best[1]
        return self.offset_ns

    def to_unix_ns(self, mono_ns: int) -> int:
        return mono_ns + self.offset_ns
