"""The reading ring and the energy kernel, run against every implementation (``native_impl``),
plus property tests holding the compiled module and the pure-Python twin to the same results."""

from __future__ import annotations

import bisect
import copy
import math
import pickle
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAN = math.nan
MS = 1_000_000  # ns
S = 1_000_000_000  # ns

approx = pytest.approx


def nans(n):
    return array("d", [NAN] * n)


def energies(native_impl, t, e, p, q):
    values, methods, lo, hi = native_impl.energy_at(t, e, p, q)
    return list(values), list(methods), (lo, hi)


# ---------------------------------------------------------------------------------------------
# ReadingRing


def test_capacity_below_two_is_rejected(native_impl):
    for bad in (1, 0, -5):
        with pytest.raises(ValueError, match=f"^ring capacity must be at least 2, got {bad}$"):
            native_impl.ReadingRing(bad)
    ring = native_impl.ReadingRing(2)
    assert ring.capacity == 2
    assert len(ring) == 0


def test_empty_ring(native_impl):
    ring = native_impl.ReadingRing(4)
    with pytest.raises(IndexError, match="^empty ring$"):
        ring.first_t_ns()
    with pytest.raises(IndexError, match="^empty ring$"):
        ring.last_t_ns()
    t, e, p = ring.snapshot()
    assert (t.typecode, e.typecode, p.typecode) == ("q", "d", "d")
    assert (len(t), len(e), len(p)) == (0, 0, 0)
    assert ring.discard_before(10**18) == 0
    assert ring.overruns == 0


def test_wrap_counts_overruns_and_snapshot_is_oldest_first(native_impl):
    ring = native_impl.ReadingRing(4)
    for i in range(3):
        ring.append(i * 10, float(i), 100.0 + i)
    assert len(ring) == 3 and ring.overruns == 0
    assert list(ring.snapshot()[0]) == [0, 10, 20]
    for i in range(3, 7):
        ring.append(i * 10, float(i), 100.0 + i)
    assert len(ring) == 4
    assert ring.overruns == 3
    t, e, p = ring.snapshot()  # the write head is mid-buffer: the copy spans the wrap
    assert list(t) == [30, 40, 50, 60]
    assert list(e) == [3.0, 4.0, 5.0, 6.0]
    assert list(p) == [103.0, 104.0, 105.0, 106.0]
    assert ring.first_t_ns() == 30 and ring.last_t_ns() == 60
    for i in range(7, 100):  # many laps
        ring.append(i * 10, float(i), 0.0)
    assert list(ring.snapshot()[0]) == [960, 970, 980, 990]
    assert ring.overruns == 96
    ring.overruns = 0
    assert ring.overruns == 0


def test_snapshot_is_a_copy_and_keeps_nan(native_impl):
    ring = native_impl.ReadingRing(3)
    ring.append(1, NAN, 5.0)
    ring.append(2, 7.0, NAN)
    t, e, p = ring.snapshot()
    assert math.isnan(e[0]) and math.isnan(p[1])
    t[0] = 99
    e[1] = 99.0
    assert list(ring.snapshot()[0]) == [1, 2]
    assert ring.snapshot()[1][1] == 7.0


def test_ring_copies_and_pickles(native_impl):
    ring = native_impl.ReadingRing(3)
    for i in range(5):
        ring.append(i, float(i), NAN)
    for clone in (copy.deepcopy(ring), pickle.loads(pickle.dumps(ring))):
        assert clone.capacity == 3 and len(clone) == 3 and clone.overruns == 2
        assert list(clone.snapshot()[0]) == [2, 3, 4]
        clone.append(5, 5.0, 5.0)
        assert list(clone.snapshot()[0]) == [3, 4, 5] and clone.overruns == 3
    assert list(ring.snapshot()[0]) == [2, 3, 4] and ring.overruns == 2


def test_large_and_negative_times_round_trip(native_impl):
    ring = native_impl.ReadingRing(2)
    ring.append(2**63 - 1, 1.0, 1.0)
    ring.append(-(2**63), 2.0, 2.0)
    assert ring.first_t_ns() == 2**63 - 1
    assert ring.last_t_ns() == -(2**63)


def test_discard_before_keeps_the_newest_point_before(native_impl):
    ring = native_impl.ReadingRing(8)
    for i in range(4):
        ring.append(i * 10, float(i), 1.0)
    assert ring.discard_before(5) == 0  # nothing before 0 ... keeps 0, the point before 5
    assert ring.discard_before(25) == 2  # keeps 20: interpolation at 25 needs it
    assert list(ring.snapshot()[0]) == [20, 30]
    assert ring.discard_before(30) == 1  # a point exactly at t_ns is enough
    assert list(ring.snapshot()[0]) == [30]
    assert ring.discard_before(10**18) == 0  # never empties the ring
    assert len(ring) == 1 and ring.first_t_ns() == ring.last_t_ns() == 30


def test_discard_before_accepts_float_times(native_impl):
    ring = native_impl.ReadingRing(4)
    for t in (10, 20, 30):
        ring.append(t, 0.0, 0.0)
    assert ring.discard_before(20.5) == 1
    assert list(ring.snapshot()[0]) == [20, 30]
    assert ring.discard_before(NAN) == 0


def test_discard_then_append_across_the_wrap(native_impl):
    ring = native_impl.ReadingRing(3)
    for t in (0, 10, 20):
        ring.append(t, 0.0, 0.0)
    assert ring.discard_before(15) == 1
    ring.append(30, 0.0, 0.0)  # fills the freed slot: not an overrun
    assert ring.overruns == 0
    ring.append(40, 0.0, 0.0)
    assert ring.overruns == 1
    assert list(ring.snapshot()[0]) == [20, 30, 40]


def _ranged(ring, start, end):
    t, e, p = ring.snapshot(start, end)
    assert (t.typecode, e.typecode, p.typecode) == ("q", "d", "d")
    assert len(t) == len(e) == len(p)
    return list(t)


