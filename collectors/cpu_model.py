"""Estimated CPU power where no CPU energy counter is readable (Graviton, most VMs).

Model (Cloud Carbon Footprint, per vCPU), with util the average fraction of vCPU time busy::

    P = n_vcpu × (min_w + util × (max_w − min_w))

Utilization comes from the aggregate ``cpu`` line of ``/proc/stat``: busy = user + nice +
system + irq + softirq + steal, idle = idle + iowait (guest and guest_nice are already inside
user and nice, so they are not added again). Over an interval of ``dt`` seconds in which the
vCPUs were busy for ``busy_s`` CPU-seconds (busy jiffies / USER_HZ), util = busy_s / (n × dt),
so the model's energy is exactly::

    E = n_vcpu × min_w × dt + (max_w − min_w) × busy_s

This is exact for the model given the jiffy counts: the only error beyond the model's own is
jiffy resolution (1/USER_HZ per vCPU), and it does not accumulate, because the busy term is
never clamped: cumulative energy over any sequence of reads equals the formula over the whole
span. ``power_w`` is the model power over the interval, so ``power_w × dt`` equals ``E``.

Idle jiffies are parsed but not used for energy; proc(5) warns that iowait may decrease, so a
decrease there is not treated as a counter jump. Busy jiffies going backwards, or advancing
faster than n_vcpu × dt allows, means the counters were replaced (container or VM migration,
checkpoint/restore): that interval is reported as unknown (a Reading with ``error``), never as
negative or invented energy, and the next interval starts afresh.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wattspan.collectors import register
from wattspan.collectors.base import DeviceInfo, Quality, Reading, Unavailable
from wattspan.collectors.paths import Roots

DEVICE_ID = "cpu:0"


@dataclass(frozen=True)
class CpuCoefficients:
    """Per-vCPU power at 0 % and 100 % utilization, in watts, and where they come from."""

    min_w_per_vcpu: float
    max_w_per_vcpu: float
    source: str


# Per-vCPU watts. Graviton: Cloud Carbon Footprint, ccf-coefficients
# output/coefficients-aws-use.csv (2026 SPECpower run; Graviton2, 3, 3E and 4 all reuse the AMD
# EPYC 2nd-gen figures). Generic arm64 reuses them. x86 and unknown CPUs: CCF's AWS fallback
# (MIN_WATTS_AVG 0.74, MAX_WATTS_AVG 3.5; the average over AWS's processor mix).
_CCF_GRAVITON_W = (0.4742621527777777, 1.6929615162037035)
_CCF_AWS_FALLBACK_W = (0.74, 3.5)
COEFFICIENTS_W_PER_VCPU: dict[str, CpuCoefficients] = {
    "graviton2": CpuCoefficients(*_CCF_GRAVITON_W, "CCF graviton2"),
    "graviton3": CpuCoefficients(*_CCF_GRAVITON_W, "CCF graviton3"),
    "graviton4": CpuCoefficients(*_CCF_GRAVITON_W, "CCF graviton4"),
    "arm64": CpuCoefficients(*_CCF_GRAVITON_W, "CCF graviton (generic arm64)"),
    "x86": CpuCoefficients(*_CCF_AWS_FALLBACK_W, "CCF AWS fallback"),
    "unknown": CpuCoefficients(*_CCF_AWS_FALLBACK_W, "CCF AWS fallback"),
}

#: Arm Ltd. (implementer 0x41) part numbers of the Neoverse cores in Graviton 2/3/4. Other
#: N1/V1/V2 chips (Ampere Altra is N1) map here too; they get the same coefficients anyway.
_ARM_LTD = 0x41
_ARM_PARTS = {
    0xD0C: ("graviton2", "Neoverse N1"),
    0xD40: ("graviton3", "Neoverse V1"),
    0xD4F: ("graviton4", "Neoverse V2"),
}

_COEFFICIENT_KEYS = ("min_w_per_vcpu", "max_w_per_vcpu")
_BOTH_KEYS = " and ".join(_COEFFICIENT_KEYS)
#: Jiffies a vCPU may run ahead of wall time before a busy-time jump counts as a counter reset
#: (tick accounting lands up to a tick late at either end of the interval).
_SLACK_TICKS_PER_VCPU = 2
_NS_PER_S = 1_000_000_000
_STAT_END_MARKER = b"\nintr "


class ProcStatError(ValueError):
    """``/proc/stat`` does not have the format this collector relies on."""


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate ``cpu`` line of ``/proc/stat``, in USER_HZ ticks, and the vCPU count."""

    busy_ticks: int
    idle_ticks: int
    n_vcpu: int


# --- parsing (pure)


