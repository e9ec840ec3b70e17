"""Attribution of device energy to spans (DESIGN.md, "Attribution"), on recorded readings.

Readings come from the fake NVML scenario's exact model at chosen poll times (as in
test_timeline.py) or are synthetic; no real time, no sleeps. The acceptance bound on
conservation is 0.01 %; it is tested here to 1e-9 relative.
"""

from __future__ import annotations

import math
import random
from itertools import pairwise

import pytest
from fakes.nvml_scenario import Gpu, Scenario, Segment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wattspan.agent.attribution import MIN_IDLE_PIECES, Attributor
from wattspan.agent.spans import Span
from wattspan.agent.timeline import DeviceTimeline, Timeline
from wattspan.collectors.base import DeviceInfo, Quality, Reading
from wattspan.collectors.nvml import instant_power_period_ns
from wattspan.collectors.updates import DatedReadings

MS = 1_000_000
S = 1_000 * MS
EPOCH = 10_000 * MS  # scenario time 0, as a CLOCK_MONOTONIC value
GPU = "gpu:GPU-0"
REL = 1e-9  # conservation, tested (the acceptance bound is 1e-4)
LATE = 200 * 86_400 * S  # CLOCK_MONOTONIC after 200 days: past 2**53 ns


def gpu_info(device_id=GPU, quality=Quality.MEASURED, idle_w=None):
    return DeviceInfo(device_id, "gpu", "fake", "test", quality, idle_w=idle_w)


def feed(timeline: DeviceTimeline, sc: Scenario, gpu: int, start_ns: int, end_ns: int,
         period_ns: int = 5 * MS, seed: int = 1) -> None:
    """Readings as the NVML collector passes them on from a dithered poll of the board."""
    rng = random.Random(seed)
    dated = DatedReadings(timeline.info.device_id, instant_power_period_ns(sc.gpus[gpu].arch))
    grid = start_ns
    while grid <= end_ns:
        ts = grid + rng.randrange(period_ns)
        for reading in dated.read(ts, sc.counter_mj(gpu, ts) / 1000.0,
                                  sc.instant_mw(gpu, ts) / 1000.0):
            timeline.add(reading)
        grid += period_ns


def one_gpu(sc: Scenario, until_ms: int, info: DeviceInfo | None = None, seed: int = 1):
    timeline = Timeline()
    device = timeline.add_device(info or gpu_info())
    feed(device, sc, 0, EPOCH - 300 * MS, EPOCH + until_ms * MS, seed=seed)
    return timeline, device


def at(ms: float) -> int:
    return EPOCH + int(round(ms * MS))


def span(key: int, start_ms: float, end_ms: float | None, weight: float = 1.0,
         devices=(GPU,), pid: int = 1, status: str = "ok") -> Span:
    return Span(pid, key, f"req-{key}", at(start_ms), weight=weight, devices=tuple(devices),
                end_ns=None if end_ms is None else at(end_ms), status=status)


def run(attributor: Attributor, bounds: list[int], spans, **kw):
    """Advance over consecutive windows; returns the intervals of each window."""
    out = []
    for i, (a, b) in enumerate(pairwise(bounds)):
        out.append(attributor.advance(b, spans, start_ns=a if i == 0 else None, **kw))
    return out


def windows(start_ms: float, end_ms: float, step_ms: float) -> list[int]:
    bounds = []
    t = start_ms
    while t < end_ms:
        bounds.append(at(t))
        t += step_ms
    bounds.append(at(end_ms))
    return bounds


def stacked(requests, idle_w=60.0) -> Scenario:
    """One H100 whose power is idle plus the watts of each request while it runs."""
    times = sorted({t for r in requests for t in r[:2]})
    segments = []
    for t0, t1 in pairwise(times):
        extra = sum(w for s, e, w in requests if s <= t0 < e)
        if extra:
            segments.append(Segment(t0, t1, idle_w + extra))
    return Scenario(epoch_ns=EPOCH, gpus=[Gpu.h100(uuid="GPU-s", idle_w=idle_w,
                                                   segments=segments)])


def close(a: float, b: float, rel: float = REL, abs_: float = 1e-12) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_ + 1e-300  # subnormals


# --------------------------------------------------------------------------- accuracy

