"""The fake NVML library, driven through the real pynvml and through raw ctypes calls.

Most checks freeze the library's clock (wattspanFakeNvmlSetClock) and compare with the exact
model in nvml_scenario.py. Checks against the real clock never assert on wall time: they read
time.monotonic_ns() before and after a call and require the returned value to be one the
model takes somewhere in that interval.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from ctypes import POINTER, byref, c_char_p, c_int, c_longlong, c_uint, c_ulonglong, c_void_p
from itertools import pairwise
from pathlib import Path

import pynvml
import pytest

from . import nvml_scenario
from .nvml_scenario import (
    FI_ENERGY,
    FI_POWER_AVERAGE,
    FI_POWER_CURRENT_LIMIT,
    FI_POWER_INSTANT,
    FI_TOTAL_ENERGY_CONSUMPTION,
    LIBRARY_NAME,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_GPU_NOT_FOUND,
    NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NVML_ERROR_UNKNOWN,
    NVML_SUCCESS,
    SCENARIO_ENV,
    Gpu,
    Process,
    Scenario,
    Segment,
    build_fake_nvml,
)

MS = 1_000_000  # ns

EXPORTED = [
    "nvmlInit", "nvmlInit_v2", "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString",
    "nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion", "nvmlDeviceGetCount",
    "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetIndex", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
    "nvmlDeviceGetArchitecture", "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFieldValues", "nvmlDeviceGetSamples",
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetCudaComputeCapability",
    "wattspanFakeNvmlSetClock",
]


class ProcessInfoV1(ctypes.Structure):
    _fields_ = [("pid", c_uint), ("usedGpuMemory", c_ulonglong)]


def nvml_error(code: int) -> type[Exception]:
    return pynvml.nvmlExceptionClass(code)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def fake_lib_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


_loaded: dict[Path, ctypes.CDLL] = {}


class FakeNvml:
    """The fake library loaded in this process, plus raw-call helpers."""

    def __init__(self, lib: ctypes.CDLL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.lib = lib
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch

    def use(self, scenario: Scenario, name: str = "scenario.txt") -> Path:
        path = scenario.write(self.tmp_path / name)
        self.monkeypatch.setenv(SCENARIO_ENV, str(path))
        return path

    def start(self, scenario: Scenario) -> Scenario:
        self.use(scenario)
        pynvml.nvmlInit()
        return scenario

    def fn(self, name: str, *argtypes: object, restype: object = c_int):
        # lib[name] is a fresh function object: pynvml's cached ones keep their own settings.
        f = self.lib[name]
        f.restype = restype
        f.argtypes = argtypes
        return f

    def freeze(self, monotonic_ns: int) -> None:
        self.fn("wattspanFakeNvmlSetClock", c_int, c_longlong, restype=None)(1, monotonic_ns)

    def thaw(self) -> None:
        self.fn("wattspanFakeNvmlSetClock", c_int, c_longlong, restype=None)(0, 0)

    def raw_handle(self, index: int) -> c_void_p:
        handle = c_void_p()
        rc = self.fn("nvmlDeviceGetHandleByIndex_v2", c_uint, POINTER(c_void_p))(
            index, byref(handle))
        assert rc == NVML_SUCCESS
        return handle

    def initialized(self) -> bool:
        count = c_uint()
        return self.fn("nvmlDeviceGetCount_v2", POINTER(c_uint))(byref(count)) == NVML_SUCCESS

    def shutdown_all(self) -> None:
        for _ in range(1000):
            if not self.initialized():
                return
            self.fn("nvmlShutdown")()
        raise AssertionError("refcount never reached 0")


@pytest.fixture
def nvml(fake_lib_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """pynvml bound to the fake via `pynvml.nvmlLib = CDLL(path)`, reset around each test."""
    lib = _loaded.get(fake_lib_path)
    if lib is None:
        lib = _loaded[fake_lib_path] = ctypes.CDLL(str(fake_lib_path))
    saved = pynvml.nvmlLib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    pynvml.nvmlLib = lib
    monkeypatch.delenv(SCENARIO_ENV, raising=False)
    fake = FakeNvml(lib, tmp_path, monkeypatch)
    fake.shutdown_all()
    try:
        yield fake
    finally:
        fake.thaw()
        fake.shutdown_all()
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.nvmlLib = saved
        pynvml._nvmlLib_refcount = 0


# ---------------------------------------------------------------------------- build, lifecycle

def test_build_is_cached_and_exports_the_nvml_symbols(fake_lib_path, tmp_path, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise AssertionError("rebuilt although the source did not change")

    monkeypatch.setattr(nvml_scenario.subprocess, "run", no_compiler)
    again = build_fake_nvml(tmp_path / "elsewhere")
    assert again.name == LIBRARY_NAME
    assert again.read_bytes() == fake_lib_path.read_bytes()
    assert build_fake_nvml(tmp_path / "elsewhere") == again

    lib = ctypes.CDLL(str(again))
    missing = [name for name in EXPORTED if not hasattr(lib, name)]
    assert not missing
    # Internal helpers stay hidden.
    assert not hasattr(lib, "counter_mj") and not hasattr(lib, "energy_mw_ns")


def test_calls_before_init_are_uninitialized(nvml):
    with pytest.raises(nvml_error(NVML_ERROR_UNINITIALIZED)):
        pynvml.nvmlDeviceGetCount()
    buf = ctypes.create_string_buffer(80)
    assert nvml.fn("nvmlSystemGetDriverVersion", c_char_p, c_uint)(buf, 80) == 1
    power = c_uint()
    bogus = c_void_p(0x1000)
    assert nvml.fn("nvmlDeviceGetPowerUsage", c_void_p, POINTER(c_uint))(
        bogus, byref(power)) == NVML_ERROR_UNINITIALIZED


def test_init_is_refcounted_and_rereads_the_scenario_only_from_zero(nvml):
    nvml.use(Scenario(gpus=[Gpu(), Gpu()]))
    pynvml.nvmlInit()                               # C nvmlInitWithFlags
    assert nvml.fn("nvmlInit_v2")() == NVML_SUCCESS
    assert nvml.fn("nvmlInit")() == NVML_SUCCESS
    assert pynvml.nvmlDeviceGetCount() == 2

    nvml.use(Scenario(gpus=[Gpu()]))                # not read while initialized
    assert nvml.fn("nvmlInit_v2")() == NVML_SUCCESS
    assert pynvml.nvmlDeviceGetCount() == 2
    for _ in range(3):
        assert nvml.fn("nvmlShutdown")() == NVML_SUCCESS
        assert pynvml.nvmlDeviceGetCount() == 2
    pynvml.nvmlShutdown()
    with pytest.raises(nvml_error(NVML_ERROR_UNINITIALIZED)):
        pynvml.nvmlDeviceGetCount()
    assert nvml.fn("nvmlShutdown")() == NVML_SUCCESS  # extra shutdowns are no error

    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 1


def test_missing_scenario_is_driver_not_loaded(nvml, tmp_path, capfd):
    with pytest.raises(nvml_error(NVML_ERROR_DRIVER_NOT_LOADED)):
        pynvml.nvmlInit()
    assert capfd.readouterr().err == ""

    missing = tmp_path / "nope.txt"
    nvml.monkeypatch.setenv(SCENARIO_ENV, str(missing))
    assert nvml.fn("nvmlInit_v2")() == NVML_ERROR_DRIVER_NOT_LOADED
    err = capfd.readouterr().err
    assert str(missing) in err and err.count("\n") == 1
    assert not nvml.initialized()


MALFORMED = [
    ("gpu index=0 uuid=GPU-a\n", 1, "first directive must be 'version 1'"),
    ("", 0, "empty scenario"),
    ("version 1\ngpu index=0 uuid=GPU-a colour=red\n", 2, "unknown key 'colour'"),
    ("version 1\ngpu index=0 uuid=GPU-a idle_w=6O\n", 2, "idle_w=6O"),
    ("version 1\ngpu index=0 uuid=GPU-a\nsegment gpu=0 start_ms=0.0000001 end_ms=1 watts=1\n",
     3, "start_ms=0.0000001"),
    ("version 1\ngpu index=0 uuid=GPU-a\nsegment gpu=0 start_ms=0 end_ms=10 watts=100\n"
     "# a comment\nsegment gpu=0 start_ms=5 end_ms=20 watts=100\n",
     5, "overlaps the one on line 3"),
    ('version 1\ngpu index=0 uuid=GPU-a name="NVIDIA H100\n', 2, "unterminated double quote"),
    ("version 1\ngpu index=1 uuid=GPU-a\n", 2, "out of order"),
    ("version 1\ngpu index=0 uuid=GPU-a\nlost gpu=1 at_ms=5\n", 3, "gpu=1 is not defined"),
    ("version 1\ngpu index=0 uuid=GPU-a\ngpu index=1 uuid=GPU-a\n", 3, "duplicate uuid"),
    ("version 1\nwattage 5\n", 2, "unknown directive 'wattage'"),
    ("version 1\ngpu index=0\n", 2, "needs uuid="),
    ("version 1\ngpu index=0 uuid=GPU-a uuid=GPU-b\n", 2, "duplicate key 'uuid'"),
    ("version 1\ngpu index=0 uuid=GPU-a idle_w=700 power_limit_w=700\n", 2, "greater than idle"),
]


@pytest.mark.parametrize("text,line,message", MALFORMED)
def test_malformed_scenario_fails_init_naming_file_and_line(nvml, capfd, text, line, message):
    path = nvml.tmp_path / "bad.txt"
    path.write_text(text)
    nvml.monkeypatch.setenv(SCENARIO_ENV, str(path))
    with pytest.raises(nvml_error(NVML_ERROR_UNKNOWN)):
        pynvml.nvmlInit()
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"fake_nvml: {path}:{line}: "), err
    assert message in err
    assert not nvml.initialized()


def test_init_error_and_zero_gpus(nvml):
    nvml.use(Scenario(gpus=[Gpu()], init_error=18))
    with pytest.raises(nvml_error(18)):
        pynvml.nvmlInit()

    nvml.use(Scenario(gpus=[]))
    with pytest.raises(nvml_error(NVML_ERROR_GPU_NOT_FOUND)):
        pynvml.nvmlInit()
    pynvml.nvmlInitWithFlags(pynvml.NVML_INIT_FLAG_NO_GPUS)
    assert pynvml.nvmlDeviceGetCount() == 0


# ---------------------------------------------------------------------------- identity

def test_identity_queries(nvml):
    h100 = Gpu(counter_offset_mj=1)
    a100 = Gpu.a100(uuid="GPU-00000000-1111-2222-3333-444444444444", power_limit_w=400.5)
    sc = nvml.start(Scenario(gpus=[h100, a100], driver_version="555.42.06"))

    assert pynvml.nvmlDeviceGetCount() == 2
    assert pynvml.nvmlSystemGetDriverVersion() == "555.42.06"
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.555.42.06"
    for i, gpu in enumerate(sc.gpus):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        assert pynvml.nvmlDeviceGetIndex(h) == i
        assert pynvml.nvmlDeviceGetName(h) == gpu.name
        assert pynvml.nvmlDeviceGetUUID(h) == gpu.uuid
        assert pynvml.nvmlDeviceGetArchitecture(h) == gpu.arch
        assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == sc.compute_capability(i)
        by_uuid = pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
        assert ctypes.cast(by_uuid, c_void_p).value == ctypes.cast(h, c_void_p).value
        limit_mw = round(gpu.power_limit_w * 1000)
        assert pynvml.nvmlDeviceGetPowerManagementLimit(h) == limit_mw
        assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == limit_mw
    assert pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0)) == (9, 0)
    assert pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(1)) == (8, 0)
    with pytest.raises(nvml_error(NVML_ERROR_NOT_FOUND)):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-does-not-exist")
    with pytest.raises(nvml_error(NVML_ERROR_INVALID_ARGUMENT)):
        pynvml.nvmlDeviceGetHandleByIndex(2)

    error_string = nvml.fn("nvmlErrorString", c_int, restype=c_char_p)
    assert error_string(15) == b"GPU is lost"
    assert error_string(12345) == b"Unknown Error"
    assert str(pynvml.NVMLError(19)) == "In use by another client"  # pynvml asks the library


def test_raw_argument_checks(nvml):
    nvml.start(Scenario(gpus=[Gpu(name="NVIDIA L4")]))
    h = nvml.raw_handle(0)
    get_name = nvml.fn("nvmlDeviceGetName", c_void_p, c_char_p, c_uint)
    buf = ctypes.create_string_buffer(96)
    assert get_name(h, buf, len("NVIDIA L4")) == NVML_ERROR_INSUFFICIENT_SIZE
    assert get_name(h, buf, len("NVIDIA L4") + 1) == NVML_SUCCESS and buf.value == b"NVIDIA L4"
    assert get_name(h, None, 96) == NVML_ERROR_INVALID_ARGUMENT
    get_uuid = nvml.fn("nvmlDeviceGetUUID", c_void_p, c_char_p, c_uint)
    assert get_uuid(h, buf, 10) == NVML_ERROR_INSUFFICIENT_SIZE
    assert get_uuid(h, buf, 80) == NVML_SUCCESS   # NVML_DEVICE_UUID_BUFFER_SIZE is enough

    stranger = ctypes.create_string_buffer(256)
    power = c_uint()
    get_power = nvml.fn("nvmlDeviceGetPowerUsage", c_void_p, POINTER(c_uint))
    assert get_power(ctypes.addressof(stranger), byref(power)) == NVML_ERROR_INVALID_ARGUMENT
    assert get_power(None, byref(power)) == NVML_ERROR_INVALID_ARGUMENT
    assert get_power(h, None) == NVML_ERROR_INVALID_ARGUMENT
    assert nvml.fn("nvmlDeviceGetCount_v2", POINTER(c_uint))(None) == NVML_ERROR_INVALID_ARGUMENT
    get_fields = nvml.fn("nvmlDeviceGetFieldValues", c_void_p, c_int, c_void_p)
    assert get_fields(h, 1, None) == NVML_ERROR_INVALID_ARGUMENT


# ---------------------------------------------------------------------------- energy counter

def test_energy_counter_steps_at_the_counter_period_in_real_time(nvml):
    gpu = Gpu(counter_period_ms=20, counter_phase_ms=3, counter_offset_mj=987_654_321,
              segments=[Segment(0, 60_000, 312.5)])
    sc = nvml.start(Scenario(gpus=[gpu]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    seen: set[int] = set()
    deadline = time.monotonic() + 1.5
    while (len(seen) < 6 or time.monotonic() < deadline - 1.2) and time.monotonic() < deadline:
        before = time.monotonic_ns()
        energy = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        after = time.monotonic_ns()
        assert energy in sc.possible_values("counter_mj", 0, before, after)
        seen.add(energy)
        time.sleep(0.002)
    assert len(seen) >= 3
    # After the first update at 3 ms every value is offset + floor(937.5 + 6250 k) mJ:
    # 312.5 W for 3 ms, then 6250 mJ per 20 ms period.
    steps = sorted(seen - {987_654_321})
    assert all((b - a) % 6250 == 0 for a, b in pairwise(steps))


def test_energy_counter_matches_the_model_exactly(nvml):
    gpu = Gpu(counter_period_ms=100, counter_phase_ms=7.5, counter_offset_mj=5_000_000,
              idle_w=61.25,
              segments=[Segment(10, 250.000001, 400.125), Segment(300, 900, 699.999)])
    sc = nvml.start(Scenario(gpus=[gpu]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)

    nvml.freeze(sc.monotonic_ns(0))
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 5_000_000
    # Hand computed: the update at 107.5 ms has seen 10 ms idle and 97.5 ms at 400.125 W.
    nvml.freeze(sc.monotonic_ns(150))
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == 5_000_000 + int(
        0.010 * 61.25 * 1000 + 0.0975 * 400.125 * 1000)

    times = [sc.monotonic_ns(ms) for ms in range(-50, 1200, 7)]
    for update in range(-1, 13):
        u = sc.monotonic_ns(7.5 + 100 * update)
        times += [u - 1, u, u + 1]
    for t in times:
        nvml.freeze(t)
        expected = sc.counter_mj(0, t)
        assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == expected
        fields = pynvml.nvmlDeviceGetFieldValues(h, [FI_TOTAL_ENERGY_CONSUMPTION, FI_ENERGY])
        assert [f.value.ullVal for f in fields] == [expected, expected]
        assert sc.counter_mj(0, t) == sc.counter_mj(0, sc.last_counter_update_ns(0, t))


def test_counter_reset_restarts_from_zero(nvml):
    gpu = Gpu(counter_offset_mj=10**12, idle_w=200, segments=[], resets_ms=[350])
    sc = nvml.start(Scenario(gpus=[gpu]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    readings = {}
    for ms in (349.999, 350, 399.999, 400, 1000):
        nvml.freeze(sc.monotonic_ns(ms))
        readings[ms] = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        assert readings[ms] == sc.counter_mj(0, sc.monotonic_ns(ms))
    assert readings[349.999] == 10**12 + 60_000     # 200 W over [0, 300 ms]
    assert readings[350] == 0 and readings[399.999] == 0
    assert readings[400] == 10_000                  # 200 W over [350, 400 ms]
    assert readings[1000] == 130_000                # 200 W over [350, 1000 ms]


# ---------------------------------------------------------------------------- power fields

def test_field_values_per_field_status_types_and_timestamps(nvml):
    sc = nvml.start(Scenario(gpus=[Gpu(counter_offset_mj=42, segments=[Segment(0, 10_000, 500)]),
                                   Gpu.a100()]))
    h100, a100 = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    t = sc.monotonic_ns(1234.5)
    nvml.freeze(t)
    ids = [FI_TOTAL_ENERGY_CONSUMPTION, (FI_POWER_AVERAGE, 0), FI_POWER_INSTANT, FI_ENERGY,
           FI_POWER_CURRENT_LIMIT, 9999, 150, (FI_POWER_INSTANT, 1)]
    values = pynvml.nvmlDeviceGetFieldValues(h100, ids)
    ok = pynvml.NVML_SUCCESS
    assert [v.nvmlReturn for v in values] == [ok] * 5 + [NVML_ERROR_NOT_SUPPORTED] * 3
    assert [v.valueType for v in values[:5]] == [3, 1, 1, 3, 1]
    assert values[0].value.ullVal == values[3].value.ullVal == sc.counter_mj(0, t)
    assert values[1].value.uiVal == sc.average_mw(0, t)
    assert values[2].value.uiVal == sc.instant_mw(0, t) == 500_000
    assert values[4].value.uiVal == 700_000
    assert {v.timestamp for v in values} == {(t + sc.realtime_offset_ns) // 1000}
    assert {v.latencyUsec for v in values} == {0}

    # GA100: no 1 s average field ("Ampere (except GA100) or newer").
    values = pynvml.nvmlDeviceGetFieldValues(a100, [FI_POWER_AVERAGE, FI_POWER_INSTANT])
    assert [v.nvmlReturn for v in values] == [NVML_ERROR_NOT_SUPPORTED, ok]
    assert pynvml.nvmlDeviceGetFieldValues(a100, []) is not None

    # Real clock: the timestamp is CLOCK_REALTIME at the call.
    nvml.thaw()
    before = time.time_ns() // 1000
    values = pynvml.nvmlDeviceGetFieldValues(h100, [FI_POWER_INSTANT])
    after = time.time_ns() // 1000
    assert before <= values[0].timestamp <= after


def test_instant_power_is_a_boxcar_over_the_window_ending_at_the_last_publish(nvml):
    # idle 60 W; 100 W on [0, 80); 300 W on [80, 200); an unseen 500 W burst on [310, 370).
    gpu = Gpu(segments=[Segment(0, 80, 100), Segment(80, 200, 300), Segment(310, 370, 500)])
    sc = nvml.start(Scenario(gpus=[gpu]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)

    def instant_at(ms: float) -> int:
        nvml.freeze(sc.monotonic_ns(ms))
        value = pynvml.nvmlDeviceGetFieldValues(h, [FI_POWER_INSTANT])[0].value.uiVal
        assert value == sc.instant_mw(0, sc.monotonic_ns(ms))
        return value

    assert instant_at(99.999) == 60_000             # publish 0: window [-25, 0] is idle
    assert instant_at(100) == 260_000               # publish 100: (5 ms x 100 + 20 ms x 300) / 25
    assert instant_at(199.999) == 260_000
    assert instant_at(250) == 300_000
    assert instant_at(350) == 60_000                # window [275, 300]: still idle
    assert instant_at(450) == 60_000                # window [375, 400]: the burst fell between
    # The energy counter does see the burst: 60 ms x 500 W + 40 ms x 60 W between updates.
    counter = {}
    for ms in (300, 400):
        nvml.freeze(sc.monotonic_ns(ms))
        counter[ms] = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert counter[400] - counter[300] == 32_400
    assert sc.true_energy_j(0, sc.monotonic_ns(300), sc.monotonic_ns(400)) == pytest.approx(32.4)

    # Real clock: 10 ms publishes, 2.5 ms windows, power stepping up 2 ms after time 0.
    nvml.thaw()
    nvml.shutdown_all()
    real = Scenario(gpus=[Gpu(instant_period_ms=10, instant_window_ms=2.5,
                              segments=[Segment(2, 5000, 250)])])
    nvml.start(real)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for _ in range(20):
        before = time.monotonic_ns()
        value = pynvml.nvmlDeviceGetFieldValues(h, [FI_POWER_INSTANT])[0].value.uiVal
        after = time.monotonic_ns()
        assert value in real.possible_values("instant_mw", 0, before, after)
        time.sleep(0.003)


def test_average_power_lags_and_get_power_usage_follows_the_architecture(nvml):
    step = [Segment(0, 10_000, 460)]
    sc = nvml.start(Scenario(gpus=[Gpu(segments=step), Gpu.a100(segments=step),
                                   Gpu.v100(segments=step)]))
    h100, a100, v100 = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(3))

    nvml.freeze(sc.monotonic_ns(500))
    avg = pynvml.nvmlDeviceGetFieldValues(h100, [FI_POWER_AVERAGE])[0].value.uiVal
    assert avg == 260_000                           # (500 ms x 60 W + 500 ms x 460 W) / 1 s
    assert pynvml.nvmlDeviceGetPowerUsage(h100) == avg
    assert pynvml.nvmlDeviceGetFieldValues(h100, [FI_POWER_INSTANT])[0].value.uiVal == 460_000
    assert pynvml.nvmlDeviceGetPowerUsage(a100) == 460_000   # GA100: instantaneous
    assert pynvml.nvmlDeviceGetPowerUsage(v100) == 460_000   # Volta: instantaneous

    nvml.freeze(sc.monotonic_ns(1000))
    assert pynvml.nvmlDeviceGetPowerUsage(h100) == 460_000
    nvml.freeze(sc.monotonic_ns(10_050))            # power dropped at 10 s; last publish at 10 s
    assert pynvml.nvmlDeviceGetPowerUsage(h100) == 460_000
    assert pynvml.nvmlDeviceGetPowerUsage(a100) == 460_000
    nvml.freeze(sc.monotonic_ns(10_100))            # the instant sees the drop, the average lags
    assert pynvml.nvmlDeviceGetPowerUsage(a100) == 50_000
    assert pynvml.nvmlDeviceGetPowerUsage(h100) == 420_000   # 900 ms x 460 W + 100 ms x 60 W
    nvml.freeze(sc.monotonic_ns(10_500))
    assert pynvml.nvmlDeviceGetPowerUsage(h100) == 260_000
    for i, h in enumerate((h100, a100, v100)):
        assert pynvml.nvmlDeviceGetPowerUsage(h) == sc.power_usage_mw(i, sc.monotonic_ns(10_500))


# ---------------------------------------------------------------------------- sample buffer

def test_samples_protocol(nvml):
    gpu = Gpu(samples_depth=10, instant_period_ms=50, instant_window_ms=12.5, instant_phase_ms=5,
              segments=[Segment(100, 300, 200), Segment(400, 450, 100.5)])
    sc = nvml.start(Scenario(gpus=[gpu, Gpu(samples_depth=0)]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    t = sc.monotonic_ns(480)
    nvml.freeze(t)

    raw = nvml.raw_handle(0)
    get_samples = nvml.fn("nvmlDeviceGetSamples", c_void_p, c_int, c_ulonglong, POINTER(c_int),
                          POINTER(c_uint), c_void_p)
    vtype, count = c_int(-1), c_uint(0)
    assert get_samples(raw, 0, 0, byref(vtype), byref(count), None) == NVML_SUCCESS
    assert (vtype.value, count.value) == (pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, 10)

    value_type, samples = pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_TOTAL_POWER_SAMPLES, 0)
    assert value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    got = [(s.timeStamp, s.sampleValue.uiVal) for s in samples]
    assert got == sc.samples(0, t)
    newest = sc.last_publish_ns(0, t)
    assert got[-1][0] == sc.sample_timestamp_us(0, newest)
    assert got[-1][0] == (newest + sc.realtime_offset_ns) // 1000
    assert [ts for ts, _ in got] == sorted({ts for ts, _ in got})
    # Publish at 455 ms, window [442.5, 455]: 7.5 ms x 100.5 W + 5 ms x 60 W over 12.5 ms.
    assert got[-1][1] == sc.instant_mw(0, t) == 84_300

    last_seen = max(ts for ts, _ in got)
    with pytest.raises(nvml_error(NVML_ERROR_NOT_FOUND)):
        pynvml.nvmlDeviceGetSamples(h, 0, last_seen)
    nvml.freeze(t + 25 * MS - 1)                    # the next publish is at 505 ms
    with pytest.raises(nvml_error(NVML_ERROR_NOT_FOUND)):
        pynvml.nvmlDeviceGetSamples(h, 0, last_seen)
    t += 25 * MS
    nvml.freeze(t)
    _, fresh = pynvml.nvmlDeviceGetSamples(h, 0, last_seen)
    assert [(s.timeStamp, s.sampleValue.uiVal) for s in fresh] == sc.samples(0, t, last_seen)
    assert len(fresh) == 1 and fresh[0].sampleValue.uiVal == 60_000

    # A buffer smaller than what is available gets the oldest samples.
    buf = (pynvml.c_nvmlSample_t * 3)()
    count = c_uint(3)
    assert get_samples(raw, 0, 0, byref(vtype), byref(count), buf) == NVML_SUCCESS
    assert count.value == 3
    assert [(s.timeStamp, s.sampleValue.uiVal) for s in buf] == sc.samples(0, t)[:3]
    count = c_uint(0)
    assert get_samples(raw, 0, 0, byref(vtype), byref(count), buf) == NVML_ERROR_INVALID_ARGUMENT
    assert get_samples(raw, 0, 0, byref(vtype), None, None) == NVML_ERROR_INVALID_ARGUMENT

    with pytest.raises(nvml_error(NVML_ERROR_NOT_SUPPORTED)):
        pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    with pytest.raises(nvml_error(NVML_ERROR_NOT_FOUND)):
        pynvml.nvmlDeviceGetSamples(pynvml.nvmlDeviceGetHandleByIndex(1), 0, 0)


@pytest.mark.parametrize("clock", ["realtime", "boottime"])
def test_sample_timestamps_in_real_time(nvml, clock):
    sc = nvml.start(Scenario(gpus=[Gpu(sample_clock=clock, instant_period_ms=20,
                                       samples_depth=5, segments=[Segment(0, 9000, 123)])]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock_id = time.CLOCK_REALTIME if clock == "realtime" else time.CLOCK_BOOTTIME
    before = time.monotonic_ns()
    clock_before = time.clock_gettime_ns(clock_id) // 1000
    _, samples = pynvml.nvmlDeviceGetSamples(h, 0, 0)
    clock_after = time.clock_gettime_ns(clock_id) // 1000
    after = time.monotonic_ns()
    newest = samples[-1].timeStamp
    candidates = {sc.samples(0, t)[-1][0] for t in (before, after)}
    candidates |= {sc.sample_timestamp_us(0, sc.last_publish_ns(0, after) - k * 20 * MS)
                   for k in range(0, 1 + (after - before) // (20 * MS) + 1)}
    assert newest in candidates
    # A sample is stamped at its publish time: at most one period before the call.
    assert clock_before - 20_000 - 1000 <= newest <= clock_after + 1000


# ---------------------------------------------------------------------------- lost GPU

def test_gpu_is_lost_after_the_injected_time_on_that_gpu_only(nvml):
    sc = nvml.start(Scenario(gpus=[Gpu(), Gpu(lost_at_ms=500,
                                              processes=[Process(pid=7, used_memory_mib=10)])]))
    nvml.freeze(sc.monotonic_ns(499.999))
    h0, h1 = (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    assert pynvml.nvmlDeviceGetPowerUsage(h1) == 60_000

    nvml.freeze(sc.monotonic_ns(500))
    lost = nvml_error(NVML_ERROR_GPU_IS_LOST)
    calls = [
        lambda h: pynvml.nvmlDeviceGetPowerUsage(h),
        lambda h: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        lambda h: pynvml.nvmlDeviceGetFieldValues(h, [FI_POWER_INSTANT]),
        lambda h: pynvml.nvmlDeviceGetSamples(h, 0, 0),
        lambda h: pynvml.nvmlDeviceGetName(h),
        lambda h: pynvml.nvmlDeviceGetUUID(h),
        lambda h: pynvml.nvmlDeviceGetIndex(h),
        lambda h: pynvml.nvmlDeviceGetArchitecture(h),
        lambda h: pynvml.nvmlDeviceGetUtilizationRates(h),
        lambda h: pynvml.nvmlDeviceGetMemoryInfo(h),
        lambda h: pynvml.nvmlDeviceGetComputeRunningProcesses(h),
        lambda h: pynvml.nvmlDeviceGetPowerManagementLimit(h),
        lambda h: pynvml.nvmlDeviceGetCudaComputeCapability(h),
    ]
    for call in calls:
        with pytest.raises(lost):
            call(h1)
        call(h0)
    with pytest.raises(lost):
        pynvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(lost):
        pynvml.nvmlDeviceGetHandleByUUID(sc.gpus[1].uuid)
    assert pynvml.nvmlDeviceGetCount() == 2
    pynvml.nvmlDeviceGetHandleByIndex(0)
    assert sc.is_lost(1, sc.monotonic_ns(500)) and not sc.is_lost(0, sc.monotonic_ns(500))


# ---------------------------------------------------------------------------- processes, memory

def test_running_processes_protocol(nvml):
    gpu = Gpu(memory_reserved_mib=500, processes=[
        Process(pid=4242, used_memory_mib=1024),
        Process(pid=5151, used_memory_mib=2048, start_ms=100, end_ms=200),
    ])
    sc = nvml.start(Scenario(gpus=[gpu, Gpu()]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    nvml.freeze(sc.monotonic_ns(150))

    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [
        (4242, 1024 << 20, 0xFFFFFFFF, 0xFFFFFFFF), (5151, 2048 << 20, 0xFFFFFFFF, 0xFFFFFFFF)]
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(1)) == []

    raw = nvml.raw_handle(0)
    v3 = nvml.fn("nvmlDeviceGetComputeRunningProcesses_v3", c_void_p, POINTER(c_uint), c_void_p)
    count = c_uint(0)
    assert v3(raw, byref(count), None) == NVML_ERROR_INSUFFICIENT_SIZE and count.value == 2
    count = c_uint(1)
    buf = (pynvml.c_nvmlProcessInfo_v3_t * 4)()
    assert ctypes.sizeof(pynvml.c_nvmlProcessInfo_v3_t) == 24
    assert v3(raw, byref(count), buf) == NVML_ERROR_INSUFFICIENT_SIZE and count.value == 2
    count = c_uint(4)
    assert v3(raw, byref(count), buf) == NVML_SUCCESS and count.value == 2
    assert [buf[i].pid for i in range(2)] == [4242, 5151]
    count = c_uint(0)
    assert v3(nvml.raw_handle(1), byref(count), None) == NVML_SUCCESS and count.value == 0
    assert v3(raw, None, None) == NVML_ERROR_INVALID_ARGUMENT

    # The unversioned symbol writes the legacy 16-byte records.
    v1 = nvml.fn("nvmlDeviceGetComputeRunningProcesses", c_void_p, POINTER(c_uint), c_void_p)
    legacy = (ProcessInfoV1 * 2)()
    count = c_uint(2)
    assert v1(raw, byref(count), legacy) == NVML_SUCCESS
    assert [(p.pid, p.usedGpuMemory) for p in legacy] == [(4242, 1024 << 20), (5151, 2048 << 20)]

    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert mem.used == (500 + 1024 + 2048) << 20 and mem.free == mem.total - mem.used
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.reserved, mem2.used) == (81559 << 20, 500 << 20, 3072 << 20)
    assert mem2.free == mem2.total - mem2.reserved - mem2.used
    assert mem2.used == sc.memory_used_bytes(0, sc.monotonic_ns(150))
    with pytest.raises(nvml_error(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=0x01000028)

    nvml.freeze(sc.monotonic_ns(200))               # the second process has exited
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)] == [4242]
    assert pynvml.nvmlDeviceGetMemoryInfo(h).used == (500 + 1024) << 20


def test_utilization_follows_true_power(nvml):
    gpu = Gpu(idle_w=100, power_limit_w=500,
              segments=[Segment(0, 100, 300), Segment(100, 200, 900), Segment(200, 300, 101)])
    sc = nvml.start(Scenario(gpus=[gpu]))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for ms, expected in ((50, (50, 25)), (150, (100, 50)), (250, (0, 0)), (400, (0, 0))):
        nvml.freeze(sc.monotonic_ns(ms))
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        assert (util.gpu, util.memory) == expected == sc.utilization(0, sc.monotonic_ns(ms))


# ---------------------------------------------------------------------------- other processes

SUBPROCESS_PROBE = textwrap.dedent("""
    import json, time, pynvml
    out = {}
    pynvml.nvmlInit()
    out["maps"] = open("/proc/self/maps").read().count(__import__("sys").argv[1])
    out["count"] = pynvml.nvmlDeviceGetCount()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    out["name"] = pynvml.nvmlDeviceGetName(h)
    before = time.monotonic_ns()
    out["energy"] = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    out["power"] = pynvml.nvmlDeviceGetPowerUsage(h)
    after = time.monotonic_ns()
    out["window"] = [before, after]
    try:
        pynvml.nvmlDeviceGetHandleByIndex(1)
    except pynvml.NVMLError as err:
        out["lost"] = err.value
    pynvml.nvmlShutdown()
    print(json.dumps(out))
