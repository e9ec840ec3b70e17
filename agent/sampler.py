"""The sampling thread: reads every polled collector at fixed absolute deadlines.

Deadlines are absolute on CLOCK_MONOTONIC, so the schedule does not drift with the cost of a
read; a tick that starts more than one period late is counted as missed and skipped rather
than run in a burst. Each tick is dithered within its period (a random offset from the grid,
never drifting from it): devices that update on their own fixed period are then read at every
phase of it, which lets ``collectors.updates`` date their updates to a fraction of a period.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from wattspan.agent.timeline import Timeline
from wattspan.collectors.base import PolledCollector

_log = logging.getLogger(__name__)


@dataclass
class SamplerStats:
    ticks: int = 0
    missed_deadlines: int = 0
    read_errors: int = 0
    busy_ns: int = 0


class Sampler:
    """Reads ``collectors`` into ``timeline`` every ``interval_ms`` on its own thread."""

    def __init__(self, collectors: list[PolledCollector], timeline: Timeline,
                 interval_ms: float, *, dither: bool = True) -> None:
        self.collectors = collectors
        self.timeline = timeline
        self.interval_ns = int(interval_ms * 1e6)
        self.stats = SamplerStats()
        self.dither = dither
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_done = threading.Condition()
        # Slow sources (/proc/stat) are read on their own period, on the same schedule.
        self._min_period_ns = [int(getattr(c, "min_period_ms", 0.0) * 1e6) - self.interval_ns // 2
                               for c in collectors]
        self._next_due_ns = [0] * len(collectors)

    def tick(self, *, force: bool = False) -> None:
        """Read every collector that is due (all of them with ``force``, as at start and stop)."""
        started = time.monotonic_ns()
        for i, collector in enumerate(self.collectors):
            if not force and started < self._next_due_ns[i]:
                continue
            self._next_due_ns[i] = started + self._min_period_ns[i]
            try:
                readings = collector.read()
            except Exception as err:  # a collector bug must not stop the others
                self.stats.read_errors += 1
                _log.warning("collector %s failed: %s", collector.name, err, exc_info=True)
                continue
            for reading in readings:
                self.timeline.add(reading)
        self.stats.ticks += 1
        self.stats.busy_ns += time.monotonic_ns() - started
        with self._tick_done:
            self._tick_done.notify_all()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wattspan-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait_until(self, predicate, timeout_s: float) -> bool:
        """Block until ``predicate()`` holds after some tick, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        with self._tick_done:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._tick_done.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        interval = self.interval_ns
        rng = random.Random()
        grid = time.monotonic_ns()
        while not self._stop.is_set():
            self.tick()
            grid += interval
            now = time.monotonic_ns()
            if now > grid + interval:
                late = (now - grid) // interval
                self.stats.missed_deadlines += late
                grid += late * interval
            deadline = grid + (rng.randrange(interval) if self.dither else 0)
            self._stop.wait(max(0, deadline - now) / 1e9)
