"""NVIDIA GPUs through NVML (the ``pynvml`` module of nvidia-ml-py).

Ground truth is the energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the
driver loaded, Volta+). Inside each counter step the shape comes from instant power (field
``NVML_FI_DEV_POWER_INSTANT``). ``nvmlDeviceGetPowerUsage`` is a 1 s average on Ampere (but
GA100) and newer, so it is used for shape only on boards where it is instantaneous. Both
counters and power go through one ``nvmlDeviceGetFieldValues`` call per device per read.

GPUs are keyed by UUID, never by index. A GPU that falls off the bus
(``NVML_ERROR_GPU_IS_LOST``) is reported once, read as an error from then on, and looked up
again by UUID every ``retry_lost_s``; the other GPUs keep going.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from wattspan.collectors import register
from wattspan.collectors.base import (
    DeviceInfo,
    DeviceInitError,
    DeviceLost,
    DeviceNotSupported,
    DevicePermissionDenied,
    Quality,
    Reading,
    TransientReadError,
    Unavailable,
    WattspanDeviceError,
)
from wattspan.collectors.counters import CumulativeCounter
from wattspan.collectors.updates import DatedReadings

_log = logging.getLogger(__name__)

DEFAULT_LIBRARY = "libnvidia-ml.so.1"

FI_TOTAL_ENERGY_CONSUMPTION = 83  # mJ, unsigned long long
FI_POWER_AVERAGE = 185  # mW, 1 s average (Ampere+ except GA100)
FI_POWER_INSTANT = 186  # mW, current power

# nvmlDeviceArchitecture_t
ARCH_NAMES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere",
              8: "ada", 9: "hopper", 10: "blackwell"}
ARCH_VOLTA = 5
ARCH_AMPERE = 7

# The NVML library is process-global in pynvml; loading and init are serialised here.
_load_lock = threading.Lock()


def _pynvml():
    import pynvml

    return pynvml


def translate_error(err: Exception) -> WattspanDeviceError:
    """Map an ``NVMLError`` onto the project's device errors (the only place that does)."""
    nv = _pynvml()
    code = getattr(err, "value", None)
    text = f"{err} (NVML error {code})"
    if code == nv.NVML_ERROR_GPU_IS_LOST:
        return DeviceLost(text)
    if code in (nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_FUNCTION_NOT_FOUND):
        return DeviceNotSupported(text)
    if code == nv.NVML_ERROR_NO_PERMISSION:
        return DevicePermissionDenied(text)
    if code in (nv.NVML_ERROR_LIBRARY_NOT_FOUND, nv.NVML_ERROR_DRIVER_NOT_LOADED,
                nv.NVML_ERROR_UNINITIALIZED, nv.NVML_ERROR_LIB_RM_VERSION_MISMATCH):
        return DeviceInitError(text)
    return TransientReadError(text)


def _field_value(fv) -> float | None:
    """The number in an ``nvmlFieldValue_t``, or None when its own status is not SUCCESS."""
    if fv.nvmlReturn != 0:
        return None
    v = fv.value
    return {
        0: v.dVal, 1: v.uiVal, 2: v.ulVal, 3: v.ullVal, 4: v.sllVal, 5: v.siVal, 6: v.usVal,
    }.get(fv.valueType)


def instant_power_period_ns(arch: int | None) -> int:
    """How often the board republishes instant power: 20 ms up to Volta, 100 ms from Ampere
    (measured with an external meter: Yang et al., SC'24, "Part-time Power Measurements")."""
    if arch is not None and arch <= ARCH_VOLTA:
        return 20_000_000
    return 100_000_000


@dataclass
class _Gpu:
    index: int
    uuid: str
    handle: object
    info: DeviceInfo
    fields: list[int]
    energy_via: str | None  # "field", "call" or None
    power_via: str | None  # "field", "call" or None
    dated: DatedReadings
    counter: CumulativeCounter = field(default_factory=CumulativeCounter)
    lost_since_ns: int | None = None
    next_retry_ns: int = 0
    slow_tick: int = 0