def test_ranged_snapshot_runs_from_the_reading_at_or_before_start_to_the_one_at_or_after_end(
        native_impl):
    ring = native_impl.ReadingRing(8)
    for t in (10, 20, 30, 40, 50):
        ring.append(t, t / 10.0, -t / 10.0)
    assert _ranged(ring, 25, 35) == [20, 30, 40]
    assert _ranged(ring, 20, 40) == [20, 30, 40]  # a reading at a bound is enough
    assert _ranged(ring, 30, 30) == [30]
    assert _ranged(ring, 31, 31) == [30, 40]
    assert _ranged(ring, 20.5, 39.5) == [20, 30, 40]  # floats compare exactly
    assert _ranged(ring, 19.999999, 40.000001) == [10, 20, 30, 40, 50]
    assert _ranged(ring, None, 25) == [10, 20, 30]
    assert _ranged(ring, 25, None) == [20, 30, 40, 50]
    assert _ranged(ring, None, None) == [10, 20, 30, 40, 50]
    t, e, p = ring.snapshot(25, 35)
    assert list(e) == [2.0, 3.0, 4.0] and list(p) == [-2.0, -3.0, -4.0]
    t, e, p = ring.snapshot()  # the no-argument behaviour is unchanged
    assert list(t) == [10, 20, 30, 40, 50] and list(e) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_ranged_snapshot_with_bounds_outside_the_readings(native_impl):
    ring = native_impl.ReadingRing(8)
    for t in (10, 20, 30):
        ring.append(t, 0.0, 0.0)
    assert _ranged(ring, -100, 15) == [10, 20]  # nothing at or before start: the first
    assert _ranged(ring, 25, 1_000) == [20, 30]  # nothing at or after end: the last
    assert _ranged(ring, -100, 1_000) == [10, 20, 30]
    assert _ranged(ring, -100, -50) == [10]  # all after: the first reading alone
    assert _ranged(ring, 50, 100) == [30]  # all before: the last reading alone
    assert _ranged(ring, -(2**80), 2**80) == [10, 20, 30]  # past int64 either way
    assert _ranged(ring, 2**80, 2**81) == [30]
    assert _ranged(ring, -math.inf, math.inf) == [10, 20, 30]


def test_ranged_snapshot_across_the_wrap(native_impl):
    ring = native_impl.ReadingRing(5)
    for i in range(13):  # the write head is mid-buffer: times 80 ... 120 are kept
        ring.append(i * 10, float(i), -float(i))
    assert ring.snapshot()[0].tolist() == [80, 90, 100, 110, 120]
    assert _ranged(ring, 85, 115) == [80, 90, 100, 110, 120]
    assert _ranged(ring, 95, 105) == [90, 100, 110]
    assert _ranged(ring, 100, 100) == [100]
    assert _ranged(ring, 0, 85) == [80, 90]
    assert _ranged(ring, 115, 10**6) == [110, 120]
    t, e, p = ring.snapshot(95, 115)
    assert list(e) == [9.0, 10.0, 11.0, 12.0] and list(p) == [-9.0, -10.0, -11.0, -12.0]
    kept = [80, 90, 100, 110, 120]
    for start in range(70, 131, 5):  # every range, whatever the physical layout
        for end in range(start, 131, 5):
            i0 = max(bisect.bisect_right(kept, start) - 1, 0)
            i1 = min(bisect.bisect_left(kept, end) + 1, len(kept))
            assert _ranged(ring, start, end) == kept[i0:i1], (start, end)


def test_ranged_snapshot_with_readings_at_equal_times(native_impl):
    ring = native_impl.ReadingRing(8)
    for i, t in enumerate((10, 20, 20, 20, 30)):
        ring.append(t, float(i), 0.0)
    assert list(ring.snapshot(20, 25)[1]) == [3.0, 4.0]  # the last at start
    assert list(ring.snapshot(15, 20)[1]) == [0.0, 1.0]  # the first at end
    assert list(ring.snapshot(20, 20)[1]) == [3.0]  # both: the last at start alone


def test_ranged_snapshot_of_an_empty_ring_and_of_a_single_reading(native_impl):
    ring = native_impl.ReadingRing(3)
    for bounds in ((0, 10), (None, 10), (10, None), (-(2**70), 2**70)):
        assert _ranged(ring, *bounds) == []
    ring.append(50, 5.0, NAN)
    for bounds in ((0, 10), (0, 50), (50, 50), (40, 60), (60, 70), (None, 0), (100, None)):
        t, e, p = ring.snapshot(*bounds)
        assert list(t) == [50] and list(e) == [5.0] and math.isnan(p[0])


def test_ranged_snapshot_rejects_bad_bounds(native_impl):
    ring = native_impl.ReadingRing(4)
    ring.append(10, 0.0, 0.0)
    with pytest.raises(ValueError, match="^snapshot bound is NaN$"):
        ring.snapshot(NAN, 20)
    with pytest.raises(ValueError, match="^snapshot bound is NaN$"):
        ring.snapshot(None, NAN)
    with pytest.raises(ValueError, match="^snapshot start_ns 30 is after end_ns 20$"):
        ring.snapshot(30, 20)
    with pytest.raises(ValueError, match="^snapshot start_ns 20.5 is after end_ns 20$"):
        ring.snapshot(20.5, 20)
    for bad in ("10", 1j, None.__class__):
        with pytest.raises(TypeError):
            ring.snapshot(bad, None)
        with pytest.raises(TypeError):
            ring.snapshot(None, bad)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(1, 10**12), min_size=0, max_size=40),
       base=st.integers(-(2**62), 2**61), capacity=st.integers(2, 12),
       bounds=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63),
                                 st.floats(allow_nan=False)), min_size=2, max_size=2))
