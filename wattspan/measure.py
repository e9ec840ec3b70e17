"""The embedded profiler: ``with wattspan.measure("train") as m: ... m.step()``.

It needs no daemon: it discovers the devices, samples them on a thread for the duration of the
block, and returns per-device and per-step energy. The block's edges are bracketed by
readings: on entry it waits (bounded) until every counter has stepped once, and on exit until
readings past the end exist, so the first and last steps are measured like the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from wattspan.agent.clock import UnixOffset
from wattspan.agent.host import HostSampling
from wattspan.agent.timeline import DeviceEnergy
from wattspan.collectors.base import DeviceInfo, Quality, Unavailable
from wattspan.config import Settings, load

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    index: int
    name: str | None
    start_ns: int
    end_ns: int
    devices: dict[str, DeviceEnergy]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    @property
    def energy_j(self) -> float | None:
        return _total(self.devices.values(), "energy_j")

    @property
    def quality(self) -> Quality:
        return _worst(self.devices.values())


@dataclass(frozen=True)
class MeasurementResult:
    """Energy of a measured block: per device, per step, in total, each with its quality."""

    name: str
    start_ns: int
    end_ns: int
    start_unix_ns: int
    end_unix_ns: int
    devices: dict[str, DeviceEnergy]
    device_info: dict[str, DeviceInfo]
    steps: list[StepResult] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    def _summed(self) -> list[DeviceEnergy]:
        """The devices whose energies add up: no sub-device (``part_of``) and no whole-platform
        counter that overlaps the others (RAPL ``psys``)."""
        info = self.device_info
        return [d for k, d in self.devices.items()
                if not info[k].part_of and not info[k].details.get("overlaps")]

    @property
    def energy_j(self) -> float | None:
        """Total over devices, each counted once; None if any is unknown."""
        return _total(self._summed(), "energy_j")

    @property
    def dynamic_energy_j(self) -> float | None:
        return _total(self._summed(), "dynamic_energy_j")

    @property
    def quality(self) -> Quality:
        return _worst(self.devices.values())

    def device_records(self, host: str | None = None,
                       attributed_j: dict[str, float] | None = None) -> list[dict]:
        """One ``type: device`` record per device, in the JSONL schema; ``attributed_j`` is
        what spans received of each device (none when there were no spans)."""
        offset = self.start_unix_ns - self.start_ns
        records = []
        attributed_j = attributed_j or {}
        for device_id, figure in self.devices.items():
            given = attributed_j.get(device_id, 0.0)
            records.append({
                "type": "device",
                "device": device_id,
                "name": self.device_info[device_id].name,
                "start_unix_ns": figure.start_ns + offset,
                "end_unix_ns": figure.end_ns + offset,
                "energy_j": figure.energy_j,
                "dynamic_energy_j": figure.dynamic_energy_j,
                "attributed_j": given if figure.energy_j is not None else None,
                "unattributed_j": None if figure.energy_j is None else figure.energy_j - given,
                "avg_power_w": figure.avg_power_w,
                "peak_power_w": figure.peak_power_w,
                "idle_w": figure.idle_w,
                "quality": figure.quality.value,
                "coverage": figure.coverage,
                "source": self.device_info[device_id].source,
                "host": host,
            })
        return records

    def table(self, *, steps: bool = True) -> str:
        from wattspan._render import render_measurement

        return render_measurement(self, steps=steps)

    def __str__(self) -> str:
        return self.table()


def _total(figures: Iterable[DeviceEnergy], attr: str) -> float | None:
    values = [getattr(f, attr) for f in figures]
    if not values or any(v is None for v in values):
        return None
    return sum(values)


def _worst(figures: Iterable[DeviceEnergy]) -> Quality:
    qualities = [f.quality for f in figures]
    return Quality.worst(*qualities) if qualities else Quality.PARTIAL


class _Step:
    """One step; a context manager, or ended by the next ``m.step()`` or the block's end."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.start_ns = time.monotonic_ns()
        self.end_ns: int | None = None

    def end(self, t_ns: int | None = None) -> None:
        if self.end_ns is None:
            self.end_ns = time.monotonic_ns() if t_ns is None else t_ns

    def __enter__(self) -> _Step:
        return self

    def __exit__(self, *exc) -> None:
        self.end()


