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
from wattspan.agent.discovery import Discovery, discover
from wattspan.agent.sampler import Sampler
from wattspan.agent.timeline import DeviceEnergy, Timeline
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

    def device_records(self, host: str | None = None) -> list[dict]:
        """One ``type: device`` record per device, in the JSONL schema."""
        offset = self.start_unix_ns - self.start_ns
        records = []
        for device_id, figure in self.devices.items():
            records.append({
                "type": "device",
                "device": device_id,
                "name": self.device_info[device_id].name,
                "start_unix_ns": figure.start_ns + offset,
                "end_unix_ns": figure.end_ns + offset,
                "energy_j": figure.energy_j,
                "dynamic_energy_j": figure.dynamic_energy_j,
                "attributed_j": 0.0 if figure.energy_j is not None else None,
                "unattributed_j": figure.energy_j,
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

    def __init__(self, owner: Measurement, name: str | None) -> None:
        self._owner = owner
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
    """Resolve the ``devices=`` argument: device ids, GPU UUIDs, kinds, or CUDA indices.

    Integers are CUDA device indices as this process sees them: mapped through
    ``CUDA_VISIBLE_DEVICES`` (UUIDs or NVML indices) to the GPU they name.
    """
    devices = list(devices)
    if wanted is None:
        return devices
    import os

    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    chosen: list[DeviceInfo] = []
    for item in wanted if isinstance(wanted, (list, tuple, set)) else [wanted]:
        if isinstance(item, int):
            token = visible[item] if item < len(visible) else (None if visible else str(item))
            if token is None:
                raise ValueError(f"CUDA device {item} is not in CUDA_VISIBLE_DEVICES={visible}")
            match = [d for d in devices if d.kind == "gpu" and (
                d.details.get("uuid", "").startswith(token) if token.startswith(("GPU-", "MIG-"))
                else str(d.details.get("nvml_index")) == token)]
        else:
            match = [d for d in devices if item in (d.device_id, d.kind, d.details.get("uuid"))
                     or d.device_id.startswith(f"{item}:")]
        if not match:
            known = ", ".join(d.device_id for d in devices) or "none"
            raise ValueError(f"no device matches {item!r}; found: {known}")
        chosen.extend(d for d in match if d not in chosen)
    return chosen


class Measurement:
    """Measures the energy of a block of code; see ``wattspan.measure``."""

    def __init__(self, name: str = "run", *, interval_ms: float | None = None, devices=None,
                 settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or load(overrides={"sampling.interval_ms": interval_ms})
        self._wanted = devices
        self._discovery: Discovery | None = None
        self._sampler: Sampler | None = None
        self._timeline: Timeline | None = None
        self._steps: list[_Step] = []
        self._open_step: _Step | None = None
        self._start_ns = 0
        self._unix = UnixOffset()
        self.result: MeasurementResult | None = None

    @property
    def devices(self) -> list[DeviceInfo]:
        return [t.info for t in self._timeline] if self._timeline else []

    def __enter__(self) -> Measurement:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        discovery = discover(self.settings)
        self._discovery = discovery
        chosen = select_devices(discovery.devices, self._wanted)
        for info in discovery.devices:
            if info not in chosen:
                _log.debug("not measuring %s", info.device_id)
        self._timeline = Timeline(self.settings.get("sampling", "ring_capacity"))
        for info in chosen:
            self._timeline.add_device(info)
        self._sampler = Sampler(discovery.collectors, self._timeline, self.settings.interval_ms)
        self._sampler.tick(force=True)
        self._sampler.start()
        # Wait until counters have stepped once, so the start lies inside measured data.
        probe_ns = time.monotonic_ns()
        self._sampler.wait_until(lambda: self._settled(probe_ns), self._lateness_s())
        self._start_ns = time.monotonic_ns()
        self._unix.refresh()

    def step(self, name: str | None = None) -> _Step:
        """Begin a step: ``with m.step():`` or plain ``m.step()`` (ends the previous one)."""
        if self._timeline is None:
            raise RuntimeError("step() outside the measured block")
        if self._open_step is not None:
            self._open_step.end()
        step = _Step(self, name)
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
            self._sampler.wait_until(lambda: self._settled(end_ns), self._lateness_s())
        finally:
            self._sampler.stop()
            self._sampler.tick(force=True)
            self._discovery.close()
        self.result = self._compute(end_ns)
        return self.result

    def _lateness_s(self) -> float:
        return self.settings.get("sampling", "max_lateness_ms") / 1000.0

    def _settled(self, t_ns: int) -> bool:
        for timeline in self._timeline:
            if timeline.last_error is not None and timeline.last_error[0] >= t_ns:
                continue  # failing now: waiting will not help
            if not timeline.settled(t_ns):
                return False
        return True

    def _compute(self, end_ns: int) -> MeasurementResult:
        start_ns = self._start_ns
        devices: dict[str, DeviceEnergy] = {}
        step_figures: list[dict[str, DeviceEnergy]] = [{} for _ in self._steps]
        for timeline in self._timeline:
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
            device_info={t.info.device_id: t.info for t in self._timeline},
            steps=steps,
            unavailable=list(self._discovery.unavailable),
        )


def measure(name: str = "run", *, interval_ms: float | None = None, devices=None,
            settings: Settings | None = None) -> Measurement:
    """Measure the energy of a block, per device and per step, with no daemon.

    ``devices`` takes device ids (``gpu:<uuid>``, ``cpu:0``), GPU UUIDs, kinds (``"gpu"``) or
    CUDA device indices; None measures every device found. After the block,
    ``m.result`` holds a ``MeasurementResult``.
    """
    return Measurement(name, interval_ms=interval_ms, devices=devices, settings=settings)
