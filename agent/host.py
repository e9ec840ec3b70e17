"""Sampling of one host's devices: discovery, the per-device timelines and the sampler thread.

Shared by the embedded profiler (``wattspan.measure``, ``wattspan run``) and the agent.
"""

from __future__ import annotations

import logging
import time

from wattspan.agent.discovery import Discovery, discover
from wattspan.agent.sampler import Sampler
from wattspan.agent.timeline import Timeline
from wattspan.collectors.base import DeviceInfo
from wattspan.config import Settings

_log = logging.getLogger(__name__)


class HostSampling:
    """Discovers the devices (optionally a subset), samples them, and knows how far their
    readings reach."""

    def __init__(self, settings: Settings, select=None) -> None:
        self.settings = settings
        self._select = select
        self.discovery: Discovery | None = None
        self.timeline: Timeline | None = None
        self.sampler: Sampler | None = None

    @property
    def devices(self) -> list[DeviceInfo]:
        return [t.info for t in self.timeline] if self.timeline else []

    @property
    def max_lateness_s(self) -> float:
        return self.settings.get("sampling", "max_lateness_ms") / 1000.0

    def start(self) -> None:
        self.discovery = discover(self.settings)
        chosen = self.discovery.devices
        if self._select is not None:
            chosen = self._select(chosen)
        self.timeline = Timeline(self.settings.get("sampling", "ring_capacity"))
        for info in chosen:
            self.timeline.add_device(info)
        self.sampler = Sampler(self.discovery.collectors, self.timeline,
                               self.settings.interval_ms)
        self.sampler.tick(force=True)
        self.sampler.start()

    def stop(self) -> None:
        if self.sampler is None:
            return
        self.sampler.stop()
        self.sampler.tick(force=True)
        self.discovery.close()
        self.sampler = None

    def settled(self, t_ns: int) -> bool:
        """Every device has readings past ``t_ns`` (a device failing since then excepted:
        waiting for it would not help)."""
        for timeline in self.timeline:
            if timeline.last_error is not None and timeline.last_error[0] >= t_ns:
                continue
            if not timeline.settled(t_ns):
                return False
        return True

    def wait_settled(self, t_ns: int) -> bool:
        """Wait, at most the maximum lateness, until readings past ``t_ns`` exist."""
        if self.sampler is None:
            return self.settled(t_ns)
        return self.sampler.wait_until(lambda: self.settled(t_ns), self.max_lateness_s)

    def watermark_ns(self, now_ns: int | None = None) -> int | None:
        """The latest time up to which every live device's energy is settled.

        A device with no settled reading for longer than the maximum lateness (lost, hung)
        no longer holds the others back: its figures past its last reading are partial.
        """
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        stale_ns = now_ns - int(self.max_lateness_s * 1e9)
        marks = []
        for timeline in self.timeline:
            mark = timeline.watermark_ns()
            if mark is None or mark < stale_ns:
                continue
            marks.append(mark)
        if not marks:
            return None
        return min(marks)
