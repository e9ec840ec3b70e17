"""Energy over intervals from recorded readings (no real time): accuracy, quality, coverage.

Readings are generated from the fake NVML scenario's exact model at chosen poll times, the way
the NVML collector would see them, and fed to the timeline; results are compared with the
scenario's exact integral.
"""

from __future__ import annotations

import random

import pytest
from fakes.nvml_scenario import Gpu, Scenario, Segment

from wattspan.agent.timeline import DeviceTimeline, Timeline
from wattspan.collectors.base import DeviceInfo, Quality, Reading
from wattspan.collectors.nvml import instant_power_period_ns
from wattspan.collectors.updates import DatedReadings

MS = 1_000_000
EPOCH = 10_000 * MS  # scenario time 0, as a CLOCK_MONOTONIC value
# The fake's counter starts at scenario time 0 (the driver loaded then) and first steps at
# 100 ms, so measured intervals below start after that.


def gpu_info(device_id="gpu:GPU-0", quality=Quality.MEASURED, idle_w=None):
    return DeviceInfo(device_id, "gpu", "fake", "test", quality, idle_w=idle_w)


def two_gpu_scenario() -> Scenario:
    """Idle 60 W with segments of 150-400 W, as in the acceptance criteria, with idle gaps
    and phases that differ between the boards."""
    return Scenario(epoch_ns=EPOCH, gpus=[
        Gpu.h100(uuid="GPU-a", idle_w=60, segments=[
            Segment(200, 1400, 150), Segment(1400, 2300, 400), Segment(2600, 3700, 275),
            Segment(3700, 4100, 390), Segment(4400, 5600, 180)]),
        Gpu.h100(uuid="GPU-b", idle_w=60, counter_phase_ms=37, instant_phase_ms=61, segments=[
            Segment(0, 800, 320), Segment(1100, 2900, 220), Segment(2900, 3300, 400),
            Segment(3300, 6000, 160)]),
    ])


def bursty_scenario() -> Scenario:
    """Bursts and gaps of 100 ms: as short as one counter step and four times the sensor's
    25 ms window, below what the board resolves."""
    return Scenario(epoch_ns=EPOCH, gpus=[
        Gpu.h100(uuid="GPU-c", idle_w=60, counter_phase_ms=37, instant_phase_ms=61, segments=[
            Segment(0, 800, 320), Segment(900, 2900, 220), Segment(2950, 3050, 400),
            Segment(3300, 6000, 160)]),
    ])


def feed(timeline: DeviceTimeline, sc: Scenario, gpu: int, start_ns: int, end_ns: int,
         period_ns: int = 5 * MS, seed: int = 1, counter=True, power=True) -> None:
    """Readings as the NVML collector passes them on from a dithered poll of the board."""
    rng = random.Random(seed)
    dated = DatedReadings(timeline.info.device_id, instant_power_period_ns(sc.gpus[gpu].arch))
    grid = start_ns
    while grid <= end_ns:
        ts = grid + rng.randrange(period_ns)
        for reading in dated.read(ts, sc.counter_mj(gpu, ts) / 1000.0 if counter else None,
                                  sc.instant_mw(gpu, ts) / 1000.0 if power else None):
            timeline.add(reading)
        grid += period_ns


def rel_error(measured, true):
    return abs(measured - true) / true


@pytest.mark.parametrize("gpu", [0, 1])
def test_whole_run_within_half_a_percent(native_impl, gpu):
    sc = two_gpu_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, gpu, EPOCH - 300 * MS, EPOCH + 5_600 * MS, seed=gpu)
    a, b = EPOCH + 250 * MS, EPOCH + 5_250 * MS
    figure = tl.energy_between(a, b)
    assert figure.quality is Quality.MEASURED
    assert figure.coverage == 1.0
    assert rel_error(figure.energy_j, sc.true_energy_j(gpu, a, b)) < 0.005