def test_ranged_snapshot_is_the_slice_binary_search_finds(native_impl, steps, base, capacity,
                                                          bounds):
    ring = native_impl.ReadingRing(capacity)
    t = base
    for i, step in enumerate(steps):
        t += step
        ring.append(t, float(i), -float(i))
    start, end = bounds
    if start is not None and end is not None and start > end:
        start, end = end, start
    times, energies, powers = ring.snapshot()
    i0 = 0 if start is None else max(bisect.bisect_right(times, start) - 1, 0)
    i1 = len(times) if end is None else min(bisect.bisect_left(times, end) + 1, len(times))
    t, e, p = ring.snapshot(start, end)
    assert (t, e, p) == (times[i0:i1], energies[i0:i1], powers[i0:i1])


@pytest.mark.parametrize(
    "bad, error",
    [((1.5, 1.0, 1.0), TypeError), (("1", 1.0, 1.0), TypeError), ((1, "x", 1.0), TypeError),
     ((1, 1.0, None), TypeError), ((2**64, 1.0, 1.0), OverflowError)],
)
def test_bad_append_raises_and_leaves_the_ring_unchanged(native_impl, bad, error):
    ring = native_impl.ReadingRing(2)
    ring.append(7, 7.0, 7.0)
    ring.append(8, 8.0, 8.0)
    with pytest.raises(error):
        ring.append(*bad)
    t, e, p = ring.snapshot()
    assert (list(t), list(e), list(p)) == ([7, 8], [7.0, 8.0], [7.0, 8.0])
    assert len(ring) == 2 and ring.overruns == 0


# ---------------------------------------------------------------------------------------------
# energy_at: counter-only devices


def test_counter_moving_at_every_read_is_linear_between_reads_and_exact_at_them(native_impl):
    t = array("q", [0, 10 * MS, 20 * MS, 30 * MS])
    e = array("d", [100.0, 101.0, 103.0, 106.0])
    q = [0, 5 * MS, 10 * MS, 15 * MS, 20 * MS, 25 * MS, 30 * MS]
    values, methods, bounds = energies(native_impl, t, e, nans(4), q)
    assert values == [100.0, 100.5, 101.0, 102.0, 103.0, 104.5, 106.0]
    assert methods == [native_impl.METHOD_COUNTER] * 7
    assert bounds == (0, 30 * MS)


def test_counter_unchanged_at_a_read_is_anchored_halfway(native_impl):
    # The read at 10 ms saw no change, so 1 J was reached between 10 and 20 ms: at 15 ms.
    t = array("q", [0, 10, 20, 30])
    e = array("d", [0.0, 0.0, 1.0, 2.0])
    values, methods, bounds = energies(native_impl, t, e, nans(4), [10, 15, 20, 30])
    assert values == approx([10 / 15, 1.0, 1.0 + 5 / 15, 2.0], rel=1e-12)
    assert methods == [native_impl.METHOD_COUNTER] * 4
    assert bounds == (0, 30)


def test_counter_only_is_clamped_outside_its_anchors(native_impl):
    t = array("q", [100, 200, 300, 400])
    e = array("d", [5.0, 6.0, 7.0, 7.0])  # no change at 400: the last anchor is at 300
    values, methods, bounds = energies(native_impl, t, e, nans(4), [0, 99, 100, 350, 400, 10**15])
    assert values == [5.0, 5.0, 5.0, 7.0, 7.0, 7.0]
    c, k = native_impl.METHOD_COUNTER, native_impl.METHOD_CLAMPED
    assert methods == [k, k, c, k, k, k]
    assert bounds == (100, 300)


def test_single_counter_reading(native_impl):
    values, methods, bounds = energies(
        native_impl, array("q", [50]), array("d", [3.0]), nans(1), [40, 50, 60]
    )
    assert values == [3.0, 3.0, 3.0]
    k = native_impl.METHOD_CLAMPED
    assert methods == [k, native_impl.METHOD_COUNTER, k]
    assert bounds == (50, 50)


def test_duplicate_times_do_not_divide_by_zero_past_2_to_the_52(native_impl):
    # Above 2**52 ns (52 days of CLOCK_MONOTONIC) half a nanosecond is below float resolution:
    # the anchor of the second change at the same time must still come after the first.
    base = 2**54
    t = array("q", [base, base + 10, base + 20, base + 20])
    e = array("d", [0.0, 1.0, 2.0, 3.0])
    values, methods, (lo, hi) = energies(native_impl, t, e, nans(4), [base + 20, base + 30])
    assert all(math.isfinite(v) for v in values)
    assert values[0] in (2.0, 3.0) and values[1] == 3.0
    assert lo == base and hi >= base + 20


# ---------------------------------------------------------------------------------------------
# energy_at: coarse counter shaped by power


def _stepped_device():
    """A counter updated at 45 ms and 145 ms (10 -> 15 -> 20 J), read every 10 ms from 0 to
    200 ms, with power 40 W on (0, 100 ms] and 60 W on (100, 200 ms]."""
    t = array("q", range(0, 201 * MS, 10 * MS))
    e = array("d", [10.0 if x < 45 * MS else 15.0 if x < 145 * MS else 20.0 for x in t])
    p = array("d", [40.0 if x <= 100 * MS else 60.0 for x in t])
    return t, e, p


def _stepped_shape(x_ms):
    """S(x) by hand: the integral of the held-back power from 0."""
    if x_ms <= 100:
        return 40.0 * x_ms / 1000
    return 4.0 + 60.0 * (x_ms - 100) / 1000