def test_requests_one_at_a_time_get_their_true_energy(native_impl):
    requests = [(400, 1500, 150.0), (1800, 3100, 400.0), (3100, 4600, 220.0),
                (5000, 7300, 330.0), (7700, 8800, 275.0)]
    sc = stacked(requests)
    timeline, _ = one_gpu(sc, 9_500)
    spans = [span(i, s, e) for i, (s, e, _) in enumerate(requests)]
    attributor = Attributor(timeline)
    intervals = run(attributor, windows(250, 9_137, 1_000), spans)
    for (s, e, watts), sp in zip(requests, spans, strict=True):
        result = attributor.take(sp.key)
        true = sc.true_energy_j(0, sp.start_ns, sp.end_ns)
        assert abs(result.energy_j - true) / true < 0.01, (s, e, result.energy_j, true)
        true_dynamic = watts * (e - s) / 1e3  # idle 60 W plus the request's watts
        assert abs(result.dynamic_energy_j - true_dynamic) / true_dynamic < 0.02
        assert result.quality is Quality.MEASURED
        assert set(result.devices) == {GPU}
    assert all(iv.quality is Quality.MEASURED for ivs in intervals[1:] for iv in ivs)


def test_eight_concurrent_requests_weighted_by_their_power(native_impl):
    """Each request adds its own watts while it runs and is weighted by them: each gets its
    true dynamic energy, and its true share of the total."""
    rng = random.Random(8)
    requests = []
    for i in range(8):
        start = 500 + i * 450 + rng.randrange(200)
        requests.append((start, start + 2_500 + rng.randrange(2_500), 20.0 + 10.0 * i))
    sc = stacked(requests)
    end_ms = max(e for _, e, _ in requests) + 500
    timeline, _ = one_gpu(sc, end_ms + 300)
    spans = [span(i, s, e, weight=w) for i, (s, e, w) in enumerate(requests)]
    assert max(sum(1 for s, e, _ in requests if s <= t < e) for t, _, _ in requests) >= 5
    attributor = Attributor(timeline, idle_w={GPU: 60.0})
    run(attributor, windows(250, end_ms, 1_000), spans)

    times = sorted({t for r in requests for t in r[:2]})
    for (s, e, w), sp in zip(requests, spans, strict=True):
        result = attributor.take(sp.key)
        true_dynamic = w * (e - s) / 1e3
        true_share = 0.0
        for t0, t1 in pairwise(times):
            if s <= t0 < e:
                active = sum(x for a, b, x in requests if a <= t0 < b)
                true_share += (60.0 + active) * (t1 - t0) / 1e3 * w / active
        print(f"span {sp.span_id}: dynamic {result.dynamic_energy_j:.2f} J vs {true_dynamic:.2f}"
              f" J, total {result.energy_j:.2f} J vs {true_share:.2f} J")
        assert abs(result.dynamic_energy_j - true_dynamic) / true_dynamic < 0.02, sp.span_id
        assert abs(result.energy_j - true_share) / true_share < 0.02, sp.span_id


def test_equal_weights_match_an_independent_integration(native_impl):
    """Overlapping spans of equal weight, against E from the kernel at a grid that holds
    every power breakpoint and span boundary: between grid points the active set and the
    power are constant, so each cell's energy is shared equally."""
    import wattspan.native as native

    rng = random.Random(5)
    sc = stacked([(300, 2_000, 180.0), (1_200, 3_800, 140.0), (2_500, 5_200, 260.0)])
    timeline, device = one_gpu(sc, 6_000, seed=3)
    spans = []
    for i in range(12):
        s = 300 + rng.randrange(4_500)
        spans.append(span(i, s + rng.random(), s + 100 + rng.randrange(1_500)))
    spans.append(span(99, 200, None))  # open all along
    bounds = windows(250.5, 5_800, 733)
    attributor = Attributor(timeline, idle_w={GPU: 60.0})
    run(attributor, bounds, spans)
    got = {sp.key: attributor.take(sp.key).devices[GPU] for sp in spans}

    t, e, p = device._snapshot()
    a, b = bounds[0], bounds[-1]
    grid = {a, b, *native.breakpoints_ns(t, e, p, a, b), *bounds}
    for sp in spans:
        for x in (sp.start_ns, sp.end_ns):
            if x is not None and a < x < b:
                grid.add(x)
    grid = sorted(grid)
    values, _, _, _ = native.energy_at(t, e, p, grid)
    energy = dict.fromkeys(got, 0.0)
    dynamic = dict.fromkeys(got, 0.0)
    for (g0, g1), (e0, e1) in zip(pairwise(grid), pairwise(values), strict=True):
        live = [sp.key for sp in spans
                if sp.start_ns <= g0 and (sp.end_ns is None or g0 < sp.end_ns)]
        for key in live:
            energy[key] += (e1 - e0) / len(live)
            dynamic[key] += max(e1 - e0 - 60.0 * (g1 - g0) * 1e-9, 0.0) / len(live)
    for key, share in got.items():
        assert share.energy_j == pytest.approx(energy[key], rel=1e-6), key
        assert share.dynamic_energy_j == pytest.approx(dynamic[key], rel=1e-6, abs=1e-9), key