@pytest.mark.parametrize("step_ms, tolerance", [(1000, 0.01), (1500, 0.01), (200, 0.05)])
@pytest.mark.parametrize("offset_ms", [213, 242, 281, 298])
def test_steps_within_tolerance(native_impl, step_ms, tolerance, offset_ms):
    """Steps at the default 5 ms sampling period, at several offsets to the boards' phases."""
    sc = two_gpu_scenario()
    for gpu in (0, 1):
        tl = DeviceTimeline(gpu_info())
        feed(tl, sc, gpu, EPOCH - 300 * MS, EPOCH + 5_900 * MS, seed=offset_ms + gpu)
        start = EPOCH + offset_ms * MS
        bounds = [start + k * step_ms * MS for k in range(int(5_000 / step_ms) + 1)]
        figures = tl.energies(bounds)
        for a, b, figure in zip(bounds, bounds[1:], figures, strict=False):
            true = sc.true_energy_j(gpu, a, b)
            assert rel_error(figure.energy_j, true) < tolerance, (gpu, a - EPOCH, figure, true)
            assert figure.quality is Quality.MEASURED


def test_bursts_shorter_than_a_counter_step_still_add_up(native_impl):
    """Where a burst is shorter than the board resolves, a 200 ms step can be off by more,
    but the energy is never lost: it lands in a neighbouring step."""
    sc = bursty_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH - 300 * MS, EPOCH + 5_900 * MS)
    bounds = [EPOCH + 213 * MS + k * 200 * MS for k in range(26)]
    figures = tl.energies(bounds)
    errors = [rel_error(f.energy_j, sc.true_energy_j(0, a, b))
              for a, b, f in zip(bounds, bounds[1:], figures, strict=False)]
    assert sum(errors) / len(errors) < 0.01
    assert max(errors) < 0.15
    total = sum(f.energy_j for f in figures)
    assert rel_error(total, sc.true_energy_j(0, bounds[0], bounds[-1])) < 0.002


def test_steps_add_up_to_the_whole(native_impl):
    sc = two_gpu_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH - 300 * MS, EPOCH + 5_600 * MS)
    bounds = [EPOCH + 200 * MS + k * 137 * MS for k in range(30)]
    parts = sum(f.energy_j for f in tl.energies(bounds))
    whole = tl.energy_between(bounds[0], bounds[-1]).energy_j
    assert parts == pytest.approx(whole, rel=1e-12)


def test_power_only_device_is_sampled(native_impl):
    sc = Scenario(epoch_ns=EPOCH, gpus=[Gpu.v100(uuid="GPU-v", segments=[
        Segment(0, 2000, 250), Segment(2000, 4000, 120)])])
    tl = DeviceTimeline(gpu_info(quality=Quality.SAMPLED))
    feed(tl, sc, 0, EPOCH - 100 * MS, EPOCH + 4_200 * MS, counter=False)
    a, b = EPOCH + 500 * MS, EPOCH + 3_500 * MS
    figure = tl.energy_between(a, b)
    assert figure.quality is Quality.SAMPLED
    assert rel_error(figure.energy_j, sc.true_energy_j(0, a, b)) < 0.01


def test_the_live_edge_is_partial_until_the_counter_steps_past_it(native_impl):
    sc = two_gpu_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH, EPOCH + 1_030 * MS)
    edge = tl.energy_between(EPOCH + 200 * MS, EPOCH + 1_030 * MS)
    assert edge.quality is Quality.PARTIAL and edge.energy_j is not None
    assert not tl.settled(EPOCH + 1_030 * MS)
    feed(tl, sc, 0, EPOCH + 1_035 * MS, EPOCH + 1_200 * MS)
    assert tl.settled(EPOCH + 1_030 * MS)
    settled = tl.energy_between(EPOCH + 200 * MS, EPOCH + 1_030 * MS)
    assert settled.quality is Quality.MEASURED


def test_interval_beyond_the_data_is_partial_with_the_covered_part(native_impl):
    sc = two_gpu_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH, EPOCH + 2_000 * MS)
    figure = tl.energy_between(EPOCH + 1_000 * MS, EPOCH + 4_000 * MS)
    assert figure.quality is Quality.PARTIAL
    assert 0.3 < figure.coverage < 0.4
    covered = sc.true_energy_j(0, EPOCH + 1_000 * MS, EPOCH + 2_000 * MS)
    assert figure.energy_j == pytest.approx(covered, rel=0.02)