""")


def test_pynvml_finds_the_fake_through_ld_library_path(fake_lib_path, tmp_path):
    sc = Scenario(gpus=[Gpu(name="NVIDIA H200", counter_period_ms=10, counter_offset_mj=77,
                            segments=[Segment(0, 60_000, 250)]),
                        Gpu(lost_at_ms=0)])
    scenario = sc.write(tmp_path / "scenario.txt")
    env = dict(os.environ, LD_LIBRARY_PATH=str(fake_lib_path.parent))
    env[SCENARIO_ENV] = str(scenario)
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS_PROBE, str(fake_lib_path)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["maps"] > 0                           # the library mapped is ours
    assert out["count"] == 2 and out["name"] == "NVIDIA H200"
    before, after = out["window"]
    assert out["energy"] in sc.possible_values("counter_mj", 0, before, after)
    assert out["power"] in sc.possible_values("power_usage_mw", 0, before, after)
    assert out["lost"] == NVML_ERROR_GPU_IS_LOST


def test_concurrent_readers(nvml):
    sc = nvml.start(Scenario(gpus=[Gpu(counter_period_ms=1, segments=[Segment(0, 60_000, 333)]),
                                   Gpu()]))
    errors: list[str] = []

    def reader(index: int) -> None:
        h = nvml.raw_handle(index)
        get_fields = nvml.fn("nvmlDeviceGetFieldValues", c_void_p, c_int, c_void_p)
        get_power = nvml.fn("nvmlDeviceGetPowerUsage", c_void_p, POINTER(c_uint))
        values = (pynvml.c_nvmlFieldValue_t * 3)()
        power = c_uint()
        last = -1
        for _ in range(400):
            for v, fid in zip(values, (FI_TOTAL_ENERGY_CONSUMPTION, FI_POWER_INSTANT, FI_ENERGY),
                              strict=True):
                v.fieldId = fid
            before = time.monotonic_ns()
            rc = get_fields(h, 3, values)
            after = time.monotonic_ns()
            if rc != 0 or get_power(h, byref(power)) != 0:
                errors.append(f"rc={rc}")
                return
            energy = values[0].value.ullVal
            if energy < last or energy not in sc.possible_values("counter_mj", index, before,
                                                                 after):
                errors.append(f"energy {energy} after {last}")
                return
            last = energy

    def churn() -> None:
        for _ in range(200):
            if nvml.fn("nvmlInit_v2")() != 0 or nvml.fn("nvmlShutdown")() != 0:
                errors.append("init/shutdown failed")
                return

    threads = [threading.Thread(target=reader, args=(i % 2,)) for i in range(4)]
    threads.append(threading.Thread(target=churn))
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    assert pynvml.nvmlDeviceGetCount() == 2


# ---------------------------------------------------------------------------- model vs library

def _random_scenario(rng: random.Random) -> Scenario:
    gpus = []
    for _ in range(2):
        segments, t = [], rng.randrange(0, 50_000) / 1000
        for _ in range(rng.randrange(0, 8)):
            start = t + rng.randrange(0, 200_000) / 1000
            end = start + rng.randrange(1, 300_000) / 1000
            segments.append(Segment(start, end, rng.randrange(0, 1_000_000) / 1000))
            t = end
        idle = rng.randrange(10_000, 100_000) / 1000
        gpus.append(Gpu(
            arch=rng.choice([5, 7, 8, 9, 10]), ga100=rng.random() < 0.3, idle_w=idle,
            power_limit_w=idle + rng.randrange(1, 900),
            counter_period_ms=rng.randrange(1_000, 150_000) / 1000,
            counter_phase_ms=rng.randrange(-100_000, 100_000) / 1000,
            counter_offset_mj=rng.randrange(0, 1 << 40),
            instant_period_ms=rng.randrange(1_000, 150_000) / 1000,
            instant_window_ms=rng.randrange(1_000, 150_000) / 1000,
            instant_phase_ms=rng.randrange(0, 100_000) / 1000,
            average_window_ms=rng.randrange(1_000, 1_500_000) / 1000,
            samples_depth=rng.randrange(1, 12),
            resets_ms=sorted(rng.randrange(0, 2_000_000) / 1000
                             for _ in range(rng.randrange(0, 3))),
            segments=segments,
        ))
    return Scenario(gpus=gpus)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_library_matches_the_model_at_random_times(nvml, seed):
    rng = random.Random(seed)
    sc = nvml.start(_random_scenario(rng))
    raw = [nvml.raw_handle(i) for i in range(2)]
    get_fields = nvml.fn("nvmlDeviceGetFieldValues", c_void_p, c_int, c_void_p)
    get_power = nvml.fn("nvmlDeviceGetPowerUsage", c_void_p, POINTER(c_uint))
    get_util = nvml.fn("nvmlDeviceGetUtilizationRates", c_void_p, c_void_p)
    get_samples = nvml.fn("nvmlDeviceGetSamples", c_void_p, c_int, c_ulonglong, POINTER(c_int),
                          POINTER(c_uint), c_void_p)
    fields = (pynvml.c_nvmlFieldValue_t * 3)()
    power, util = c_uint(), pynvml.c_nvmlUtilization_t()
    samples = (pynvml.c_nvmlSample_t * 16)()
    for _ in range(150):
        t = sc.monotonic_ns(0) + rng.randrange(-100 * MS, 2500 * MS)
        nvml.freeze(t)
        for i, h in enumerate(raw):
            gpu = sc.gpus[i]
            for v, fid in zip(fields, (FI_TOTAL_ENERGY_CONSUMPTION, FI_POWER_INSTANT,
                                       FI_POWER_AVERAGE), strict=True):
                v.fieldId, v.scopeId = fid, 0
            assert get_fields(h, 3, fields) == NVML_SUCCESS
            if gpu.has_energy:
                assert fields[0].value.ullVal == sc.counter_mj(i, t)
            else:
                assert fields[0].nvmlReturn == NVML_ERROR_NOT_SUPPORTED
            assert fields[1].value.uiVal == sc.instant_mw(i, t)
            if gpu.has_average:
                assert fields[2].value.uiVal == sc.average_mw(i, t)
            else:
                assert fields[2].nvmlReturn == NVML_ERROR_NOT_SUPPORTED
            assert get_power(h, byref(power)) == NVML_SUCCESS
            assert power.value == sc.power_usage_mw(i, t)
            assert get_util(h, byref(util)) == NVML_SUCCESS
            assert (util.gpu, util.memory) == sc.utilization(i, t)

            expected = sc.samples(i, t)
            last_seen = rng.choice([0, *(ts for ts, _ in expected)])
            expected = sc.samples(i, t, last_seen)
            vtype, count = c_int(), c_uint(16)
            rc = get_samples(h, 0, last_seen, byref(vtype), byref(count), samples)
            if not expected:
                assert rc == NVML_ERROR_NOT_FOUND
                continue
            assert rc == NVML_SUCCESS
            got = [(samples[k].timeStamp, samples[k].sampleValue.uiVal)
                   for k in range(count.value)]
            assert got == expected


# ---------------------------------------------------------------------------- model alone

def test_true_energy_is_the_exact_integral():
    sc = Scenario(epoch_ns=10**12, gpus=[Gpu(idle_w=50, segments=[
        Segment(100, 200, 250), Segment(200, 300.5, 0), Segment(1000, 1000.000001, 1000)])])
    at = sc.monotonic_ns
    assert sc.true_power_w(0, at(-5)) == 50
    assert sc.true_power_w(0, at(100)) == 250 and sc.true_power_w(0, at(199.999999)) == 250
    assert sc.true_power_w(0, at(200)) == 0 and sc.true_power_w(0, at(300.5)) == 50
    assert sc.true_energy_j(0, at(0), at(100)) == pytest.approx(5.0)
    assert sc.true_energy_mw_ns(0, at(150), at(250)) == 250_000 * 50 * MS
    assert sc.true_energy_mw_ns(0, at(-100), at(1001)) == (
        50_000 * (1101 * MS - 100 * MS - 100_500_000 - 1) + 250_000 * 100 * MS + 1_000_000)
    assert sc.true_energy_j(0, at(300), at(100)) == -sc.true_energy_j(0, at(100), at(300))
    # The counter floors an exact integral: 50 W for 100 ms is 5000 mJ, not 4999.
    assert sc.counter_mj(0, at(100)) == 5000


def test_scenario_validation_and_exact_formatting(tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        Scenario(gpus=[Gpu(segments=[Segment(0, 10, 1), Segment(9, 20, 1)])]).validate()
    with pytest.raises(ValueError, match="more than 6 decimals"):
        Scenario(gpus=[Gpu(lost_at_ms=0.0000001)]).validate()
    with pytest.raises(ValueError, match="more than 3 decimals"):
        Scenario(gpus=[Gpu(segments=[Segment(0, 1, 0.0001)])]).validate()
    with pytest.raises(ValueError, match="idle_w < power_limit_w"):
        Scenario(gpus=[Gpu(idle_w=700)]).validate()
    text = Scenario(epoch_ns=5, gpus=[Gpu(uuid="GPU-x", segments=[
        Segment(0.000001, 0.1, 0.001)])]).write(tmp_path / "s.txt").read_text()
    assert "segment gpu=0 start_ms=0.000001 end_ms=0.1 watts=0.001\n" in text
    assert 'name="NVIDIA H100 80GB HBM3"' in text and "epoch_ns 5\n" in text