def test_stepped_counter_anchors_at_midpoints_and_follows_the_power_shape(native_impl):
    t, e, p = _stepped_device()
    q_ms = [0, 20, 45, 80, 100, 120, 145, 180, 200]
    values, methods, bounds = energies(native_impl, t, e, p, [x * MS for x in q_ms])
    s45, s145 = _stepped_shape(45), _stepped_shape(145)  # 1.8 J, 6.7 J
    # The step from 45 to 145 ms shows one power change (40 -> 60 W, sampled at 100 ms): the
    # switch is solved from the counter's 5 J, 40 W * (x - 45 ms) + 60 W * (145 ms - x), so
    # x = 95 ms, and each level holds on its side of it (not the shape scaled by 5 / 4.9).
    expected = [
        15.0 - (s45 - _stepped_shape(0)),  # 13.2: before the first anchor, extended by power
        15.0 - (s45 - _stepped_shape(20)),  # 14.0
        15.0,  # the first anchor, halfway between the reads at 40 and 50 ms
        15.0 + 40.0 * 0.035,  # 16.4: 40 W up to the switch at 95 ms
        20.0 - 60.0 * 0.045,  # 17.3: 60 W from the switch
        20.0 - 60.0 * 0.025,  # 18.5
        20.0,
        20.0 + _stepped_shape(180) - s145,  # after the last anchor, extended by power
        23.3,
    ]
    assert values == approx(expected, rel=1e-12)
    assert values[0] == approx(13.2, rel=1e-12) and values[4] == approx(17.3, rel=1e-12)
    c, w = native_impl.METHOD_COUNTER, native_impl.METHOD_POWER
    assert methods == [w, w, c, c, c, c, c, w, w]
    assert bounds == (0, 200 * MS)  # the power data reaches past the anchors


def test_stepped_counter_is_clamped_outside_the_power_data(native_impl):
    t, e, p = _stepped_device()
    values, methods, _ = energies(native_impl, t, e, p, [-1 * MS, 250 * MS])
    assert values == approx([13.2, 23.3], rel=1e-12)
    assert methods == [native_impl.METHOD_CLAMPED] * 2


def test_power_device_counter_moving_every_read_anchors_at_read_times(native_impl):
    # The first reading is no anchor for a device with power; the first change anchors
    # halfway, every later consecutive change at its read time.
    t = array("q", [0, 10, 20, 30])
    e = array("d", [0.0, 1.0, 2.0, 3.0])
    p = array("d", [100.0] * 4)
    values, methods, bounds = energies(native_impl, t, e, p, [5, 20, 25, 30])
    assert values == approx([1.0, 2.0, 2.5, 3.0], rel=1e-12)
    assert methods == [native_impl.METHOD_COUNTER] * 4
    assert bounds == (0, 30)
    assert list(native_impl.breakpoints_ns(t, e, p, 0, 30)) == [5, 10, 20]