def select_devices(devices: Iterable[DeviceInfo], wanted) -> list[DeviceInfo]:
    """Resolve the ``devices=`` argument: device ids, GPU UUIDs, kinds, or CUDA indices as
    this process sees them (through its ``CUDA_VISIBLE_DEVICES``); None selects all."""
    import os

    from wattspan.agent.devices import select

    devices = list(devices)
    if wanted is None:
        return devices
    return select(devices, wanted, os.environ.get("CUDA_VISIBLE_DEVICES"))


class Measurement:
    """Measures the energy of a block of code; see ``wattspan.measure``."""

    def __init__(self, name: str = "run", *, interval_ms: float | None = None, devices=None,
                 settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or load(overrides={"sampling.interval_ms": interval_ms})
        self.host = HostSampling(self.settings, lambda found: select_devices(found, devices))
        self._steps: list[_Step] = []
        self._open_step: _Step | None = None
        self._start_ns = 0
        self._unix = UnixOffset()
        self.result: MeasurementResult | None = None

    @property
    def devices(self) -> list[DeviceInfo]:
        return self.host.devices

    def __enter__(self) -> Measurement:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.host.start()
        # Wait until counters have stepped once, so the start lies inside measured data.
        self.host.wait_settled(time.monotonic_ns())
        self._start_ns = time.monotonic_ns()
        self._unix.refresh()

    def step(self, name: str | None = None) -> _Step:
        """Begin a step: ``with m.step():`` or plain ``m.step()`` (ends the previous one)."""
        if self.host.timeline is None:
            raise RuntimeError("step() outside the measured block")
        if self._open_step is not None:
            self._open_step.end()
        step = _Step(name)
        self._steps.append(step)
        self._open_step = step
        return step

    def stop(self) -> MeasurementResult:
        if self.result is not None:
            return self.result
        end_ns = time.monotonic_ns()
        if self._open_step is not None:
            self._open_step.end(end_ns)
        try:
            self.host.wait_settled(end_ns)
        finally:
            self.host.stop()
        self.result = self._compute(end_ns)
        return self.result

    def _compute(self, end_ns: int) -> MeasurementResult:
        start_ns = self._start_ns
        devices: dict[str, DeviceEnergy] = {}
        step_figures: list[dict[str, DeviceEnergy]] = [{} for _ in self._steps]
        for timeline in self.host.timeline:
            baseline = timeline.baseline_w()
            devices[timeline.info.device_id] = timeline.energy_between(start_ns, end_ns, baseline)
            if self._steps:
                per_step = timeline.energies(
                    [x for s in self._steps for x in (s.start_ns, s.end_ns)], baseline)
                for i in range(len(self._steps)):
                    # energies() over [s0, e0, s1, e1, ...] yields steps at even positions.
                    step_figures[i][timeline.info.device_id] = per_step[2 * i]
        steps = [StepResult(i, s.name, s.start_ns, s.end_ns, step_figures[i])
                 for i, s in enumerate(self._steps)]
        return MeasurementResult(
            name=self.name,
            start_ns=start_ns,
            end_ns=end_ns,
            start_unix_ns=self._unix.to_unix_ns(start_ns),
            end_unix_ns=self._unix.to_unix_ns(end_ns),
            devices=devices,
            device_info={t.info.device_id: t.info for t in self.host.timeline},
            steps=steps,
            unavailable=list(self.host.discovery.unavailable),
        )


def measure(name: str = "run", *, interval_ms: float | None = None, devices=None,
            settings: Settings | None = None) -> Measurement:
    """Measure the energy of a block, per device and per step, with no daemon.

    ``devices`` takes device ids (``gpu:<uuid>``, ``cpu:0``), GPU UUIDs, kinds (``"gpu"``) or
    CUDA device indices; None measures every device found. After the block,
    ``m.result`` holds a ``MeasurementResult``.
    """
    return Measurement(name, interval_ms=interval_ms, devices=devices, settings=settings)
