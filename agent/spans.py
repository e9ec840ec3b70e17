"""Spans as the agent keeps them, and the records attribution produces.

A span is identified by ``(pid, span_id)``: the id is unique within the process that began it.
Times are CLOCK_MONOTONIC ns, shared by every process of the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wattspan.collectors.base import Quality


@dataclass(slots=True)
class Span:
    """A span the agent knows of: open until ``end_ns`` is set."""

    pid: int
    span_id: int
    name: str
    start_ns: int
    weight: float = 1.0
    request_id: str | None = None
    #: Device ids the span uses, resolved by the agent (see ``agent.devices``).
    devices: tuple[str, ...] = ()
    attributes: dict = field(default_factory=dict)
    trace_id: str | None = None
    otel_span_id: str | None = None
    end_ns: int | None = None
    #: "ok", or "incomplete" for a span closed by the agent because it never ended.
    status: str = "ok"

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.span_id)


@dataclass(frozen=True)
class DeviceShare:
    """One span's share of one device."""

    energy_j: float
    dynamic_energy_j: float
    quality: Quality


@dataclass(frozen=True)
class SpanEnergy:
    """The energy of one finished span, per device and in total."""

    span: Span
    devices: dict[str, DeviceShare]
    quality: Quality

    @property
    def energy_j(self) -> float | None:
        values = [d.energy_j for d in self.devices.values()]
        return sum(values) if values else None

    @property
    def dynamic_energy_j(self) -> float | None:
        values = [d.dynamic_energy_j for d in self.devices.values()]
        return sum(values) if values else None


@dataclass(frozen=True)
class DeviceInterval:
    """Energy of one device over one attribution window, and how it was shared.

    Conservation: ``attributed_j + unattributed_j == energy_j`` (to rounding). The three are
    None when the device's energy over the window is unknown (never 0 for "unknown").
    """

    device_id: str
    start_ns: int
    end_ns: int
    energy_j: float | None
    attributed_j: float | None
    unattributed_j: float | None
    idle_w: float | None
    quality: Quality

    @property
    def avg_power_w(self) -> float | None:
        if self.energy_j is None or self.end_ns <= self.start_ns:
            return None
        return self.energy_j / ((self.end_ns - self.start_ns) * 1e-9)