def test_energy_pieces_tile_the_interval_and_add_up_to_the_figure(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, device = one_gpu(sc, 2_500)
    for a, b in ((at(900), at(2_100)), (at(-1_000), at(1_000)), (at(2_000), at(4_000))):
        figure, pieces = device.energy_pieces(a, b, 60.0)
        assert figure == device.energy_between(a, b, 60.0)
        assert pieces[0][0] == a and pieces[-1][1] == b
        assert all(p[1] == q[0] for p, q in pairwise(pieces))
        assert all(0 <= c <= f - s for s, f, _, c in pieces)
        assert math.fsum(e for _, _, e, _ in pieces) == pytest.approx(figure.energy_j, rel=1e-12)
        covered = sum(c for _, _, _, c in pieces)
        assert covered / (b - a) == pytest.approx(figure.coverage, abs=1e-9)
    figure, pieces = device.energy_pieces(at(-5_000), at(-4_000))
    assert figure.energy_j is None and pieces == []


# --------------------------------------------------------------------------- conservation

@st.composite
def readings(draw, device_id: str, base: int):
    """Random readings: a cumulative counter (some reads unchanged), power, or both."""
    kind = draw(st.sampled_from(["both", "counter", "power"]))
    n = draw(st.integers(2, 60))
    t = base + draw(st.integers(0, 5 * S))
    counter = draw(st.floats(0, 1e6))
    out = []
    for _ in range(n):
        t += draw(st.integers(1, 200 * MS))
        power = draw(st.floats(0, 800))
        if draw(st.booleans()):
            counter += draw(st.floats(0, 50))
        out.append(Reading(device_id, t,
                           energy_j=counter if kind != "power" else None,
                           power_w=power if kind != "counter" else None))
    return out


@st.composite
def schedules(draw, base: int):
    lo, hi = base - 1 * S, base + 12 * S
    devices = ["gpu:0", "gpu:1"]
    spans = []
    for i in range(draw(st.integers(0, 12))):
        start = draw(st.integers(lo, hi))
        end = draw(st.one_of(st.none(), st.integers(start, start + 4 * S)))
        weight = draw(st.one_of(st.floats(0.01, 100), st.floats(1e-6, 1e6),
                                st.sampled_from([0.0, -1.0, math.nan])))
        used = draw(st.lists(st.sampled_from([*devices, "gpu:gone"]), min_size=1, max_size=3,
                             unique=True))
        pid = draw(st.sampled_from([7, 8]))
        spans.append(Span(pid, i, "s", start, weight=weight, devices=tuple(used), end_ns=end))
    cuts = draw(st.lists(st.integers(lo, hi), min_size=2, max_size=8, unique=True))
    return spans, sorted(cuts)


def make_timeline(streams) -> Timeline:
    timeline = Timeline()
    for device_id, rows in streams.items():
        device = timeline.add_device(gpu_info(device_id))
        for reading in rows:
            device.add(reading)
    return timeline


def shares_by_device(result) -> dict[str, float]:
    return {d: s.energy_j for d, s in result.devices.items()} if result else {}


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_conservation_over_random_schedules_and_windows(native_impl, data):
    base = data.draw(st.sampled_from([0, LATE]))
    streams = {d: data.draw(readings(d, base)) for d in ("gpu:0", "gpu:1")}
    spans, bounds = data.draw(schedules(base))
    # CPU-like sharing by process on one of the devices, sometimes.
    fractions = data.draw(st.one_of(st.none(), st.dictionaries(
        st.sampled_from([7, 8, 9]), st.floats(0, 1), max_size=3)))
    share = {"gpu:1": fractions} if fractions is not None else None
    timeline = make_timeline(streams)

    whole = Attributor(timeline)  # the same windows, accumulated
    per_window = run(whole, bounds, spans, process_share=share)
    totals: dict[tuple, dict[str, float]] = {}
    for (a, b), intervals in zip(pairwise(bounds), per_window, strict=True):
        alone = Attributor(timeline)  # this window on its own: its shares only
        assert [(iv.energy_j, iv.attributed_j, iv.unattributed_j, iv.quality)
                for iv in alone.advance(b, spans, start_ns=a, process_share=share)] == \
            [(iv.energy_j, iv.attributed_j, iv.unattributed_j, iv.quality) for iv in intervals]
        shares = {sp.key: shares_by_device(alone.take(sp.key)) for sp in spans}
        assert [iv.device_id for iv in intervals] == ["gpu:0", "gpu:1"]
        for iv in intervals:
            figure = timeline[iv.device_id].energy_between(a, b)
            if figure.energy_j is None:
                assert iv.energy_j is None and iv.attributed_j is None
                assert iv.unattributed_j is None and iv.quality is Quality.PARTIAL
                assert all(iv.device_id not in s for s in shares.values())
                continue
            assert iv.energy_j == figure.energy_j
            assert iv.quality is figure.quality
            given_out = math.fsum(s.get(iv.device_id, 0.0) for s in shares.values())
            scale = max(figure.energy_j, given_out, iv.unattributed_j)
            assert close(given_out + iv.unattributed_j, figure.energy_j, abs_=1e-12 * scale)
            assert close(given_out + iv.unattributed_j, figure.energy_j, rel=1e-4)
            assert close(given_out, iv.attributed_j, abs_=1e-12 * scale)
            assert min(iv.attributed_j, iv.unattributed_j) >= -1e-9 * scale
        for key, by_device in shares.items():
            for d, value in by_device.items():
                assert value >= 0.0
                totals.setdefault(key, {}).setdefault(d, 0.0)
                totals[key][d] += value

    big = Attributor(timeline)  # one window over the same time
    big.advance(bounds[-1], spans, start_ns=bounds[0], process_share=share)
    # Splitting a piece at a window bound interpolates E linearly, and the kernel's
    # breakpoints are rounded to whole ns: the two can differ by 1 ns of peak power per bound.
    peak = 1.0
    for device in timeline:
        _, pieces = device.energy_pieces(bounds[0], bounds[-1])
        peak = max([peak] + [e / (c * 1e-9) for _, _, e, c in pieces if c])
    slack = len(bounds) * peak * 2e-9
    for sp in spans:
        accumulated = shares_by_device(whole.take(sp.key))
        in_one = shares_by_device(big.take(sp.key))
        summed = totals.get(sp.key, {})
        assert set(accumulated) == set(summed)
        assert set(accumulated) <= set(in_one)
        for d, value in accumulated.items():
            assert close(value, summed[d], rel=1e-12, abs_=1e-12 * max(1.0, value))
        for d, value in in_one.items():
            # A device unknown in every small window is outside the data there: ~0 J.
            assert close(accumulated.get(d, 0.0), value, abs_=slack)


def test_every_device_gets_an_interval_and_idle_time_is_unattributed(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, _ = one_gpu(sc, 3_500)
    attributor = Attributor(timeline)
    (interval,) = attributor.advance(at(3_000), [], start_ns=at(500))
    assert interval.attributed_j == 0.0
    assert interval.unattributed_j == interval.energy_j
    assert interval.energy_j == pytest.approx(sc.true_energy_j(0, at(500), at(3_000)), rel=0.01)
    assert attributor.cursor_ns == at(3_000)


# --------------------------------------------------------------------------- baseline

def test_idle_baseline_is_learned_from_time_without_spans(native_impl):
    """A span that runs at low power (40 W, loading) while the board idles at 60 W otherwise:
    the learned baseline is the idle power, not the low percentile of all power."""
    sc = Scenario(epoch_ns=EPOCH, gpus=[Gpu.h100(uuid="GPU-l", idle_w=60, segments=[
        Segment(2_000, 4_000, 40), Segment(6_000, 8_000, 300)])])
    timeline, device = one_gpu(sc, 9_000)
    spans = [span(1, 2_000, 4_000), span(2, 6_000, 8_000)]
    attributor = Attributor(timeline)
    intervals = run(attributor, windows(250, 8_500, 1_000), spans)
    # Before anything was learned: the timeline's own baseline (a low percentile of all).
    assert intervals[0][0].idle_w == device.baseline_w()
    assert device.baseline_w() == pytest.approx(40.0, rel=0.05)
    learned = intervals[-1][0].idle_w
    assert learned == pytest.approx(60.0, rel=0.02)
    assert attributor.baseline_w(GPU) == learned
    result = attributor.take((1, 2))
    assert result.dynamic_energy_j == pytest.approx(240.0 * 2, rel=0.02)
    assert attributor.take((1, 1)).dynamic_energy_j < 2.0  # below idle: no dynamic energy


def test_configured_baseline_wins(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, _ = one_gpu(sc, 3_000, info=gpu_info(idle_w=55.0))
    spans = [span(1, 1_000, 2_000)]
    from_info = Attributor(timeline)
    assert {iv.idle_w for ivs in run(from_info, windows(250, 2_500, 500), spans)
            for iv in ivs} == {55.0}
    assert from_info.take((1, 1)).dynamic_energy_j == pytest.approx(245.0, rel=0.02)
    from_constructor = Attributor(timeline, idle_w={GPU: 70.0})
    assert {iv.idle_w for ivs in run(from_constructor, windows(250, 2_500, 500), spans)
            for iv in ivs} == {70.0}
    assert from_constructor.take((1, 1)).dynamic_energy_j == pytest.approx(230.0, rel=0.02)


def test_learned_baseline_needs_enough_idle_pieces(native_impl):
    assert MIN_IDLE_PIECES > 1
    sc = stacked([(500, 5_000, 200.0)])
    timeline, device = one_gpu(sc, 5_500)
    attributor = Attributor(timeline)
    intervals = run(attributor, windows(500, 5_000, 1_000), [span(1, 400, 5_100)])
    # Never idle: always the timeline's fallback.
    assert {ivs[0].idle_w for ivs in intervals} == {device.baseline_w()}


# --------------------------------------------------------------------------- process_share

def rapl_timeline(watts: float = 100.0, until_ms: int = 3_000) -> Timeline:
    timeline = Timeline()
    cpu = timeline.add_device(DeviceInfo("cpu:0", "cpu", "package", "rapl", Quality.MEASURED,
                                         idle_w=20.0))
    for k in range(until_ms // 10 + 1):
        cpu.add(Reading("cpu:0", EPOCH + k * 10 * MS, energy_j=5_000.0 + watts * k * 0.01))
    return timeline


def test_process_share_splits_by_process_then_by_weight(native_impl):
    timeline = rapl_timeline()
    cpu = ("cpu:0",)
    spans = [span(1, 0, 3_000, weight=1.0, devices=cpu, pid=1),
             span(2, 0, 3_000, weight=3.0, devices=cpu, pid=1),
             span(3, 1_000, 1_500, devices=cpu, pid=2),   # half of the window
             span(4, 1_000, 2_000, devices=cpu, pid=3)]   # a process with no share
    attributor = Attributor(timeline)
    share = {"cpu:0": {1: 0.5, 2: 0.25}}
    (iv,) = attributor.advance(at(2_000), spans, start_ns=at(1_000), process_share=share)
    assert iv.energy_j == pytest.approx(100.0)
    assert attributor.advance(at(3_000), spans, process_share=share)[0].energy_j == \
        pytest.approx(100.0)
    got = {k: attributor.take((pid, k)) for k, pid in ((1, 1), (2, 1), (3, 2), (4, 3))}
    # Second window: only pid 1's spans are active.
    assert got[1].energy_j == pytest.approx(2 * 50.0 * 1 / 4)
    assert got[2].energy_j == pytest.approx(2 * 50.0 * 3 / 4)
    assert got[3].energy_j == pytest.approx(25.0 / 2)
    assert got[4].energy_j == 0.0
    assert got[1].dynamic_energy_j == pytest.approx(2 * 40.0 / 4)
    assert iv.attributed_j == pytest.approx(50.0 + 12.5)
    assert iv.unattributed_j == pytest.approx(37.5)
    assert iv.attributed_j + iv.unattributed_j == pytest.approx(iv.energy_j, rel=1e-12)
    assert got[1].quality is got[2].quality is Quality.PARTIAL  # began before the first window
    assert got[3].quality is got[4].quality is Quality.MEASURED


def test_process_share_fractions_are_sanitized(native_impl):
    timeline = rapl_timeline()
    cpu = ("cpu:0",)
    spans = [span(1, 1_000, 2_000, devices=cpu, pid=1), span(2, 1_000, 2_000, devices=cpu, pid=2)]
    attributor = Attributor(timeline)
    share = {"cpu:0": {1: 3.0, 2: 1.0, 3: math.nan, 4: -2.0}}
    (iv,) = attributor.advance(at(2_000), spans, start_ns=at(1_000), process_share=share)
    assert attributor.take((1, 1)).energy_j == pytest.approx(75.0)
    assert attributor.take((2, 2)).energy_j == pytest.approx(25.0)
    assert iv.unattributed_j == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- weights

def test_zero_and_invalid_weights(native_impl):
    sc = stacked([(1_000, 3_000, 240.0)])
    timeline, _ = one_gpu(sc, 3_500)
    spans = [span(1, 1_000, 3_000, weight=2.0), span(2, 1_000, 2_000, weight=0.0),
             span(3, 1_000, 3_000, weight=math.nan), span(4, 1_500, 3_000, weight=-5.0),
             span(5, 2_000, 3_000, weight=math.inf)]
    attributor = Attributor(timeline)
    attributor.advance(at(3_000), spans, start_ns=at(1_000))
    got = {sp.span_id: attributor.take(sp.key).energy_j for sp in spans}
    assert got[1] == pytest.approx(sc.true_energy_j(0, at(1_000), at(3_000)), rel=0.01)
    assert got[2] == got[3] == got[4] == got[5] == 0.0


def test_all_zero_weights_split_equally(native_impl):
    sc = stacked([(1_000, 3_000, 240.0)])
    timeline, _ = one_gpu(sc, 3_500)
    spans = [span(1, 1_000, 3_000, weight=0.0), span(2, 1_000, 3_000, weight=0.0)]
    attributor = Attributor(timeline)
    (iv,) = attributor.advance(at(3_000), spans, start_ns=at(1_000))
    first, second = (attributor.take(sp.key).energy_j for sp in spans)
    assert first == pytest.approx(second, rel=1e-12)
    assert first + second == pytest.approx(iv.energy_j, rel=1e-12)


# --------------------------------------------------------------------------- quality

def test_incomplete_span_is_partial_everywhere(native_impl):
    sc = stacked([(1_000, 3_000, 240.0)])
    timeline, _ = one_gpu(sc, 3_500)
    spans = [span(1, 1_000, 3_000, status="incomplete"), span(2, 1_000, 3_000)]
    attributor = Attributor(timeline)
    run(attributor, windows(800, 3_200, 600), spans)
    incomplete, ok = attributor.take((1, 1)), attributor.take((1, 2))
    assert incomplete.quality is Quality.PARTIAL
    assert {s.quality for s in incomplete.devices.values()} == {Quality.PARTIAL}
    assert incomplete.energy_j == pytest.approx(ok.energy_j, rel=1e-12)
    assert ok.quality is Quality.MEASURED


def test_unknown_device_energy_is_partial_never_zero(native_impl):
    """gpu:late has readings only from 2 s on; a span on both boards from 1.5 s to 3.5 s."""
    sc = Scenario(epoch_ns=EPOCH, gpus=[
        Gpu.h100(uuid="GPU-a", idle_w=60, segments=[Segment(1_500, 3_500, 300)]),
        Gpu.h100(uuid="GPU-b", idle_w=60, segments=[Segment(1_500, 3_500, 200)])])
    timeline = Timeline()
    early = timeline.add_device(gpu_info("gpu:early"))
    late = timeline.add_device(gpu_info("gpu:late"))
    timeline.add_device(gpu_info("gpu:silent"))  # never read
    feed(early, sc, 0, EPOCH - 300 * MS, EPOCH + 4_500 * MS)
    feed(late, sc, 1, EPOCH + 2_000 * MS, EPOCH + 4_500 * MS)
    both = span(1, 1_500, 3_500, devices=("gpu:early", "gpu:late"))
    only_silent = span(2, 1_500, 3_500, devices=("gpu:silent",))
    attributor = Attributor(timeline)
    per_window = run(attributor, windows(1_000, 4_000, 1_000), [both, only_silent])

    first = {iv.device_id: iv for iv in per_window[0]}
    assert first["gpu:late"].energy_j is None
    assert first["gpu:late"].attributed_j is None and first["gpu:late"].avg_power_w is None
    assert first["gpu:late"].quality is Quality.PARTIAL
    assert all(iv.energy_j is None for ivs in per_window for iv in ivs
               if iv.device_id == "gpu:silent")

    result = attributor.take(both.key)
    assert result.quality is Quality.PARTIAL
    assert result.devices["gpu:early"].quality is Quality.MEASURED
    on_late = result.devices["gpu:late"]
    assert on_late.quality is Quality.PARTIAL
    # The known part only: from the first reading (2 s) to the span's end.
    assert on_late.energy_j == pytest.approx(
        sc.true_energy_j(1, at(2_000), at(3_500)), rel=0.03)
    nothing = attributor.take(only_silent.key)
    assert nothing.devices == {}
    assert nothing.energy_j is None and nothing.quality is Quality.PARTIAL


def test_devices_not_in_the_timeline_are_ignored(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, _ = one_gpu(sc, 2_500)
    sp = span(1, 1_000, 2_000, devices=(GPU, "gpu:elsewhere"))
    attributor = Attributor(timeline)
    attributor.advance(at(2_200), [sp], start_ns=at(900))
    result = attributor.take(sp.key)
    assert set(result.devices) == {GPU}
    assert result.quality is Quality.MEASURED


def test_a_span_given_twice_or_naming_a_device_twice_counts_once(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, _ = one_gpu(sc, 2_500)
    sp = span(1, 1_000, 2_000, devices=(GPU, GPU))
    attributor = Attributor(timeline)
    (iv,) = attributor.advance(at(2_000), [sp, sp], start_ns=at(1_000))
    assert attributor.take(sp.key).energy_j == pytest.approx(iv.energy_j, rel=1e-12)
    assert iv.unattributed_j == 0.0


def test_span_taken_before_its_end_is_partial(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, _ = one_gpu(sc, 2_500)
    sp = span(1, 1_000, None)
    attributor = Attributor(timeline)
    attributor.advance(at(1_500), [sp], start_ns=at(900))
    result = attributor.take(sp.key)
    assert result.quality is Quality.PARTIAL
    assert result.energy_j == pytest.approx(150.0, rel=0.02)


# --------------------------------------------------------------------------- API

def test_windows_follow_each_other():
    timeline = Timeline()
    timeline.add_device(gpu_info())
    attributor = Attributor(timeline)
    assert attributor.cursor_ns is None
    assert attributor.take((1, 1)) is None
    with pytest.raises(ValueError):
        attributor.advance(at(0), [], start_ns=at(10))
    assert attributor.advance(at(10), [], start_ns=at(10)) == []
    assert attributor.cursor_ns == at(10)
    with pytest.raises(ValueError):
        attributor.advance(at(5), [])
    with pytest.raises(ValueError):
        attributor.advance(at(20), [], start_ns=at(12))
    assert attributor.advance(at(20), [], start_ns=at(10))[0].energy_j is None


def test_first_window_starts_at_the_earliest_span_by_default(native_impl):
    sc = stacked([(1_000, 2_000, 240.0)])
    timeline, _ = one_gpu(sc, 2_500)
    sp = span(1, 1_000, 2_000)
    attributor = Attributor(timeline)
    (iv,) = attributor.advance(at(2_200), iter([sp]))
    assert iv.start_ns == sp.start_ns
    result = attributor.take(sp.key)
    assert result.quality is Quality.MEASURED
    assert result.energy_j == pytest.approx(300.0, rel=0.01)
    assert attributor.pending == 0


def test_span_first_seen_after_it_began_is_partial(native_impl):
    """A BEGIN that arrives after the window holding the span's start was attributed: the
    span missed energy, so its figures are partial."""
    sc = Scenario(epoch_ns=EPOCH, gpus=[Gpu.h100(uuid="GPU-0", segments=[Segment(0, 9000, 200)])])
    timeline, _ = one_gpu(sc, 4_000)
    late = span(1, 1_200, 2_800)
    attributor = Attributor(timeline)
    attributor.advance(EPOCH + 2_000 * MS, [], start_ns=EPOCH + 1_000 * MS)
    attributor.advance(EPOCH + 3_000 * MS, [late])
    result = attributor.take(late.key)
    assert result.quality is Quality.PARTIAL
    assert result.energy_j == pytest.approx(200.0 * 0.8, rel=0.02)  # what it was seen for
