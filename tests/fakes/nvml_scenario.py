"""Scenarios for the fake NVML library (fake_nvml.c) and the exact ground truth they imply.

A :class:`Scenario` describes GPUs, their true power over time (piecewise-constant
segments), sensor timing, lost/reset events and running processes. ``write()`` produces the
text file that the library reads at ``nvmlInit`` (path in ``$WATTSPAN_FAKE_NVML_SCENARIO``).

The model methods compute, with integer arithmetic identical to the C code, what every call
returns at a given CLOCK_MONOTONIC time (``time.monotonic_ns()``), so tests can compare the
library, and later the samplers built on it, against exact values. Scenario times in the
dataclasses are milliseconds relative to ``epoch_ns``; model methods take absolute
monotonic nanoseconds. Energies are exact integrals in mW*ns (pJ) internally.

``build_fake_nvml(out_dir)`` compiles the library with the system C compiler.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from pathlib import Path
from typing import Any

SCENARIO_ENV = "WATTSPAN_FAKE_NVML_SCENARIO"
LIBRARY_NAME = "libnvidia-ml.so.1"
SOURCE = Path(__file__).with_name("fake_nvml.c")
CFLAGS = (
    "-shared",
    "-fPIC",
    "-O2",
    "-Wall",
    "-Wextra",
    "-fvisibility=hidden",
    "-pthread",
    f"-Wl,-soname,{LIBRARY_NAME}",
)
LIBS = ("-lm",)

# nvmlReturn_t values the fake produces.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

# Field ids served by the fake; any other id gets a per-field NVML_ERROR_NOT_SUPPORTED.
FI_TOTAL_ENERGY_CONSUMPTION = 83
FI_POWER_AVERAGE = 185
FI_POWER_INSTANT = 186
FI_POWER_CURRENT_LIMIT = 190
FI_ENERGY = 191

ARCH_VOLTA = 5
ARCH_AMPERE = 7
ARCH_HOPPER = 9

_NS_PER_MS = 1_000_000
_MAX_SAMPLES_DEPTH = 1_000_000
_DEFAULT_CC = {2: (3, 5), 3: (5, 2), 4: (6, 0), 5: (7, 0), 6: (7, 5), 7: (8, 6), 8: (8, 9),
               9: (9, 0), 10: (10, 0)}

QUANTITIES = ("counter_mj", "instant_mw", "average_mw", "power_usage_mw")


# ---------------------------------------------------------------------------- fixed point

def _fixed(value: object, decimals: int, what: str) -> int:
    """``value`` * 10**decimals as an int; more decimals than that is an error.

    ints, Decimals and strings must be exact. A float is taken as the fixed-point number
    nearest to it when it is off only by binary rounding noise (``0.1 + 0.2`` ms is
    300000 ns), so the file and the model both use that same integer.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r}: expected a number")
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        scaled = d.scaleb(decimals)
        nearest = scaled.to_integral_value()
    except (InvalidOperation, ValueError) as err:
        raise ValueError(f"{what}={value!r}: expected a number") from err
    if not nearest.is_finite():
        raise ValueError(f"{what}={value!r}: expected a finite number")
    off = abs(scaled - nearest)
    noise = Decimal("1e-3") + abs(scaled) * Decimal("1e-12")
    if off != 0 and not (isinstance(value, float) and off <= noise):
        raise ValueError(f"{what}={value!r} has more than {decimals} decimals")
    return int(nearest)


def _format_fixed(n: int, decimals: int) -> str:
    sign = "-" if n < 0 else ""
    whole, frac = divmod(abs(n), 10**decimals)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{decimals}d}".rstrip("0")


def _ms_ns(value: object, what: str) -> int:
    return _fixed(value, 6, what)


def _w_mw(value: object, what: str) -> int:
    return _fixed(value, 3, what)