def parse_proc_stat(text: str) -> CpuTimes:
    """Aggregate busy/idle ticks and the number of ``cpuN`` lines; ProcStatError if malformed."""
    aggregate: list[str] | None = None
    n_vcpu = 0
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        label, _, rest = line.partition(" ")
        if label == "cpu":
            aggregate = rest.split()
        elif label[3:].isdigit():
            n_vcpu += 1
    if aggregate is None:
        raise ProcStatError("no aggregate 'cpu' line")
    if len(aggregate) < 4:
        raise ProcStatError(
            f"aggregate 'cpu' line has {len(aggregate)} fields, expected at least 4 "
            "(user nice system idle ...)"
        )
    if not all(field.isascii() and field.isdigit() for field in aggregate):
        raise ProcStatError(f"aggregate 'cpu' line has a non-numeric field: {' '.join(aggregate)}")
    if n_vcpu == 0:
        raise ProcStatError("no per-CPU 'cpuN' lines")
    ticks = [int(field) for field in aggregate[:8]] + [0] * (8 - min(len(aggregate), 8))
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return CpuTimes(
        busy_ticks=user + nice + system + irq + softirq + steal,
        idle_ticks=idle + iowait,
        n_vcpu=n_vcpu,
    )


def parse_cpuinfo(text: str) -> dict[str, str]:
    """``key : value`` pairs of ``/proc/cpuinfo``, first occurrence of each key (CPU 0)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def detect_cpu_family(cpuinfo: str) -> tuple[str, str | None]:
    """(family, model) from ``/proc/cpuinfo``; family is a key of COEFFICIENTS_W_PER_VCPU.

    x86 kernels print ``vendor_id``; Arm kernels print ``CPU implementer`` and ``CPU part``.
    """
    fields = parse_cpuinfo(cpuinfo)
    if "vendor_id" in fields:
        return "x86", fields.get("model name")
    if "CPU implementer" not in fields:
        return "unknown", None
    try:
        implementer = int(fields["CPU implementer"], 16)
        part = int(fields.get("CPU part", ""), 16)
    except ValueError:
        return "arm64", None
    if implementer == _ARM_LTD and part in _ARM_PARTS:
        return _ARM_PARTS[part]
    return "arm64", None


def validate_coefficients(values: Mapping[str, object]) -> CpuCoefficients:
    """Check configured ``{"min_w_per_vcpu": .., "max_w_per_vcpu": ..}``; ValueError if wrong."""
    if not isinstance(values, Mapping):
        raise ValueError(
            f"CPU model coefficients must be a mapping with {_BOTH_KEYS}, "
            f"got {type(values).__name__}"
        )
    unknown = sorted(set(values) - set(_COEFFICIENT_KEYS))
    if unknown:
        raise ValueError(f"unknown CPU model coefficient(s) {unknown}; expected {_BOTH_KEYS}")
    missing = [key for key in _COEFFICIENT_KEYS if key not in values]
    if missing:
        raise ValueError(
            f"CPU model coefficients must set both {_BOTH_KEYS} "
            f"(watts per vCPU); missing {', '.join(missing)}"
        )
    for key in _COEFFICIENT_KEYS:
        value = values[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{key} must be a finite number of watts >= 0, got {value!r}")
    min_w, max_w = float(values["min_w_per_vcpu"]), float(values["max_w_per_vcpu"])
    if min_w > max_w:
        raise ValueError(f"min_w_per_vcpu ({min_w}) must not exceed max_w_per_vcpu ({max_w})")
    return CpuCoefficients(min_w, max_w, "configured")


def model_power_w(n_vcpu: int, coefficients: CpuCoefficients, util: float) -> float:
    """P = n_vcpu × (min_w + util × (max_w − min_w))."""
    c = coefficients
    return n_vcpu * (c.min_w_per_vcpu + util * (c.max_w_per_vcpu - c.min_w_per_vcpu))


def model_energy_j(
    n_vcpu: int, coefficients: CpuCoefficients, interval_s: float, busy_s: float
) -> float:
    """E = n_vcpu × min_w × dt + (max_w − min_w) × busy_s: the model power integrated exactly."""
    c = coefficients
    return n_vcpu * c.min_w_per_vcpu * interval_s + (c.max_w_per_vcpu - c.min_w_per_vcpu) * busy_s


# --- reading (touches the filesystem)


def _read_proc_stat(fd: int) -> bytes:
    """Read /proc/stat from the start in one pread (one consistent snapshot) up to ``intr``.

    The per-CPU lines come first; the buffer grows only on machines with hundreds of CPUs.
    """
    size = 65536
    while True:
        data = os.pread(fd, size, 0)
        if len(data) < size or _STAT_END_MARKER in data:
            return data
        size *= 4


@register("cpu_model", fallback_for=("rapl",))
class CpuModelCollector:
    """One estimated device, ``cpu:0``, from /proc/stat utilization and per-vCPU coefficients.

    ``coefficients`` overrides the per-family table (``{"min_w_per_vcpu", "max_w_per_vcpu"}``);
    ``user_hz`` overrides ``os.sysconf("SC_CLK_TCK")`` (100 on every Linux port).
    """

    name = "cpu_model"
    #: /proc/stat counts in USER_HZ ticks (10 ms): faster reads only quantise utilization.
    min_period_ms = 100.0

    def __init__(
        self,
        roots: Roots | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        coefficients: Mapping[str, object] | None = None,
        *,
        user_hz: int | None = None,
    ) -> None:
        self._roots = roots if roots is not None else Roots.from_env()
        self._clock = clock
        self._override = validate_coefficients(coefficients) if coefficients is not None else None
        self._user_hz = user_hz if user_hz is not None else os.sysconf("SC_CLK_TCK")
        self._stat_path = self._roots.proc("stat")
        self._stat_fd: int | None = None
        self._coefficients: CpuCoefficients | None = None
        self._previous: tuple[CpuTimes, int] | None = None
        self._energy_j = 0.0

    def discover(self) -> list[DeviceInfo] | Unavailable:
        self.close()
        try:
            fd = os.open(self._stat_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            return Unavailable(self.name, f"cannot open {self._stat_path}: {err.strerror or err}")
        try:
            times = parse_proc_stat(_read_proc_stat(fd).decode("ascii", errors="replace"))
        except (OSError, ProcStatError) as err:
            os.close(fd)
            return Unavailable(self.name, f"{self._stat_path}: {err}")
        self._stat_fd = fd

        family, model = self._detect_family()
        coefficients = self._override or COEFFICIENTS_W_PER_VCPU[family]
        self._coefficients = coefficients
        self._energy_j = 0.0
        c = coefficients
        watts = f"{c.min_w_per_vcpu:.3f}–{c.max_w_per_vcpu:.3f} W/vCPU"
        return [
            DeviceInfo(
                device_id=DEVICE_ID,
                kind="cpu",
                name=f"CPU ({family}, {times.n_vcpu} vCPUs, modelled)",
                source=f"cpu model: /proc/stat utilization × {c.source} coefficients ({watts})",
                quality=Quality.ESTIMATED,
                idle_w=times.n_vcpu * c.min_w_per_vcpu,
                details={
                    "family": family,
                    "model": model,
                    "n_vcpu": times.n_vcpu,
                    "min_w_per_vcpu": c.min_w_per_vcpu,
                    "max_w_per_vcpu": c.max_w_per_vcpu,
                    "coefficients_source": c.source,
                    "user_hz": self._user_hz,
                },
            )
        ]

    def read(self) -> list[Reading]:
        if self._stat_fd is None or self._coefficients is None:
            return []
        try:
            text = _read_proc_stat(self._stat_fd).decode("ascii", errors="replace")
            times = parse_proc_stat(text)
        except (OSError, ProcStatError) as err:
            return [Reading(DEVICE_ID, self._clock(), error=f"{self._stat_path}: {err}")]
        return [self._advance(times, self._clock(), self._coefficients)]

    def close(self) -> None:
        fd, self._stat_fd = self._stat_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._previous = None

    # --- internals

    def _detect_family(self) -> tuple[str, str | None]:
        try:
            cpuinfo = self._roots.proc("cpuinfo").read_text(errors="replace")
        except OSError:
            return "unknown", None
        return detect_cpu_family(cpuinfo)

    def _advance(self, times: CpuTimes, t_ns: int, coefficients: CpuCoefficients) -> Reading:
        """Integrate the model from the previous snapshot to this one."""
        previous = self._previous
        if previous is None:
            self._previous = (times, t_ns)
            return Reading(DEVICE_ID, t_ns, energy_j=self._energy_j)
        previous_times, previous_t_ns = previous
        interval_ns = t_ns - previous_t_ns
        busy_ticks = times.busy_ticks - previous_times.busy_ticks
        n_vcpu = times.n_vcpu
        if busy_ticks < 0:
            self._previous = (times, t_ns)
            return Reading(
                DEVICE_ID,
                t_ns,
                error=f"{self._stat_path}: busy CPU time went backwards by {-busy_ticks} ticks "
                "(container or VM migration?); interval skipped",
            )
        if interval_ns <= 0:
            # No time has passed: keep the old snapshot so these ticks land in the next interval.
            return Reading(DEVICE_ID, t_ns, energy_j=self._energy_j)
        # busy_s > n × (dt + slack), in integers: ticks × 1e9 > n × (dt_ns × HZ + slack × 1e9)
        limit = n_vcpu * (interval_ns * self._user_hz + _SLACK_TICKS_PER_VCPU * _NS_PER_S)
        if busy_ticks * _NS_PER_S > limit:
            self._previous = (times, t_ns)
            return Reading(
                DEVICE_ID,
                t_ns,
                error=f"{self._stat_path}: busy CPU time advanced {busy_ticks} ticks in "
                f"{interval_ns / _NS_PER_S:.3f} s on {n_vcpu} vCPUs (counters replaced?); "
                "interval skipped",
            )
        self._previous = (times, t_ns)
        interval_s = interval_ns / _NS_PER_S
        busy_s = busy_ticks / self._user_hz
        util = busy_s / (n_vcpu * interval_s)
        self._energy_j += model_energy_j(n_vcpu, coefficients, interval_s, busy_s)
        return Reading(
            DEVICE_ID,
            t_ns,
            energy_j=self._energy_j,
            power_w=model_power_w(n_vcpu, coefficients, util),
            utilization_pct=min(100.0, 100.0 * util),
        )
