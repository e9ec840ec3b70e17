"""The NVML collector driven through real pynvml against the fake libnvidia-ml.so.1."""

from __future__ import annotations

import logging
import time

import pytest
from fakes.nvml_scenario import Gpu, Process, Scenario, Segment

from wattspan.collectors.base import Quality, Unavailable
from wattspan.collectors.nvml import NvmlCollector

MS = 1_000_000


@pytest.fixture
def collector():
    made = []

    def make(**kw):
        c = NvmlCollector(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_discovers_gpus_by_uuid(fake_gpus, collector):
    sc = fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-11111111-aaaa"),
                                  Gpu.a100(uuid="GPU-22222222-bbbb")]))
    devices = collector().discover()
    assert [d.device_id for d in devices] == ["gpu:GPU-11111111-aaaa", "gpu:GPU-22222222-bbbb"]
    h100, a100 = devices
    assert h100.name == "NVIDIA H100 80GB HBM3"
    assert h100.quality is Quality.MEASURED
    assert h100.details["architecture"] == "hopper"
    assert h100.details["energy_via"] == "field" and h100.details["power_via"] == "field"
    assert h100.details["power_limit_w"] == 700.0
    assert a100.details["architecture"] == "ampere"
    assert "energy counter" in h100.source
    assert sc.gpus[0].uuid in h100.device_id


def test_readings_match_the_board(fake_gpus, collector):
    sc = fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-r", segments=[Segment(0, 60_000, 333)])]))
    c = collector()
    c.discover()
    t_first = time.monotonic_ns()
    first = c.read()
    assert [r.energy_j for r in first if r.energy_j is not None] == [0.0]
    first_raw = sc.counter_mj(0, first[0].t_ns)
    time.sleep(0.25)
    t0 = time.monotonic_ns()
    readings = c.read()
    t1 = time.monotonic_ns()
    counter = [r for r in readings if r.energy_j is not None]
    # A counter step is passed on as the old value just before it and the new value at it,
    # dated between the previous read and this one.
    assert len(counter) == 2
    before, step = counter
    assert before.energy_j == 0.0 and before.t_ns == step.t_ns - 1
    assert t_first < step.t_ns <= t1
    raw_now = {v - first_raw for v in sc.possible_values("counter_mj", 0, t0, t1)}
    assert round(step.energy_j * 1000) in raw_now
    power = [r for r in readings if r.power_w is not None]
    possible_mw = sc.possible_values("instant_mw", 0, t_first, t1)
    assert power and all(round(r.power_w * 1000) in possible_mw for r in power)
    # Re-reading an unchanged board adds nothing.
    assert [r for r in c.read() if r.energy_j is not None or r.power_w is not None] == []


def test_utilization_and_memory_at_a_slower_cadence(fake_gpus, collector):
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-u", segments=[Segment(0, 60_000, 380)],
                                      processes=[Process(4242, 2048)])]))
    c = collector(slow_every=3)
    c.discover()
    readings = [r for _ in range(6) for r in c.read()]
    slow = [r for r in readings if r.utilization_pct is not None]
    assert len(slow) == 2
    assert slow[0].memory_used_bytes == 2048 * 1024 * 1024
    assert 0 < slow[0].utilization_pct <= 100


def test_counter_reset_on_driver_reload_keeps_energy_cumulative(fake_gpus, collector):
    sc = fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-z", counter_offset_mj=5_000_000,
                                           resets_ms=[300])]))
    c = collector()
    c.discover()
    values = []
    deadline = time.monotonic_ns() + 700 * MS
    while time.monotonic_ns() < deadline:
        values += [r.energy_j for r in c.read() if r.energy_j is not None]
        time.sleep(0.02)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert c._gpus[0].counter.resets == 1
    assert values[-1] < 60 * 0.8  # never the 5,000 J offset: the reset is not negative energy
    del sc


def test_lost_gpu_is_reported_once_and_the_others_keep_going(fake_gpus, collector, caplog):
    sc = fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-ok"),
                                  Gpu.h100(uuid="GPU-lost", lost_at_ms=150)]))
    c = collector(retry_lost_s=60)
    c.discover()
    caplog.set_level(logging.WARNING)
    time.sleep(0.2)
    batches = []
    for _ in range(5):
        batches.append(c.read())
        time.sleep(0.11)  # past the next counter step
    for batch in batches:
        ok = [r for r in batch if r.device_id == "gpu:GPU-ok"]
        lost = [r for r in batch if r.device_id == "gpu:GPU-lost"]
        assert all(r.error is None for r in ok)
        assert any(r.energy_j is not None for r in ok)
        assert len(lost) == 1 and lost[0].error
        assert lost[0].energy_j is None and lost[0].power_w is None
    warnings = [r for r in caplog.records if "GPU-lost" in r.getMessage()]
    assert len(warnings) == 1
    assert "is lost" in warnings[0].getMessage()
    del sc


def test_lost_gpu_is_looked_up_again_by_uuid(fake_gpus, collector):
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-lost", lost_at_ms=100)]))
    now = [0]
    c = collector(retry_lost_s=1.0, clock=lambda: time.monotonic_ns() + now[0])
    c.discover()
    time.sleep(0.15)
    assert c.read()[0].error
    now[0] = 2_000 * MS
    # Still lost in the fake, so the retry fails and is scheduled again.
    assert c.read()[0].error
    assert c._gpus[0].next_retry_ns > time.monotonic_ns() + now[0]


def test_no_library_is_one_clear_reason(no_nvml, collector):
    found = collector().discover()
    assert isinstance(found, Unavailable)
    assert "could not be loaded" in found.reason
    assert "\n" not in found.reason


def test_driver_not_loaded(fake_gpus, collector):
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-x")], init_error=9))
    found = collector().discover()
    assert isinstance(found, Unavailable)
    assert "driver is not loaded" in found.reason


def test_pre_volta_board_without_energy_counter_is_sampled(fake_gpus, collector):
    # arch 4 (Pascal): no energy counter; the fake still serves instant power.
    fake_gpus(Scenario(gpus=[Gpu.v100(uuid="GPU-p", arch=4, name="Tesla P100")]))
    found = collector().discover()
    if isinstance(found, Unavailable) or found[0].quality is Quality.MEASURED:
        pytest.skip("the fake reports an energy counter on Pascal")
    assert found[0].quality is Quality.SAMPLED