@register("nvml")
class NvmlCollector:
    """Polled collector for every NVIDIA GPU NVML can see."""

    name = "nvml"
    min_period_ms = 0.0

    def __init__(self, library: str | None = None, *, retry_lost_s: float = 5.0,
                 clock=time.monotonic_ns, slow_every: int = 10) -> None:
        self.library = library or os.environ.get("WATTSPAN_NVML_LIBRARY") or DEFAULT_LIBRARY
        self.retry_lost_ns = int(retry_lost_s * 1e9)
        self.clock = clock
        #: Utilization and memory change slowly; they are read every ``slow_every`` reads.
        self.slow_every = max(1, slow_every)
        self.driver_version: str | None = None
        self._gpus: list[_Gpu] = []
        self._initialised = False

    # --- lifecycle

    def _init(self) -> None:
        nv = _pynvml()
        with _load_lock:
            if self.library != DEFAULT_LIBRARY:
                # pynvml always dlopens the bare soname; an explicit path is loaded here and
                # handed to it (its loader is skipped when nvmlLib is already set).
                try:
                    lib = ctypes.CDLL(self.library)
                except OSError as err:
                    raise DeviceInitError(
                        f"cannot load NVML library {self.library}: {err}") from err
                if nv.nvmlLib is not lib:
                    nv.nvmlLib = lib
                    nv._nvmlGetFunctionPointer_cache.clear()
            try:
                nv.nvmlInit()
            except nv.NVMLError as err:
                raise translate_error(err) from err
        self._initialised = True

    def discover(self) -> list[DeviceInfo] | Unavailable:
        nv = _pynvml()
        try:
            self._init()
        except WattspanDeviceError as err:
            return Unavailable(self.name, _init_reason(self.library, err))
        try:
            self.driver_version = _text(nv.nvmlSystemGetDriverVersion())
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as err:
            return Unavailable(self.name, f"NVML initialised but cannot list GPUs: {err}")
        found = []
        for index in range(count):
            try:
                gpu = self._open(index)
            except WattspanDeviceError as err:
                _log.warning("GPU at NVML index %d skipped: %s", index, err)
                continue
            self._gpus.append(gpu)
            found.append(gpu.info)
        if not found:
            return Unavailable(self.name, f"NVML {self.driver_version} found no usable GPU")
        return found

    def close(self) -> None:
        if self._initialised:
            nv = _pynvml()
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as err:
                _log.debug("nvmlShutdown: %s", err)
            self._initialised = False
        self._gpus = []

    # --- discovery of one GPU

    def _open(self, index: int) -> _Gpu:
        nv = _pynvml()
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            name = _text(nv.nvmlDeviceGetName(handle))
        except nv.NVMLError as err:
            raise translate_error(err) from err
        arch = _optional(lambda: nv.nvmlDeviceGetArchitecture(handle))
        limit_mw = _optional(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle))
        energy_via, power_via, fields = self._probe(handle, arch, name)
        if energy_via:
            quality, source = Quality.MEASURED, "NVML energy counter"
            if power_via:
                source += " shaped by instant power"
        elif power_via:
            quality, source = Quality.SAMPLED, "NVML power samples (no energy counter)"
        else:
            raise DeviceNotSupported(f"{name} ({uuid}) reports neither energy nor power")
        info = DeviceInfo(
            device_id=f"gpu:{uuid}",
            kind="gpu",
            name=name,
            source=source,
            quality=quality,
            details={
                "nvml_index": index,
                "uuid": uuid,
                "architecture": ARCH_NAMES.get(arch, str(arch)) if arch is not None else None,
                "power_limit_w": limit_mw / 1000.0 if limit_mw else None,
                "driver_version": self.driver_version,
                "library": self.library,
                "energy_via": energy_via,
                "power_via": power_via,
            },
        )
        return _Gpu(index, uuid, handle, info, fields, energy_via, power_via,
                    DatedReadings(info.device_id, instant_power_period_ns(arch)))

    def _probe(self, handle, arch, name):
        """Which readings this board supports, tried once rather than on every read."""
        nv = _pynvml()
        fields = []
        energy_via = power_via = None
        try:
            values = nv.nvmlDeviceGetFieldValues(handle, [FI_TOTAL_ENERGY_CONSUMPTION,
                                                          FI_POWER_INSTANT])
            if _field_value(values[0]) is not None:
                energy_via = "field"
                fields.append(FI_TOTAL_ENERGY_CONSUMPTION)
            if _field_value(values[1]) is not None:
                power_via = "field"
                fields.append(FI_POWER_INSTANT)
        except nv.NVMLError:
            pass
        if energy_via is None and _optional(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle)):
            energy_via = "call"
        instantaneous_usage = arch is None or arch < ARCH_AMPERE or "A100" in name
        if power_via is None and instantaneous_usage and \
                _optional(lambda: nv.nvmlDeviceGetPowerUsage(handle)) is not None:
            power_via = "call"
        if energy_via is None and power_via is None and \
                _optional(lambda: nv.nvmlDeviceGetPowerUsage(handle)) is not None:
            # Last resort: the 1 s average, still better than nothing for long intervals.
            power_via = "call"
        return energy_via, power_via, fields

    # --- reading

    def read(self) -> list[Reading]:
        readings = []
        for gpu in self._gpus:
            if gpu.lost_since_ns is not None and not self._retry(gpu):
                readings.append(Reading(gpu.info.device_id, self.clock(), error="GPU is lost"))
                continue
            readings.extend(self._read_one(gpu))
        return readings

    def _read_one(self, gpu: _Gpu) -> list[Reading]:
        nv = _pynvml()
        h = gpu.handle
        t0 = self.clock()
        try:
            energy_mj = power_mw = None
            if gpu.fields:
                values = nv.nvmlDeviceGetFieldValues(h, gpu.fields)
                for fid, fv in zip(gpu.fields, values, strict=True):
                    if fid == FI_TOTAL_ENERGY_CONSUMPTION:
                        energy_mj = _field_value(fv)
                    else:
                        power_mw = _field_value(fv)
            if gpu.energy_via == "call":
                energy_mj = nv.nvmlDeviceGetTotalEnergyConsumption(h)
            if gpu.power_via == "call":
                power_mw = nv.nvmlDeviceGetPowerUsage(h)
            util = mem = None
            gpu.slow_tick += 1
            if gpu.slow_tick >= self.slow_every:
                gpu.slow_tick = 0
                util = _optional(lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = _optional(lambda: nv.nvmlDeviceGetMemoryInfo(h).used)
        except nv.NVMLError as err:
            return [self._failed(gpu, translate_error(err), t0)]
        t1 = self.clock()
        energy_j = None
        if energy_mj is not None:
            energy_j = gpu.counter.update(int(energy_mj)) / 1000.0
        readings = gpu.dated.read(
            (t0 + t1) // 2, energy_j, power_mw / 1000.0 if power_mw is not None else None)
        if util is not None or mem is not None:
            readings.append(Reading(gpu.info.device_id, t1, utilization_pct=float(util)
                                    if util is not None else None, memory_used_bytes=mem))
        return readings

    def _failed(self, gpu: _Gpu, err: WattspanDeviceError, t_ns: int) -> Reading:
        if isinstance(err, DeviceLost):
            gpu.lost_since_ns = t_ns
            gpu.next_retry_ns = t_ns + self.retry_lost_ns
            _log.warning(
                "GPU %s (%s) is lost: %s. Its energy from now on is partial; the other devices "
                "keep being measured, and it is looked up again every %.0f s.",
                gpu.index, gpu.uuid, err, self.retry_lost_ns / 1e9,
            )
        else:
            _log.debug("GPU %s read failed: %s", gpu.uuid, err)
        return Reading(gpu.info.device_id, t_ns, error=str(err))

    def _retry(self, gpu: _Gpu) -> bool:
        """Look a lost GPU up again by UUID; True if it answers again."""
        now = self.clock()
        if now < gpu.next_retry_ns:
            return False
        gpu.next_retry_ns = now + self.retry_lost_ns
        nv = _pynvml()
        try:
            handle = nv.nvmlDeviceGetHandleByUUID(gpu.uuid)
            nv.nvmlDeviceGetUUID(handle)
        except nv.NVMLError:
            return False
        gpu.handle = handle
        gpu.lost_since_ns = None
        gpu.dated.restart()
        _log.warning("GPU %s (%s) answers again", gpu.index, gpu.uuid)
        return True


    def gpus_by_pid(self) -> dict[int, set[str]]:
        """Device ids of the GPUs on which each process has a running compute context.

        Pids are as the host sees them: a process in another pid namespace (a container)
        appears under its host pid.
        """
        nv = _pynvml()
        found: dict[int, set[str]] = {}
        for gpu in self._gpus:
            if gpu.lost_since_ns is not None:
                continue
            try:
                processes = nv.nvmlDeviceGetComputeRunningProcesses(gpu.handle)
            except nv.NVMLError as err:
                _log.debug("GPU %s processes: %s", gpu.uuid, err)
                continue
            for process in processes:
                found.setdefault(process.pid, set()).add(gpu.info.device_id)
        return found


def _init_reason(library: str, err: WattspanDeviceError) -> str:
    text = str(err)
    if "Library Not Found" in text or "cannot load" in text:
        if library == DEFAULT_LIBRARY:
            return ("no NVIDIA driver: libnvidia-ml.so.1 not found (no NVIDIA GPU here, or the "
                    "driver is not installed; set WATTSPAN_NVML_LIBRARY to its path)")
        return f"NVML library {library} could not be loaded ({text})"
    if "Driver Not Loaded" in text:
        return "the NVIDIA kernel driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED)"
    return f"NVML could not be initialised: {text}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(call):
    """The value of an NVML call that may legitimately be unsupported, else None."""
    nv = _pynvml()
    try:
        return call()
    except nv.NVMLError:
        return None