def test_zero_power_between_anchors_falls_back_to_linear(native_impl):
    t = array("q", [0, 10, 20, 30])
    e = array("d", [0.0, 1.0, 2.0, 3.0])
    p = array("d", [0.0] * 4)
    values, _, _ = energies(native_impl, t, e, p, [5, 12.5, 20, 25])
    assert values == approx([1.0, 1.5, 2.0, 2.5], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# energy_at: one power switch inside a counter step


_SWITCH_POWER_MS = [0, 50, 100, 150, 175, 200, 250]


def _switch_device(delta_j, levels_w, power_ms=_SWITCH_POWER_MS):
    """A counter stream read at 90, 110 and 200 ms (990 -> 1000 -> 1000 + delta J: anchors at
    100 ms, halfway, and 200 ms, its read time), then a power stream, as the timeline stores
    them: one after the other."""
    t = array("q", [90 * MS, 110 * MS, 200 * MS] + [x * MS for x in power_ms])
    e = array("d", [990.0, 1000.0, 1000.0 + delta_j] + [NAN] * len(power_ms))
    p = array("d", [NAN] * 3 + levels_w)
    return t, e, p


_ONE_SWITCH = [320.0, 320.0, 320.0, 320.0, 60.0, 60.0, 60.0]  # 320 W up to 150 ms, then 60 W


def test_one_power_change_inside_a_step_is_solved_from_the_counter(native_impl):
    # The power samples change once inside the step from 100 to 200 ms (320 W on (100, 150],
    # 60 W on (150, 200]). The counter says 22.38 J: 320 W * (x - 100 ms) + 60 W *
    # (200 ms - x) = 22.38 J puts the switch at x = 163 ms, not at the sampled 150 ms.
    t, e, p = _switch_device(22.38, _ONE_SWITCH)
    q_ms = [50, 100, 130, 150, 162, 163, 164, 180, 200, 250]
    values, methods, bounds = energies(native_impl, t, e, p, [x * MS for x in q_ms])
    expected = [
        1000.0 - 320.0 * 0.050,  # 984: before the first anchor, extended by power
        1000.0,
        1000.0 + 320.0 * 0.030,  # 1009.6: 320 W from the anchor ...
        1000.0 + 320.0 * 0.050,  # 1016: ... past the sampled change ...
        1000.0 + 320.0 * 0.062,  # 1019.84
        1000.0 + 320.0 * 0.063,  # 1020.16: ... up to the switch
        1022.38 - 60.0 * 0.036,  # 1020.22: 60 W from the switch to the next anchor
        1022.38 - 60.0 * 0.020,  # 1021.18
        1022.38,
        1022.38 + 60.0 * 0.050,  # 1025.38: after the last anchor, extended by power
    ]
    assert values == approx(expected, rel=1e-12)
    c, w = native_impl.METHOD_COUNTER, native_impl.METHOD_POWER
    assert methods == [w, c, c, c, c, c, c, c, c, w]
    assert bounds == (0, 250 * MS)
    # Both sides meet at the switch: E is continuous there.
    left, right = native_impl.energy_at(t, e, p, [163 * MS - 1e-3, 163 * MS + 1e-3])[0]
    assert right - left == approx(0.0, abs=1e-8)  # 320 W for 2 ps is 6.4e-10 J


def test_switch_is_a_breakpoint_and_each_piece_has_one_level(native_impl):
    t, e, p = _switch_device(22.38, _ONE_SWITCH)
    points = list(native_impl.breakpoints_ns(t, e, p, 0, 250 * MS))
    assert points == [x * MS for x in (50, 100, 150, 163, 175, 200)]
    assert list(native_impl.breakpoints_ns(t, e, p, 160 * MS, 170 * MS)) == [163 * MS]
    assert list(native_impl.breakpoints_ns(t, e, p, 163 * MS, 170 * MS)) == []
    edges = [100 * MS, 150 * MS, 163 * MS, 175 * MS, 200 * MS]
    values = native_impl.energy_at(t, e, p, edges)[0]
    watts = [(b - a) / ((y - x) * 1e-9)
             for x, y, a, b in zip(edges, edges[1:], values, values[1:], strict=False)]
    assert watts == approx([320.0, 320.0, 60.0, 60.0], rel=1e-9)


def test_switch_does_not_depend_on_how_the_streams_are_interleaved(native_impl):
    t, e, p = _switch_device(22.38, _ONE_SWITCH)
    order = sorted(range(len(t)), key=t.__getitem__)  # stable: one time order
    merged = tuple(array(c.typecode, [c[i] for i in order]) for c in (t, e, p))
    assert list(merged[0]) != list(t)
    q = [x * MS for x in range(0, 260, 3)]
    assert native_impl.energy_at(*merged, q) == native_impl.energy_at(t, e, p, q)
    assert list(native_impl.breakpoints_ns(*merged, 0, 250 * MS)) == list(
        native_impl.breakpoints_ns(t, e, p, 0, 250 * MS))


_FLAT_SHAPE = None  # no usable shape over the step: linear in time


@pytest.mark.parametrize(
    "delta_j, levels_w, power_ms, shape_100_130, shape_100_200",
    [
        # 40 J would need 320 W past the step's end (x = 230.8 ms): scale the shape instead
        (40.0, _ONE_SWITCH, _SWITCH_POWER_MS, 320.0 * 30, 320.0 * 50 + 60.0 * 50),
        # 3 J is below 60 W throughout (x = 88.5 ms, before the step)
        (3.0, _ONE_SWITCH, _SWITCH_POWER_MS, 320.0 * 30, 320.0 * 50 + 60.0 * 50),
        # two changes inside the step (320 -> 60 W at 150 ms, 60 -> 320 W at 175 ms)
        (22.38, [320.0, 320.0, 320.0, 320.0, 60.0, 320.0, 320.0], _SWITCH_POWER_MS,
         320.0 * 30, 320.0 * 50 + 60.0 * 25 + 320.0 * 25),
        # the change is at the anchor (100 ms), not strictly inside: 60 W all the step
        (22.38, [320.0, 320.0, 320.0, 60.0, 60.0, 60.0, 60.0], _SWITCH_POWER_MS,
         60.0 * 30, 60.0 * 100),
        # the change is sampled at the next anchor (200 ms), the power is 320 W all the step
        (22.38, [320.0] * 6 + [60.0], _SWITCH_POWER_MS, 320.0 * 30, 320.0 * 100),
        # the power samples start inside the step: they do not cover it
        (22.38, [320.0, 60.0, 60.0, 60.0], [150, 175, 200, 250], _FLAT_SHAPE, _FLAT_SHAPE),
    ],
    ids=["after-the-step", "before-the-step", "two-changes", "change-at-anchor",
         "change-at-next-anchor", "uncovered"],
)
def test_no_switch_falls_back_to_scaling_the_shape(native_impl, delta_j, levels_w, power_ms,
                                                   shape_100_130, shape_100_200):
    t, e, p = _switch_device(delta_j, levels_w, power_ms)
    frac = 0.3 if shape_100_130 is _FLAT_SHAPE else shape_100_130 / shape_100_200
    values, methods, _ = energies(native_impl, t, e, p, [100 * MS, 130 * MS, 200 * MS])
    assert values == approx([1000.0, 1000.0 + delta_j * frac, 1000.0 + delta_j], rel=1e-12)
    assert methods == [native_impl.METHOD_COUNTER] * 3
    points = native_impl.breakpoints_ns(t, e, p, 0, 250 * MS)
    assert list(points) == sorted({x * MS for x in power_ms if 0 < x < 250} | {100 * MS, 200 * MS})


def test_a_switch_in_each_step(native_impl):
    # Counter steps 100 -> 200 -> 300 ms, each with one change: 320 -> 60 W sampled at 150 ms
    # and 60 -> 200 W sampled at 250 ms. Step one is as above (x = 163 ms); step two holds
    # 60 W * (x - 200 ms) + 200 W * (300 ms - x) = 14.4 J: x = 240 ms.
    t = array("q", [x * MS for x in (90, 110, 200, 300)] + [x * MS for x in range(0, 301, 50)])
    e = array("d", [990.0, 1000.0, 1022.38, 1036.78] + [NAN] * 7)
    p = array("d", [NAN] * 4 + [320.0] * 4 + [60.0, 60.0, 200.0])
    values, _, _ = energies(native_impl, t, e, p, [x * MS for x in (163, 220, 240, 260, 300)])
    assert values == approx([1020.16, 1022.38 + 60.0 * 0.020, 1022.38 + 60.0 * 0.040,
                             1036.78 - 200.0 * 0.040, 1036.78], rel=1e-12)
    assert list(native_impl.breakpoints_ns(t, e, p, 0, 300 * MS)) == [
        x * MS for x in (50, 100, 150, 163, 200, 240, 250)]


# ---------------------------------------------------------------------------------------------
# energy_at: power-only devices


def test_power_only_integrates_backward_held_power(native_impl):
    t = array("q", [0, 1 * S, 2 * S, 3 * S])
    p = array("d", [7.0, 10.0, 20.0, 30.0])  # 7 W describes the time before 0: unused
    q = [0, S // 2, S, 3 * S // 2, 9 * S // 4, 3 * S]
    values, methods, bounds = energies(native_impl, t, nans(4), p, q)
    assert values == approx([0.0, 5.0, 10.0, 20.0, 37.5, 60.0], rel=1e-12)
    assert methods == [native_impl.METHOD_POWER] * 6
    assert bounds == (0, 3 * S)
    values, methods, _ = energies(native_impl, t, nans(4), p, [-S, 4 * S])
    assert values == approx([0.0, 60.0], rel=1e-12)
    assert methods == [native_impl.METHOD_CLAMPED] * 2


def test_single_power_reading_is_no_data(native_impl):
    values, methods, bounds = energies(
        native_impl, array("q", [5]), nans(1), array("d", [10.0]), [5]
    )
    assert math.isnan(values[0])
    assert methods == [native_impl.METHOD_NONE]
    assert bounds == (-1, -1)


# ---------------------------------------------------------------------------------------------
# energy_at: missing data and inputs


def test_nan_readings_are_skipped(native_impl):
    t = array("q", [0, 10 * MS, 20 * MS, 30 * MS])
    e = array("d", [100.0, 101.0, 103.0, 106.0])
    q = [0, 5 * MS, 10 * MS, 15 * MS, 20 * MS, 25 * MS, 30 * MS, 40 * MS]
    clean = energies(native_impl, t, e, nans(4), q)
    holes_t = array("q", [0, 3 * MS, 10 * MS, 12 * MS, 20 * MS, 29 * MS, 30 * MS, 35 * MS])
    holes_e = array("d", [100.0, NAN, 101.0, NAN, 103.0, NAN, 106.0, NAN])
    assert energies(native_impl, holes_t, holes_e, nans(8), q) == clean

    t, e, p = _stepped_device()
    q = [x * MS for x in range(-10, 220, 7)]
    clean = energies(native_impl, t, e, p, q)
    e2, p2 = array("d", e), array("d", p)
    t2 = array("q", t)
    for i in (3, 8, 14):  # insert unread rows: neither value read
        t2.insert(i, t2[i - 1] + MS)
        e2.insert(i, NAN)
        p2.insert(i, NAN)
    assert energies(native_impl, t2, e2, p2, q) == clean


def test_no_data(native_impl):
    for t, e, p in [
        (array("q"), array("d"), array("d")),
        (array("q", [1, 2, 3]), nans(3), nans(3)),
    ]:
        values, methods, bounds = energies(native_impl, t, e, p, [0, 2, 10])
        assert all(math.isnan(v) for v in values)
        assert methods == [native_impl.METHOD_NONE] * 3
        assert bounds == (-1, -1)
        assert list(native_impl.breakpoints_ns(t, e, p, 0, 10)) == []
    values, methods, bounds = energies(native_impl, array("q"), array("d"), array("d"), [])
    assert (values, methods, bounds) == ([], [], (-1, -1))


def test_nan_query_has_no_answer(native_impl):
    t = array("q", [0, 10])
    e = array("d", [0.0, 1.0])
    for p in (nans(2), array("d", [1.0, 1.0])):
        values, methods, _ = energies(native_impl, t, e, p, [NAN, 5.0])
        assert math.isnan(values[0]) and methods[0] == native_impl.METHOD_NONE
        assert methods[1] == native_impl.METHOD_COUNTER


def test_result_types(native_impl):
    t, e, p = _stepped_device()
    values, methods, lo, hi = native_impl.energy_at(t, e, p, array("q", [5 * MS]))
    assert isinstance(values, array) and values.typecode == "d"
    assert isinstance(methods, array) and methods.typecode == "b"
    assert type(lo) is int and type(hi) is int
    points = native_impl.breakpoints_ns(t, e, p, 0, 100 * MS)
    assert isinstance(points, array) and points.typecode == "q"


def test_lists_and_arrays_give_the_same_results(native_impl):
    t, e, p = _stepped_device()
    q = [x * MS for x in range(-10, 220, 3)]
    reference = native_impl.energy_at(t, e, p, array("q", q))
    assert native_impl.energy_at(list(t), list(e), list(p), q) == reference
    assert native_impl.energy_at(t, e, p, array("d", q)) == reference
    assert native_impl.energy_at(tuple(t), tuple(e), tuple(p), tuple(q)) == reference
    np = pytest.importorskip("numpy")
    assert native_impl.energy_at(
        np.asarray(t, dtype=np.int64), np.asarray(e), np.asarray(p), np.asarray(q)
    ) == reference


def test_mismatched_lengths_are_rejected(native_impl):
    t = array("q", [0, 10])
    with pytest.raises(ValueError, match=r"differ in length \(2, 1, 2\)"):
        native_impl.energy_at(t, array("d", [1.0]), nans(2), [5])
    with pytest.raises(ValueError, match=r"differ in length \(2, 2, 3\)"):
        native_impl.breakpoints_ns(t, nans(2), nans(3), 0, 10)


# ---------------------------------------------------------------------------------------------
# breakpoints_ns


def test_breakpoints_are_power_times_anchors_and_switches_strictly_inside(native_impl):
    t, e, p = _stepped_device()
    points = list(native_impl.breakpoints_ns(t, e, p, 0, 200 * MS))
    # 95 ms: the solved switch inside the step from 45 to 145 ms
    expected = sorted({x * MS for x in range(10, 200, 10)} | {45 * MS, 95 * MS, 145 * MS})
    assert points == expected
    points = list(native_impl.breakpoints_ns(t, e, p, 40 * MS, 50 * MS))
    assert points == [45 * MS]
    assert list(native_impl.breakpoints_ns(t, e, p, 91 * MS, 99 * MS)) == [95 * MS]
    assert list(native_impl.breakpoints_ns(t, e, p, 95 * MS, 99 * MS)) == []
    assert list(native_impl.breakpoints_ns(t, e, p, 45 * MS, 45 * MS)) == []


def test_breakpoints_counter_only_and_rounding(native_impl):
    # Anchors: 0, 100.5 (halfway between the reads at 100 and 101), 200.
    t = array("q", [0, 100, 101, 200])
    e = array("d", [0.0, 0.0, 1.0, 2.0])
    assert list(native_impl.breakpoints_ns(t, e, nans(4), -1, 1000)) == [0, 100, 200]
    # 100.5 rounds (half to even) to 100 = start: an empty piece, so it is left out.
    assert list(native_impl.breakpoints_ns(t, e, nans(4), 100, 1000)) == [200]
    assert list(native_impl.breakpoints_ns(t, e, nans(4), 99.5, 200.0)) == [100]


# ---------------------------------------------------------------------------------------------
# Properties

# Past 2**53 ns times no longer fit a float exactly; both implementations must still agree.
_SMALL_BASES = [0, 1_000_000, 2**40, 2**52 - 7]
_LARGE_BASES = [2**53 + 3, 2**54 + 1, 2**61]


@st.composite
def readings(draw, max_n=40, non_decreasing=False, large_times=True, kind=None, base=None):
    """A snapshot: times non-decreasing (duplicates allowed), counters with repeats (a coarse
    counter), NaN holes, power often on a few levels (so counter steps see one change, or
    none); the kind of device drawn too, unless given."""
    n = draw(st.integers(0, max_n))
    if base is None:
        base = draw(st.sampled_from(_SMALL_BASES + (_LARGE_BASES if large_times else [])))
    steps = draw(st.lists(st.sampled_from([0, 1, 2, 3, 500, 10_000, 10 * MS]) | st.integers(0, S),
                          min_size=n, max_size=n))
    t, x = [], base
    for dt in steps:
        x += dt
        t.append(x)
    if kind is None:
        kind = draw(st.sampled_from(["counter", "power", "both", "both"]))
    hole = st.floats(0, 1)
    e, c = [], draw(st.floats(0, 1e6))
    for _ in range(n):
        inc = draw(st.sampled_from([0.0, 0.0, 0.5]) | st.floats(0, 1e3))
        if not non_decreasing and draw(st.integers(0, 19)) == 0:
            inc = -draw(st.floats(0, 10))  # a counter reset
        c += inc
        e.append(NAN if kind == "power" or draw(hole) < 0.15 else c)
    power = st.floats(0, 1e3) if non_decreasing else st.floats(-10, 1e3)
    power = st.sampled_from([0.0, 60.0, 320.0]) | power
    p = [NAN if kind == "counter" or draw(hole) < 0.15 else draw(power) for _ in range(n)]
    return array("q", t), array("d", e), array("d", p)


@st.composite
def streams(draw, max_n=30):
    """A snapshot as the timeline takes it: the counter stream, then the power stream, each in
    time order on its own (power samples may be dated before the last counter read)."""
    base = draw(st.sampled_from(_SMALL_BASES + _LARGE_BASES))
    tc, ec, pc = draw(readings(max_n=max_n, kind="counter", base=base))
    shift = draw(st.sampled_from([0, -5, 5, -50 * MS]) | st.integers(-S, S))
    tp, ep, pp = draw(readings(max_n=max_n, kind="power", base=base + shift))
    return tc + tp, ec + ep, pc + pp


@st.composite
def switching(draw, max_n=40):
    """A device whose power moves between a few levels at any nanosecond, sampled at each read,
    with a coarse counter integrating it: counter steps often hold one sampled change, and the
    switch solved from the counter then falls inside the step (the first half of the rows
    follows the power as the hardware does; the counter may also be off it, by a reset)."""
    n = draw(st.integers(2, max_n))
    base = draw(st.sampled_from(_SMALL_BASES + _LARGE_BASES))
    period = draw(st.sampled_from([1, 3, 1000, 10 * MS]) | st.integers(1, S))
    span = n * period
    changes = sorted(draw(st.lists(st.integers(0, span), min_size=1, max_size=8)))
    levels = [draw(st.sampled_from([0.0, 60.0, 320.0, 250.5])) for _ in range(len(changes) + 1)]

    def energy(x):  # integral of the true power over [0, x], J
        total, a = 0.0, 0
        for change, level in zip(changes, levels, strict=False):
            if change >= x:
                break
            total += level * (change - a) * 1e-9
            a = change
        return total + levels[bisect.bisect_left(changes, x)] * (x - a) * 1e-9

    every = draw(st.integers(1, 12)) * period  # the counter updates this often
    phase = draw(st.integers(0, every))
    c0 = draw(st.floats(0, 1e6))
    hole = st.integers(0, 9)
    t, e, p = [], [], []
    for i in range(n):
        x = i * period
        updated = x - (x - phase) % every if x >= phase else 0
        t.append(base + x)
        e.append(NAN if draw(hole) == 0 else c0 + energy(updated))
        # a power sample describes the interval that ends at it: the level just before it
        p.append(NAN if draw(hole) == 0 else levels[bisect.bisect_left(changes, x)])
    if draw(st.booleans()):  # as the timeline stores them: counter stream, then power stream
        return (array("q", t + t), array("d", e + [NAN] * n), array("d", [NAN] * n + p))
    return array("q", t), array("d", e), array("d", p)


@st.composite
def shuffled(draw):
    """Any snapshot in any row order: no caller makes one, the twins must still agree."""
    t, e, p = draw(readings() | switching())
    order = draw(st.permutations(range(len(t))))
    return (array("q", [t[i] for i in order]), array("d", [e[i] for i in order]),
            array("d", [p[i] for i in order]))


@st.composite
def queries(draw, t):
    lo = min(t) if t else 0
    hi = max(t) if t else 1000
    span = max(hi - lo, 10)
    near = st.integers(lo - span // 4, hi + span // 4)
    q = draw(st.lists(near, max_size=30))
    q += draw(st.lists(st.sampled_from(list(t)), max_size=10)) if t else []
    if len(t) >= 2:  # halfway points, where anchors sit
        i = draw(st.integers(0, len(t) - 2))
        q.append((t[i] + t[i + 1]) // 2)
    return q


def _identical(a, b):
    """The same float, bit for bit (any NaN matches any NaN)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _assert_parity(compiled, python, t, e, p, q):
    ve, me, lo, hi = compiled.energy_at(t, e, p, q)
    vp, mp, lo_p, hi_p = python.energy_at(t, e, p, q)
    assert list(me) == list(mp)
    assert (lo, hi) == (lo_p, hi_p)
    assert all(_identical(a, b) for a, b in zip(ve, vp, strict=True)), [
        (x, a, b) for x, a, b in zip(q, ve, vp, strict=True) if not _identical(a, b)]
    fq = [float(x) for x in q]  # float queries take the other input path
    vf, mf, _, _ = compiled.energy_at(t, e, p, fq)
    assert list(mf) == list(mp)
    assert all(_identical(a, b) for a, b in zip(vf, python.energy_at(t, e, p, fq)[0], strict=True))
    bounds = [sorted(q[:2])] if len(q) >= 2 else []
    if len(t):
        bounds.append((min(t) - 1, max(t) + 1))  # every breakpoint
    for start, end in bounds:
        assert list(compiled.breakpoints_ns(t, e, p, start, end)) == list(
            python.breakpoints_ns(t, e, p, start, end)
        )


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_parity_energy_at_and_breakpoints(native_twins, data):
    t, e, p = data.draw(readings())
    _assert_parity(*native_twins, t, e, p, data.draw(queries(t)))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parity_concatenated_streams(native_twins, data):
    t, e, p = data.draw(streams())
    _assert_parity(*native_twins, t, e, p, data.draw(queries(t)))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parity_power_switching_between_levels(native_twins, data):
    t, e, p = data.draw(switching())
    _assert_parity(*native_twins, t, e, p, data.draw(queries(t)))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_parity_any_row_order(native_twins, data):
    t, e, p = data.draw(shuffled())
    _assert_parity(*native_twins, t, e, p, data.draw(queries(t)))


def test_parity_switch_with_unsorted_power_times(native_twins):
    # No caller makes it, but the twins agree on it too: the compiled kernel walks sorted power
    # times with one pointer, and takes the twin's bisection when they are not sorted. Here
    # bisect_right(pt, 100 ms) lands on the sample at 120 ms (a pointer would stop at 300 ms)
    # and the step from 100 to 200 ms sees one change, 320 -> 60 W: the switch is solved.
    t, e, p = _switch_device(22.38, [320.0] * 5 + [60.0] * 2, [0, 50, 300, 20, 120, 180, 350])
    q = [x * MS for x in range(-10, 360, 7)]
    _assert_parity(*native_twins, t, e, p, q)
    for impl in native_twins:
        assert 163 * MS in impl.breakpoints_ns(t, e, p, 0, 350 * MS)


def test_parity_more_power_points_than_readings(native_twins):
    # Every reading has power and the latest is not the last row: holding the last power value
    # up to the last read (max(t), not t[-1]) makes one power point more than there are rows.
    t = array("q", [0, 30, 10, 20])
    e = array("d", [1.0, 2.0, 3.0, 4.0])
    p = array("d", [5.0, 6.0, 7.0, 8.0])
    q = list(range(-5, 36, 5))
    for energy in (e, nans(4)):
        _assert_parity(*native_twins, t, energy, p, q)
    assert native_twins[0].energy_at(t, nans(4), p, [0])[0][0] == 0.0  # S is 0 at pt[0]


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["append", "append", "discard"]),
                              st.integers(-(2**62), 2**62), st.floats(allow_nan=True)),
                    max_size=60),
       capacity=st.integers(2, 9))
def test_parity_ring(native_twins, ops, capacity):
    rings = [m.ReadingRing(capacity) for m in native_twins]
    for op, t, v in ops:
        if op == "append":
            for ring in rings:
                ring.append(t, v, -v)
        else:
            assert rings[0].discard_before(t) == rings[1].discard_before(t)
        a, b = rings
        assert (len(a), a.overruns) == (len(b), b.overruns)
        # ranged too: times in any order, where the binary search finds what it finds
        for bounds in ((), (t, None), (None, t), (t, t), (t - 2**40, t + 2**40), (v, v)):
            if any(x != x for x in bounds):
                continue
            sa, sb = a.snapshot(*bounds), b.snapshot(*bounds)
            assert sa[0] == sb[0]
            assert [repr(x) for x in sa[1] + sa[2]] == [repr(x) for x in sb[1] + sb[2]]
        if len(a):
            assert (a.first_t_ns(), a.last_t_ns()) == (b.first_t_ns(), b.last_t_ns())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_energy_is_non_decreasing_in_time(native_impl, data):
    # Past 2**53 ns float times round, and monotonicity holds only to ~1 ulp of the times.
    t, e, p = data.draw(readings(non_decreasing=True, large_times=False))
    q = sorted(data.draw(queries(t)))
    values, methods, _, _ = native_impl.energy_at(t, e, p, q)
    for i in range(1, len(q)):
        if methods[i] == native_impl.METHOD_NONE:
            continue
        tol = 1e-9 * max(1.0, abs(values[i - 1]))
        assert values[i] >= values[i - 1] - tol, (q[i - 1], q[i], values[i - 1], values[i])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(1, 10**9), min_size=1, max_size=30),
       incs=st.lists(st.floats(1e-3, 1e3), min_size=30, max_size=30),
       base=st.integers(0, 2**52))
def test_counter_moving_at_every_read_is_exact_at_reads(native_impl, steps, incs, base):
    t, e, x, c = [base], [0.0], base, 0.0
    for dt, inc in zip(steps, incs, strict=False):
        x += dt
        c += inc
        t.append(x)
        e.append(c)
    values, methods, lo, hi = native_impl.energy_at(array("q", t), array("d", e), nans(len(t)), t)
    assert values[:-1] == array("d", e[:-1])  # anchors: exact
    assert values[-1] == approx(e[-1], rel=1e-15)  # a + (b - a) * 1.0: within an ulp of b
    assert set(methods) == {native_impl.METHOD_COUNTER}
    assert (lo, hi) == (t[0], t[-1])