def _clock_offset_ns(clock_id: int) -> int:
    """``clock_id`` minus CLOCK_MONOTONIC, read as mono/other/mono like the C library."""
    m0 = time.monotonic_ns()
    other = time.clock_gettime_ns(clock_id)
    m1 = time.monotonic_ns()
    return other - (m0 + (m1 - m0) // 2)


def measure_realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns."""
    return _clock_offset_ns(time.CLOCK_REALTIME)


def measure_boottime_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC now, in ns (0 unless the host has been suspended)."""
    return _clock_offset_ns(time.CLOCK_BOOTTIME)


def _check_value_text(text: str, what: str) -> None:
    if not text or '"' in text or "\n" in text or "\r" in text or "#" in text:
        raise ValueError(f"{what}={text!r}: must be non-empty without quotes, '#' or newlines")


def _quote(text: str) -> str:
    return f'"{text}"' if any(c.isspace() for c in text) else text


# ---------------------------------------------------------------------------- dataclasses

@dataclass
class Segment:
    """True power ``watts`` over scenario time [start_ms, end_ms)."""

    start_ms: float
    end_ms: float
    watts: float


@dataclass
class Process:
    """A compute process on a GPU, listed while start_ms <= t < end_ms (None: unbounded)."""

    pid: int
    used_memory_mib: int
    start_ms: float | None = None
    end_ms: float | None = None


@dataclass
class Gpu:
    """One GPU. Defaults: an H100 SXM with the sensor timing of the reference's A.6 table."""

    uuid: str = field(default_factory=lambda: f"GPU-{uuidlib.uuid4()}")
    name: str = "NVIDIA H100 80GB HBM3"
    arch: int = ARCH_HOPPER
    ga100: bool = False
    compute_capability: tuple[int, int] | None = None  # None: derived from arch
    idle_w: float = 60
    power_limit_w: float = 700
    memory_total_mib: int = 81559
    memory_reserved_mib: int = 0
    counter_period_ms: float = 100
    counter_phase_ms: float = 0
    counter_offset_mj: int = 0
    instant_period_ms: float = 100
    instant_window_ms: float = 25
    instant_phase_ms: float = 0
    average_window_ms: float = 1000
    samples_depth: int = 120
    sample_clock: str = "realtime"  # or "boottime"
    segments: list[Segment] = field(default_factory=list)
    lost_at_ms: float | None = None
    resets_ms: list[float] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def h100(cls, **overrides: Any) -> Gpu:
        """Hopper: 25 ms window every 100 ms, GetPowerUsage is the 1 s average (field 185)."""
        return cls(**overrides)

    @classmethod
    def a100(cls, **overrides: Any) -> Gpu:
        """GA100: 25 ms window every 100 ms, GetPowerUsage instantaneous, no field 185."""
        kw: dict[str, Any] = dict(name="NVIDIA A100-SXM4-80GB", arch=ARCH_AMPERE, ga100=True,
                                  idle_w=50, power_limit_w=400, memory_total_mib=81920)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def v100(cls, **overrides: Any) -> Gpu:
        """Volta: 10 ms window every 20 ms, GetPowerUsage instantaneous, no field 185."""
        kw: dict[str, Any] = dict(name="Tesla V100-SXM2-32GB", arch=ARCH_VOLTA, idle_w=40,
                                  power_limit_w=300, memory_total_mib=32768,
                                  instant_period_ms=20, instant_window_ms=10)
        kw.update(overrides)
        return cls(**kw)

    @property
    def has_average(self) -> bool:
        """Field 185 supported and GetPowerUsage returns the 1 s average."""
        return self.arch >= ARCH_AMPERE and not self.ga100

    @property
    def has_energy(self) -> bool:
        return self.arch >= ARCH_VOLTA


class _GpuModel:
    """A Gpu converted to the integer units of the C library (ns, mW, bytes)."""

    def __init__(self, gpu: Gpu, index: int) -> None:
        w = f"gpu {index}"
        self.gpu = gpu
        self.idle_mw = _w_mw(gpu.idle_w, f"{w} idle_w")
        self.limit_mw = _w_mw(gpu.power_limit_w, f"{w} power_limit_w")
        self.counter_period = _ms_ns(gpu.counter_period_ms, f"{w} counter_period_ms")
        self.counter_phase = _ms_ns(gpu.counter_phase_ms, f"{w} counter_phase_ms")
        self.instant_period = _ms_ns(gpu.instant_period_ms, f"{w} instant_period_ms")
        self.instant_window = _ms_ns(gpu.instant_window_ms, f"{w} instant_window_ms")
        self.instant_phase = _ms_ns(gpu.instant_phase_ms, f"{w} instant_phase_ms")
        self.average_window = _ms_ns(gpu.average_window_ms, f"{w} average_window_ms")
        self.segments = sorted(
            (_ms_ns(s.start_ms, f"{w} segment start_ms"), _ms_ns(s.end_ms, f"{w} segment end_ms"),
             _w_mw(s.watts, f"{w} segment watts"))
            for s in gpu.segments
        )
        self.lost = None if gpu.lost_at_ms is None else _ms_ns(gpu.lost_at_ms, f"{w} lost at_ms")
        self.resets = sorted(_ms_ns(r, f"{w} reset at_ms") for r in gpu.resets_ms)
        self.processes = [
            (p, -(1 << 63) if p.start_ms is None else _ms_ns(p.start_ms, f"{w} process start_ms"),
             (1 << 63) - 1 if p.end_ms is None else _ms_ns(p.end_ms, f"{w} process end_ms"))
            for p in gpu.processes
        ]

    def validate(self, index: int) -> None:
        g, w = self.gpu, f"gpu {index}"
        _check_value_text(g.uuid, f"{w} uuid")
        _check_value_text(g.name, f"{w} name")
        if len(g.uuid.encode()) > 95 or len(g.name.encode()) > 95:
            raise ValueError(f"{w}: uuid and name must be at most 95 bytes")
        if self.limit_mw <= self.idle_mw or self.idle_mw < 0:
            raise ValueError(f"{w}: need 0 <= idle_w < power_limit_w")
        if min(self.counter_period, self.instant_window, self.average_window) <= 0:
            raise ValueError(f"{w}: periods and windows must be positive")
        if self.instant_period < 1000:
            raise ValueError(f"{w}: instant_period_ms must be at least 0.001")
        if not 0 <= g.samples_depth <= _MAX_SAMPLES_DEPTH:
            raise ValueError(f"{w}: samples_depth out of range")
        if g.sample_clock not in ("realtime", "boottime"):
            raise ValueError(f"{w}: sample_clock must be 'realtime' or 'boottime'")
        if not 0 <= g.counter_offset_mj < 1 << 64:
            raise ValueError(f"{w}: counter_offset_mj out of range")
        for start, end, mw in self.segments:
            if start < 0 or end <= start or mw < 0:
                raise ValueError(f"{w}: segment needs 0 <= start_ms < end_ms and watts >= 0")
        for (_, a_end, _), (b_start, _, _) in pairwise(self.segments):
            if b_start < a_end:
                raise ValueError(f"{w}: segments overlap")
        if any(r < 0 for r in self.resets) or (self.lost is not None and self.lost < 0):
            raise ValueError(f"{w}: event times must be >= 0")
        for p, start, end in self.processes:
            if end <= start or p.used_memory_mib < 0 or not 0 <= p.pid < 1 << 32:
                raise ValueError(f"{w}: bad process {p}")

    # -- exact math, mirroring fake_nvml.c; t is scenario ns --

    def energy(self, a: int, b: int) -> int:
        """Integral of the true power over [a, b] in mW*ns."""
        if b <= a:
            return 0
        e = self.idle_mw * (b - a)
        for start, end, mw in self.segments:
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                e += (mw - self.idle_mw) * (hi - lo)
        return e

    def power_mw(self, t: int) -> int:
        for start, end, mw in self.segments:
            if start <= t < end:
                return mw
        return self.idle_mw

    @staticmethod
    def last_tick(t: int, phase: int, period: int) -> int:
        return phase + (t - phase) // period * period

    def last_publish(self, t: int) -> int:
        return self.last_tick(t, self.instant_phase, self.instant_period)

    def boxcar(self, end: int, window: int) -> int:
        return self.energy(end - window, end) // window

    def instant(self, t: int) -> int:
        return self.boxcar(self.last_publish(t), self.instant_window)

    def average(self, t: int) -> int:
        return self.boxcar(self.last_publish(t), self.average_window)

    def power_usage(self, t: int) -> int:
        return self.average(t) if self.gpu.has_average else self.instant(t)

    def counter(self, t: int) -> int:
        u = self.last_tick(t, self.counter_phase, self.counter_period)
        base, offset = 0, self.gpu.counter_offset_mj
        for r in self.resets:
            if r > t:
                break
            base, offset = r, 0
        return offset + self.energy(base, max(u, base)) // 1_000_000_000

    def alive(self, t: int) -> list[Process]:
        return [p for p, start, end in self.processes if start <= t < end]

    def breakpoints(self, quantity: str, a: int, b: int) -> list[int]:
        """Scenario times in (a, b] where ``quantity`` may change value."""
        if quantity == "counter_mj":
            period, phase = self.counter_period, self.counter_phase
            extra = [r for r in self.resets if a < r <= b]
        else:
            period, phase = self.instant_period, self.instant_phase
            extra = []
        first = self.last_tick(a, phase, period) + period
        if (b - first) // period > 100_000:
            raise ValueError("interval spans more than 100000 updates")
        return list(range(first, b + 1, period)) + extra


# ---------------------------------------------------------------------------- scenario

@dataclass
class Scenario:
    """Everything the fake NVML library serves. Times in ms relative to ``epoch_ns``.

    ``epoch_ns`` defaults to ``time.monotonic_ns()`` at creation, so scenario time 0 is
    "now". The clock offsets default to the values measured at creation; pinning them makes
    sample timestamps predictable exactly. Set any of them to None to let the library take
    its own reading at nvmlInit (the model then cannot predict what depends on it).
    """

    gpus: list[Gpu] = field(default_factory=list)
    epoch_ns: int | None = field(default_factory=time.monotonic_ns)
    driver_version: str = "550.54.15"
    nvml_version: str | None = None  # None: "12." + driver_version
    realtime_offset_ns: int | None = field(default_factory=measure_realtime_offset_ns)
    boottime_offset_ns: int | None = field(default_factory=measure_boottime_offset_ns)
    init_error: int = 0  # nonzero: nvmlInit returns this code

    # -- file --

    def validate(self) -> None:
        """Raise ValueError for what the C parser would reject."""
        _check_value_text(self.driver_version, "driver_version")
        if self.nvml_version is not None:
            _check_value_text(self.nvml_version, "nvml_version")
        if not 0 <= self.init_error < 1 << 31:
            raise ValueError("init_error must be a non-negative nvmlReturn_t")
        seen: set[str] = set()
        for i, gpu in enumerate(self.gpus):
            _GpuModel(gpu, i).validate(i)
            if gpu.uuid in seen:
                raise ValueError(f"duplicate uuid {gpu.uuid}")
            seen.add(gpu.uuid)

    def to_text(self) -> str:
        self.validate()
        out = ["# wattspan fake NVML scenario", "version 1"]
        for key in ("epoch_ns", "realtime_offset_ns", "boottime_offset_ns"):
            value = getattr(self, key)
            if value is not None:
                out.append(f"{key} {int(value)}")
        out.append(f"driver_version {_quote(self.driver_version)}")
        if self.nvml_version is not None:
            out.append(f"nvml_version {_quote(self.nvml_version)}")
        if self.init_error:
            out.append(f"init_error {self.init_error}")
        for i, g in enumerate(self.gpus):
            m = _GpuModel(g, i)
            tokens = [
                f"index={i}", f"uuid={_quote(g.uuid)}", f"name={_quote(g.name)}",
                f"arch={g.arch}", f"ga100={int(g.ga100)}",
                f"idle_w={_format_fixed(m.idle_mw, 3)}",
                f"power_limit_w={_format_fixed(m.limit_mw, 3)}",
                f"memory_total_mib={g.memory_total_mib}",
                f"memory_reserved_mib={g.memory_reserved_mib}",
                f"counter_period_ms={_format_fixed(m.counter_period, 6)}",
                f"counter_phase_ms={_format_fixed(m.counter_phase, 6)}",
                f"counter_offset_mj={g.counter_offset_mj}",
                f"instant_period_ms={_format_fixed(m.instant_period, 6)}",
                f"instant_window_ms={_format_fixed(m.instant_window, 6)}",
                f"instant_phase_ms={_format_fixed(m.instant_phase, 6)}",
                f"average_window_ms={_format_fixed(m.average_window, 6)}",
                f"samples_depth={g.samples_depth}",
                f"sample_clock={g.sample_clock}",
            ]
            if g.compute_capability is not None:
                tokens.append("compute_capability={}.{}".format(*g.compute_capability))
            out.append("gpu " + " ".join(tokens))
            for start, end, mw in m.segments:
                out.append(f"segment gpu={i} start_ms={_format_fixed(start, 6)} "
                           f"end_ms={_format_fixed(end, 6)} watts={_format_fixed(mw, 3)}")
            if m.lost is not None:
                out.append(f"lost gpu={i} at_ms={_format_fixed(m.lost, 6)}")
            for r in m.resets:
                out.append(f"reset gpu={i} at_ms={_format_fixed(r, 6)}")
            for p, start, end in m.processes:
                line = f"process gpu={i} pid={p.pid} used_memory_mib={p.used_memory_mib}"
                if p.start_ms is not None:
                    line += f" start_ms={_format_fixed(start, 6)}"
                if p.end_ms is not None:
                    line += f" end_ms={_format_fixed(end, 6)}"
                out.append(line)
        return "\n".join(out) + "\n"

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the scenario file (atomically) and return its path."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_text())
        os.replace(tmp, path)
        return path

    # -- time conversion --

    def _epoch(self) -> int:
        if self.epoch_ns is None:
            raise ValueError("the model needs epoch_ns")
        return self.epoch_ns

    def scenario_ns(self, t_ns: int) -> int:
        """Absolute CLOCK_MONOTONIC ns -> scenario ns (relative to epoch_ns)."""
        return t_ns - self._epoch()

    def monotonic_ns(self, scenario_ms: float) -> int:
        """Scenario milliseconds -> absolute CLOCK_MONOTONIC ns."""
        return self._epoch() + _ms_ns(scenario_ms, "scenario_ms")

    def _model(self, gpu_index: int) -> _GpuModel:
        return _GpuModel(self.gpus[gpu_index], gpu_index)

    # -- ground truth --

    def true_power_w(self, gpu_index: int, t_ns: int) -> float:
        """True power at monotonic time ``t_ns`` in W."""
        return self._model(gpu_index).power_mw(self.scenario_ns(t_ns)) / 1000

    def true_energy_mw_ns(self, gpu_index: int, t0_ns: int, t1_ns: int) -> int:
        """Exact integral of the true power over [t0_ns, t1_ns] in mW*ns (= pJ); signed."""
        m = self._model(gpu_index)
        a, b = self.scenario_ns(t0_ns), self.scenario_ns(t1_ns)
        return m.energy(a, b) if b >= a else -m.energy(b, a)

    def true_energy_j(self, gpu_index: int, t0_ns: int, t1_ns: int) -> float:
        """Exact integral of the true power over [t0_ns, t1_ns] in J (monotonic ns)."""
        return self.true_energy_mw_ns(gpu_index, t0_ns, t1_ns) / 1e12

    # -- what the library returns at monotonic time t_ns --

    def counter_mj(self, gpu_index: int, t_ns: int) -> int:
        """nvmlDeviceGetTotalEnergyConsumption and fields 83/191."""
        return self._model(gpu_index).counter(self.scenario_ns(t_ns))

    def instant_mw(self, gpu_index: int, t_ns: int) -> int:
        """Field 186: boxcar over instant_window_ms ending at the last publish <= t."""
        return self._model(gpu_index).instant(self.scenario_ns(t_ns))

    def average_mw(self, gpu_index: int, t_ns: int) -> int:
        """Field 185: boxcar over average_window_ms ending at the last publish <= t."""
        return self._model(gpu_index).average(self.scenario_ns(t_ns))

    def power_usage_mw(self, gpu_index: int, t_ns: int) -> int:
        """nvmlDeviceGetPowerUsage: the average on Ampere+ except GA100, else the instant."""
        return self._model(gpu_index).power_usage(self.scenario_ns(t_ns))

    def last_publish_ns(self, gpu_index: int, t_ns: int) -> int:
        """Monotonic ns of the last instant/average publish at or before ``t_ns``."""
        m = self._model(gpu_index)
        return self._epoch() + m.last_publish(self.scenario_ns(t_ns))

    def last_counter_update_ns(self, gpu_index: int, t_ns: int) -> int:
        """Monotonic ns of the last energy-counter update at or before ``t_ns``."""
        m = self._model(gpu_index)
        u = m.last_tick(self.scenario_ns(t_ns), m.counter_phase, m.counter_period)
        return self._epoch() + u

    def is_lost(self, gpu_index: int, t_ns: int) -> bool:
        m = self._model(gpu_index)
        return m.lost is not None and self.scenario_ns(t_ns) >= m.lost

    def utilization(self, gpu_index: int, t_ns: int) -> tuple[int, int]:
        """(gpu %, memory %) from nvmlDeviceGetUtilizationRates."""
        m = self._model(gpu_index)
        above = m.power_mw(self.scenario_ns(t_ns)) - m.idle_mw
        pct = 0 if above <= 0 else min(100, 100 * above // (m.limit_mw - m.idle_mw))
        return pct, pct // 2

    def running_processes(self, gpu_index: int, t_ns: int) -> list[Process]:
        return self._model(gpu_index).alive(self.scenario_ns(t_ns))

    def memory_used_bytes(self, gpu_index: int, t_ns: int) -> int:
        """Sum of running processes' memory (nvmlMemory_v2_t.used; v1 adds reserved)."""
        return sum(p.used_memory_mib << 20 for p in self.running_processes(gpu_index, t_ns))

    def sample_timestamp_us(self, gpu_index: int, publish_ns: int) -> int:
        """nvmlSample_t.timeStamp of the sample published at monotonic ``publish_ns``."""
        gpu = self.gpus[gpu_index]
        offset = (self.boottime_offset_ns if gpu.sample_clock == "boottime"
                  else self.realtime_offset_ns)
        if offset is None:
            raise ValueError("the model needs the scenario's clock offsets pinned")
        return (publish_ns + offset) // 1000

    def samples(self, gpu_index: int, t_ns: int, last_seen_us: int = 0) -> list[tuple[int, int]]:
        """(timeStamp µs, mW) that nvmlDeviceGetSamples(POWER) returns at ``t_ns``, oldest
        first: the newest samples_depth publishes <= t with timestamp > last_seen_us."""
        m = self._model(gpu_index)
        last = m.last_publish(self.scenario_ns(t_ns))
        depth = self.gpus[gpu_index].samples_depth
        out = []
        for k in range(depth - 1, -1, -1):
            publish = last - k * m.instant_period
            ts = self.sample_timestamp_us(gpu_index, self._epoch() + publish)
            if ts > last_seen_us:
                out.append((ts, m.boxcar(publish, m.instant_window)))
        return out

    def possible_values(self, quantity: str, gpu_index: int, t0_ns: int, t1_ns: int) -> set[int]:
        """Every value ``quantity`` takes over monotonic [t0_ns, t1_ns]: what a call made
        somewhere in that interval may return. quantity: one of QUANTITIES."""
        m = self._model(gpu_index)
        fn: Callable[[int], int] = {
            "counter_mj": m.counter,
            "instant_mw": m.instant,
            "average_mw": m.average,
            "power_usage_mw": m.power_usage,
        }[quantity]
        a, b = self.scenario_ns(t0_ns), self.scenario_ns(t1_ns)
        return {fn(a)} | {fn(x) for x in m.breakpoints(quantity, a, b)}

    def compute_capability(self, gpu_index: int) -> tuple[int, int]:
        gpu = self.gpus[gpu_index]
        if gpu.compute_capability is not None:
            return gpu.compute_capability
        major, minor = _DEFAULT_CC.get(gpu.arch, (0, 0))
        return (major, 0) if gpu.arch == ARCH_AMPERE and gpu.ga100 else (major, minor)


# ---------------------------------------------------------------------------- build

def _build_key(compiler: str) -> str:
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    h.update("\0".join((compiler, *CFLAGS, *LIBS)).encode())
    return h.hexdigest()[:20]


def build_fake_nvml(out_dir: str | os.PathLike[str]) -> Path:
    """Compile fake_nvml.c into ``<out_dir>/libnvidia-ml.so.1`` and return that path.

    Builds are cached by a hash of the source and flags in the system temp directory, so
    later calls only copy the cached file (or do nothing when out_dir already has it).
    """
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"C compiler {compiler!r} not found; cannot build the fake NVML")
    key = _build_key(compiler)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / LIBRARY_NAME
    stamp = out_dir / f".{LIBRARY_NAME}.key"
    if target.exists() and stamp.exists() and stamp.read_text() == key:
        return target

    cache_dir = Path(tempfile.gettempdir()) / f"wattspan-fake-nvml-{key}"
    cached = cache_dir / LIBRARY_NAME
    if not cached.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Unique temp name + rename: concurrent builders (pytest-xdist) never see half a file.
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".so")
        os.close(fd)
        cmd = [compiler, *CFLAGS, "-o", tmp_name, str(SOURCE), *LIBS]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp_name)
            raise RuntimeError(f"building the fake NVML failed: {' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp_name, cached)

    if cached.resolve() != target.resolve():
        tmp = out_dir / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
        shutil.copyfile(cached, tmp)
        os.replace(tmp, target)  # a process that has the old file mapped keeps it
    stamp.write_text(key)
    return target