def test_unknown_is_none_never_zero(native_impl):
    tl = DeviceTimeline(gpu_info())
    figure = tl.energy_between(EPOCH, EPOCH + MS)
    assert figure.energy_j is None
    assert figure.quality is Quality.PARTIAL
    assert figure.coverage == 0.0
    # Data that exists only after the interval does not make it known either.
    sc = two_gpu_scenario()
    feed(tl, sc, 0, EPOCH + 2_000 * MS, EPOCH + 3_000 * MS)
    late = tl.energy_between(EPOCH, EPOCH + 1_000 * MS)
    assert late.energy_j is None and late.quality is Quality.PARTIAL


def test_error_readings_make_the_interval_partial(native_impl):
    sc = two_gpu_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH, EPOCH + 1_000 * MS)
    tl.add(Reading("gpu:GPU-0", EPOCH + 1_010 * MS, error="GPU is lost"))
    tl.add(Reading("gpu:GPU-0", EPOCH + 1_020 * MS, error="GPU is lost"))
    before = tl.energy_between(EPOCH + 150 * MS, EPOCH + 800 * MS)
    across = tl.energy_between(EPOCH + 150 * MS, EPOCH + 1_500 * MS)
    assert before.quality is Quality.MEASURED
    assert across.quality is Quality.PARTIAL
    assert across.energy_j > before.energy_j
    assert tl.last_error == (EPOCH + 1_020 * MS, "GPU is lost")


def test_dynamic_energy_above_a_configured_baseline(native_impl):
    sc = Scenario(epoch_ns=EPOCH, gpus=[Gpu.h100(uuid="GPU-d", idle_w=60, segments=[
        Segment(1000, 2000, 300)])])
    tl = DeviceTimeline(gpu_info(idle_w=60.0))
    feed(tl, sc, 0, EPOCH - 200 * MS, EPOCH + 3_300 * MS)
    figure = tl.energy_between(EPOCH + 500 * MS, EPOCH + 2_500 * MS, tl.baseline_w())
    assert figure.idle_w == 60.0
    assert figure.energy_j == pytest.approx(60 * 1.0 + 300 * 1.0, rel=0.01)
    assert figure.dynamic_energy_j == pytest.approx(240.0, rel=0.02)
    assert figure.peak_power_w == pytest.approx(300.0, rel=0.05)
    assert figure.avg_power_w == pytest.approx(180.0, rel=0.01)


def test_learned_baseline_is_a_low_percentile(native_impl):
    sc = Scenario(epoch_ns=EPOCH, gpus=[Gpu.h100(uuid="GPU-d", idle_w=55, segments=[
        Segment(1000, 3000, 300)])])
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH - 200 * MS, EPOCH + 4_000 * MS)
    assert tl.baseline_w() == pytest.approx(55.0, rel=0.02)


def test_settled_needs_a_counter_step_after_the_time(native_impl):
    sc = two_gpu_scenario()
    tl = DeviceTimeline(gpu_info())
    feed(tl, sc, 0, EPOCH, EPOCH + 1_000 * MS)
    assert tl.settled(EPOCH + 800 * MS)
    assert not tl.settled(EPOCH + 999 * MS)


def test_counter_only_device_such_as_rapl(native_impl):
    tl = DeviceTimeline(DeviceInfo("cpu:0", "cpu", "pkg", "rapl", Quality.MEASURED))
    for k in range(11):  # 100 W, read every 100 ms
        tl.add(Reading("cpu:0", EPOCH + k * 100 * MS, energy_j=1_000.0 + 10.0 * k))
    figure = tl.energy_between(EPOCH + 250 * MS, EPOCH + 750 * MS)
    assert figure.energy_j == pytest.approx(50.0)
    assert figure.quality is Quality.MEASURED
    assert tl.settled(EPOCH + 1_000 * MS)


def test_timeline_routes_readings_by_device():
    timeline = Timeline(capacity=16)
    timeline.add_device(gpu_info("gpu:GPU-1"))
    timeline.add(Reading("gpu:GPU-1", 1, power_w=5.0))
    timeline.add(Reading("gpu:GPU-unknown", 1, power_w=5.0))
    assert len(timeline["gpu:GPU-1"]) == 1
    assert [t.info.device_id for t in timeline] == ["gpu:GPU-1"]
