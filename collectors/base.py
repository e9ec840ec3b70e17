"""The collector protocol, the records collectors produce, and the project's device errors.

A collector owns one source of readings (NVML, RAPL, a CPU power model, ...). It discovers
its devices once, then is read repeatedly by the sampler. Readings carry *cumulative* energy
(already unwrapped: see ``collectors.counters``) and/or instantaneous power, stamped on
CLOCK_MONOTONIC in integer nanoseconds. Naming, units and validation live here in Python; the
native code only stores and integrates the numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable


class Quality(str, enum.Enum):
    """How a figure was obtained, from best to worst.

    ``measured``: a hardware energy counter. ``sampled``: integrated power samples.
    ``estimated``: a power model. ``partial``: data was missing for part of the interval.
    """

    MEASURED = "measured"
    SAMPLED = "sampled"
    ESTIMATED = "estimated"
    PARTIAL = "partial"

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def worst(*qualities: Quality) -> Quality:
        order = list(Quality)
        return max(qualities, key=order.index)


@dataclass(frozen=True)
class DeviceInfo:
    """A device a collector found, and how it is measured.

    ``device_id`` is the stable key used everywhere (``gpu:<uuid>``, ``cpu:0``, ``dram:0``).
    ``part_of`` names the device whose energy already includes this one (a RAPL ``core`` zone
    inside its package), so totals never count it twice.
    """

    device_id: str
    kind: str
    name: str
    source: str
    quality: Quality
    idle_w: float | None = None
    part_of: str | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of one device at ``t_ns`` (CLOCK_MONOTONIC).

    ``energy_j`` is cumulative energy since an arbitrary origin (monotonic, never wraps);
    ``power_w`` is the power over the interval that ends at ``t_ns``. Either may be None.
    A reading with ``error`` set says the device could not be read at ``t_ns``.
    """

    device_id: str
    t_ns: int
    energy_j: float | None = None
    power_w: float | None = None
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Unavailable:
    """Why a collector found nothing to measure (absent hardware is not an error)."""

    collector: str
    reason: str


# --- errors: vendor errors are translated once, at the boundary, into these


class WattspanDeviceError(Exception):
    """Base class for device errors raised by collectors."""


class DeviceInitError(WattspanDeviceError):
    """The source could not be initialised (library missing, driver not loaded)."""


class DeviceNotSupported(WattspanDeviceError):
    """The device does not support this reading."""


class DevicePermissionDenied(WattspanDeviceError):
    """The reading exists but this process may not read it."""


class DeviceLost(WattspanDeviceError):
    """The device fell off the bus or disappeared; it is retried later."""


class TransientReadError(WattspanDeviceError):
    """A read failed in a way that may succeed next time."""


@runtime_checkable
class PolledCollector(Protocol):
    """A source the sampler reads on its schedule.

    ``discover`` returns the devices found, or an ``Unavailable`` saying why there are none.
    ``read`` returns one ``Reading`` per device it still knows of (with ``error`` set for a
    device that failed this time) and never raises for a single device's failure.
    """

    name: ClassVar[str]
    #: Shortest useful period between reads; the sampler reads no more often than this.
    min_period_ms: ClassVar[float]

    def discover(self) -> list[DeviceInfo] | Unavailable: ...

    def read(self) -> list[Reading]: ...

    def close(self) -> None: ...
