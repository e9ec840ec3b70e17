"""Energy over intervals from recorded readings (no real time): accuracy, quality, coverage.

Readings are generated from the fake NVML scenario's exact model at chosen poll times, the way
the NVML collector would see them, and fed to the timeline; results are compared with the
scenario's exact integral.
"""

from __future__ import annotations

import math
import random

import pytest
from fakes.nvml_scenario import Gpu, Scenario, Segment

from wattspan.agent import timeline as timeline_module
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


# ---------------------------------------------------------------------------------------------
# Queries snapshot only the readings around their window: the same results as the whole rings


class WholeRings(DeviceTimeline):
    """The reference: every query reconstructs from both whole rings."""

    def _snapshot(self, start_ns=None, end_ns=None):
        return super()._snapshot()


def twins(info, capacity):
    return DeviceTimeline(info, capacity), WholeRings(info, capacity)


def assert_same_figure(got, want, scale):
    """Same figure, energies to the kernel's rounding: its running sums are of the size of
    ``scale`` (the cumulative energy), and start from the snapshot's first reading."""
    assert (got.device_id, got.start_ns, got.end_ns, got.quality, got.coverage, got.idle_w) == (
        want.device_id, want.start_ns, want.end_ns, want.quality, want.coverage, want.idle_w)
    tol = 1e-12 * scale
    for name in ("energy_j", "dynamic_energy_j"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a == pytest.approx(b, rel=1e-12, abs=tol), name
    for name, seconds in (("avg_power_w", (got.end_ns - got.start_ns) * got.coverage * 1e-9),
                          ("peak_power_w", 1e-9)):  # a piece lasts 1 ns at least
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a == pytest.approx(b, rel=1e-12, abs=4 * tol / seconds), name


def assert_same_answers(ranged, whole, start_ns, end_ns, scale, baseline_w=40.0):
    bounds = sorted({start_ns, end_ns, (start_ns + end_ns) // 2})
    if len(bounds) == 1:
        bounds *= 2
    for got, want in zip(ranged.energies(bounds, baseline_w), whole.energies(bounds, baseline_w),
                         strict=True):
        assert_same_figure(got, want, scale)
    assert_same_figure(ranged.energy_between(start_ns, end_ns),
                       whole.energy_between(start_ns, end_ns), scale)
    (figure, pieces), (figure_w, pieces_w) = (
        ranged.energy_pieces(start_ns, end_ns, baseline_w),
        whole.energy_pieces(start_ns, end_ns, baseline_w))
    assert_same_figure(figure, figure_w, scale)
    assert [(s, f, c) for s, f, _, c in pieces] == [(s, f, c) for s, f, _, c in pieces_w]
    for (_, _, e, _), (_, _, e_w, _) in zip(pieces, pieces_w, strict=True):
        assert e == pytest.approx(e_w, rel=1e-12, abs=1e-12 * scale)
    assert ranged.settled(start_ns) == whole.settled(start_ns)
    assert ranged.settled(end_ns) == whole.settled(end_ns)


def random_windows(rng, first_ns, last_ns, count):
    """Windows anywhere over the readings and past both ends, at and next to readings, from
    empty to longer than the query context."""
    widths = [0, 1, MS, 50 * MS, 1_000 * MS, 2 * timeline_module.CONTEXT_NS, 9_000 * MS]
    for _ in range(count):
        a = rng.randrange(first_ns - 3_000 * MS, last_ns + 3_000 * MS)
        yield a, a + rng.choice(widths + [rng.randrange(20_000 * MS)])
    for edge in (first_ns, last_ns):  # the ring's edges
        for d in (-1_000 * MS, -1, 0, 1, 1_000 * MS):
            yield edge + d, edge + d + 500 * MS
            yield edge + d - 500 * MS, edge + d


def test_ranged_queries_give_the_whole_rings_answers(native_impl):
    """60 s of a GPU read every 5 ms, in rings that hold the last ~50 s of counter readings:
    windows anywhere, including across the ring's oldest reading and past its newest."""
    sc = Scenario(epoch_ns=EPOCH, gpus=[Gpu.h100(
        uuid="GPU-r", idle_w=60, counter_phase_ms=37, instant_phase_ms=61, segments=[
            Segment(s, s + d, w) for s, d, w in [
                (1_000, 4_000, 300), (7_000, 500, 420), (9_000, 12_000, 180), (24_000, 100, 400),
                (26_000, 9_000, 250), (40_000, 15_000, 350), (57_000, 50, 390)]])])
    ranged, whole = twins(gpu_info(), capacity=1_000)
    for tl in (ranged, whole):
        feed(tl, sc, 0, EPOCH - 300 * MS, EPOCH + 60_000 * MS)
    assert ranged._counter.overruns > 0  # the oldest readings are gone
    t, e, _ = whole._snapshot()
    scale = max(x for x in e if x == x)
    rng = random.Random(7)
    for a, b in random_windows(rng, min(t), max(t), 120):
        assert_same_answers(ranged, whole, a, b, scale)


def awkward_readings(rng, base_ns):
    """Readings that need more than the default context: counters that freeze for seconds
    (no anchor near the window), gaps longer than the time margin, counter-only and
    power-only devices, a power stream that starts late or stops early, NaN counter reads."""
    kind = rng.choice(["both", "both", "counter", "power"])
    style = rng.choice(["every read", "stepped", "frozen", "sparse"])
    readings = []
    if kind != "power":
        t, c, frozen = base_ns + rng.randrange(10**9), 1_000.0, 0
        for _ in range(rng.randrange(1, 500)):
            sparse = style == "sparse" and rng.random() < 0.2
            t += rng.randrange(1, 4 * 10**9) if sparse else rng.randrange(1, 12 * MS)
            if frozen:
                frozen -= 1
            elif style == "frozen" and rng.random() < 0.05:
                frozen = rng.randrange(5, 600)
            if not frozen and (style != "stepped" or rng.random() < 0.3):
                c += rng.uniform(0.001, 5.0)
            read = c if rng.random() > 0.01 else math.nan
            readings.append(Reading("gpu:GPU-0", t, energy_j=read))
    if kind != "counter":
        t, level = base_ns + rng.randrange(-10**9, 3 * 10**9), 100.0
        for _ in range(rng.randrange(1, 500)):
            t += rng.randrange(1, 4 * 10**9) if rng.random() < 0.05 else rng.randrange(1, 12 * MS)
            if rng.random() < 0.05:
                level = rng.choice([0.0, 50.0, 300.0, rng.uniform(0.0, 500.0)])
            readings.append(Reading("gpu:GPU-0", t, power_w=level))
    readings.sort(key=lambda r: r.t_ns)
    return readings


@pytest.mark.parametrize("context_ns", [timeline_module.CONTEXT_NS, 1])
@pytest.mark.parametrize("seed", range(12))
def test_ranged_queries_widen_where_the_data_needs_it(native_impl, monkeypatch, seed,
                                                      context_ns):
    """Whatever the time margin: the context conditions alone give the whole rings' answers."""
    monkeypatch.setattr(timeline_module, "CONTEXT_NS", context_ns)
    rng = random.Random(seed)
    base = rng.choice([EPOCH, 200 * 86_400 * 1_000 * MS])  # also past 2**53 ns
    ranged, whole = twins(gpu_info(), capacity=rng.choice([50, 300, 2_000]))
    for reading in awkward_readings(rng, base):
        ranged.add(reading)
        whole.add(reading)
    t, e, _ = whole._snapshot()
    scale = max([abs(x) for x in e if x == x] + [1_000.0])
    for a, b in random_windows(rng, min(t), max(t), 25):
        assert_same_answers(ranged, whole, a, b, scale)


def test_a_query_reads_only_the_readings_around_its_window(native_impl, monkeypatch):
    tl = DeviceTimeline(gpu_info())
    for k in range(6_000):  # 60 s read every 10 ms; the counter moves at every read
        tl.add(Reading("gpu:GPU-0", EPOCH + k * 10 * MS, energy_j=1_000.0 + k, power_w=100.0))
    sizes = []
    kernel = timeline_module.native.energy_at
    monkeypatch.setattr(timeline_module.native, "energy_at",
                        lambda t, *rest: sizes.append(len(t)) or kernel(t, *rest))
    figure = tl.energy_between(EPOCH + 30_000 * MS, EPOCH + 31_000 * MS)
    assert figure.energy_j == pytest.approx(100.0)
    # 1 s and the 2 s of context on each side, of each stream (the readings at both ends)
    assert set(sizes) == {2 * ((1_000 + 2 * timeline_module.CONTEXT_NS // MS) // 10 + 1)}


def test_learned_baseline_looks_at_recent_readings_only(native_impl):
    tl = DeviceTimeline(gpu_info())
    history_ms = timeline_module.BASELINE_HISTORY_NS // MS
    energy = 0.0
    for k in range(0, history_ms + 30_000, 10):  # 20 W, then 80 W for the last history
        power = 20.0 if k < 30_000 else 80.0
        energy += power * 0.01
        tl.add(Reading("gpu:GPU-0", EPOCH + k * MS, energy_j=energy, power_w=power))
    assert tl.baseline_w() == pytest.approx(80.0)
