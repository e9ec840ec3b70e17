"""``wattspan.measure`` in-process, against the fake GPUs in real time, and its edges."""

from __future__ import annotations

import time

import pytest
from fakes.nvml_scenario import Gpu, Scenario, Segment

import wattspan
from wattspan import Quality
from wattspan.collectors.base import DeviceInfo
from wattspan.measure import select_devices


def two_gpus() -> Scenario:
    return Scenario(gpus=[
        Gpu.h100(uuid="GPU-0", idle_w=60, segments=[
            Segment(0, 1300, 150), Segment(1300, 2600, 400), Segment(2600, 4000, 220),
            Segment(4000, 9000, 330)]),
        Gpu.h100(uuid="GPU-1", idle_w=60, counter_phase_ms=30, instant_phase_ms=55, segments=[
            Segment(0, 900, 380), Segment(900, 3100, 170), Segment(3100, 9000, 260)]),
    ])


@pytest.mark.slow
def test_steps_match_the_boards(native_impl, fake_gpus, monkeypatch):
    monkeypatch.setenv("WATTSPAN_COLLECTORS", "nvml")
    sc = fake_gpus(two_gpus())
    with wattspan.measure("train") as m:
        for seconds in (1.0, 1.1, 0.2, 0.2, 0.2, 0.2, 0.2):
            with m.step():
                time.sleep(seconds)
    result = m.result
    assert [s.index for s in result.steps] == list(range(7))
    for gpu, uuid in enumerate(("GPU-0", "GPU-1")):
        whole = result.devices[f"gpu:{uuid}"]
        assert whole.quality is Quality.MEASURED
        true = sc.true_energy_j(gpu, result.start_ns, result.end_ns)
        assert abs(whole.energy_j - true) / true < 0.005
        for step in result.steps:
            figure = step.devices[f"gpu:{uuid}"]
            true = sc.true_energy_j(gpu, step.start_ns, step.end_ns)
            tolerance = 0.01 if step.duration_s >= 1.0 else 0.05
            assert abs(figure.energy_j - true) / true < tolerance, (uuid, step.index, figure)
            assert figure.quality is Quality.MEASURED
    assert result.quality is Quality.MEASURED
    assert result.energy_j == pytest.approx(sum(d.energy_j for d in result.devices.values()))
    text = result.table()
    assert "gpu:GPU-0" in text and "steps" in text


def test_bare_steps_end_at_the_next_step_and_at_the_end(fake_gpus, monkeypatch):
    monkeypatch.setenv("WATTSPAN_COLLECTORS", "nvml")
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-s", segments=[Segment(0, 9000, 200)])]))
    with wattspan.measure("loop", interval_ms=5) as m:
        m.step("a")
        time.sleep(0.15)
        m.step("b")
        time.sleep(0.15)
    first, second = m.result.steps
    assert (first.name, second.name) == ("a", "b")
    assert first.end_ns <= second.start_ns <= second.end_ns <= m.result.end_ns
    assert first.energy_j > 0 and second.energy_j > 0


def test_measure_selects_devices(fake_gpus, monkeypatch):
    monkeypatch.setenv("WATTSPAN_COLLECTORS", "nvml,cpu_model")
    fake_gpus(Scenario(gpus=[Gpu.h100(uuid="GPU-x"), Gpu.h100(uuid="GPU-y")]))
    with wattspan.measure("one", devices=["GPU-y"]) as m:
        time.sleep(0.05)
    assert list(m.result.devices) == ["gpu:GPU-y"]


def test_step_outside_the_block_is_an_error():
    m = wattspan.measure("x")
    with pytest.raises(RuntimeError, match="outside"):
        m.step()


INFOS = [
    DeviceInfo("gpu:GPU-aaa", "gpu", "A", "nvml", Quality.MEASURED,
               details={"uuid": "GPU-aaa", "nvml_index": 0}),
    DeviceInfo("gpu:GPU-bbb", "gpu", "B", "nvml", Quality.MEASURED,
               details={"uuid": "GPU-bbb", "nvml_index": 1}),
    DeviceInfo("cpu:0", "cpu", "CPU", "model", Quality.ESTIMATED),
]


@pytest.mark.parametrize("wanted, visible, expected", [
    (None, "", ["gpu:GPU-aaa", "gpu:GPU-bbb", "cpu:0"]),
    (["gpu"], "", ["gpu:GPU-aaa", "gpu:GPU-bbb"]),
    (["cpu:0", "GPU-bbb"], "", ["cpu:0", "gpu:GPU-bbb"]),
    ([0], "1", ["gpu:GPU-bbb"]),            # CUDA device 0 is NVML index 1
    ([1], "GPU-bbb,GPU-aaa", ["gpu:GPU-aaa"]),
    ([0], "", ["gpu:GPU-aaa"]),
])
def test_select_devices(monkeypatch, wanted, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert [d.device_id for d in select_devices(INFOS, wanted)] == expected


def test_select_unknown_device_names_what_exists(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ValueError, match="found: gpu:GPU-aaa"):
        select_devices(INFOS, ["GPU-zzz"])
    with pytest.raises(ValueError, match="not in CUDA_VISIBLE_DEVICES"):
        select_devices(INFOS, [3])
