"""Benchmark of the attribution: 8 GPUs with 8 spans of ~50 ms in flight on each, readings
every 5 ms, windows of 1 s (DESIGN.md target: >= 50,000 spans/s for ingest + attribution on
one core).

Under the project's default ``--benchmark-disable`` each runs once, as a test, on a few
seconds of data. For numbers:

    python -m pytest benchmarks/bench_attribution.py --benchmark-enable -s

The spans/s of CPU time of each run are printed and kept in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import math
import random
import time

import pytest

from wattspan.agent.attribution import Attributor
from wattspan.agent.spans import Span
from wattspan.agent.timeline import Timeline
from wattspan.collectors.base import DeviceInfo, Quality, Reading

MS = 1_000_000
S = 1_000 * MS
BASE_NS = 200 * 86_400 * S  # CLOCK_MONOTONIC after 200 days: past 2**53 ns
GPUS = 8
IN_FLIGHT = 8  # spans running at once on each GPU
SPAN_NS = 50 * MS
READ_NS = 5 * MS
WINDOW_NS = S


def gpu_ids() -> list[str]:
    return [f"gpu:GPU-{i}" for i in range(GPUS)]


def gpu_readings(device_id: str, start_ns: int, end_ns: int, seed: int) -> list[Reading]:
    """A busy GPU read every 5 ms: power 150-450 W and its cumulative energy counter."""
    rng = random.Random(seed)
    out = []
    counter = 1_000.0
    t = start_ns
    while t <= end_ns:
        power = 300.0 + 150.0 * math.sin(t / 1.7e8 + seed) + rng.uniform(-5.0, 5.0)
        counter += power * READ_NS * 1e-9
        out.append(Reading(device_id, t + rng.randrange(READ_NS // 5), energy_j=counter,
                           power_w=power))
        t += READ_NS
    return out


def gpu_spans(start_ns: int, end_ns: int, seed: int) -> list[Span]:
    """IN_FLIGHT back-to-back streams of ~50 ms spans on each GPU."""
    rng = random.Random(seed)
    spans = []
    key = 0
    for g, device_id in enumerate(gpu_ids()):
        for stream in range(IN_FLIGHT):
            t = start_ns + rng.randrange(SPAN_NS)
            while True:
                end = t + rng.randrange(SPAN_NS * 8 // 10, SPAN_NS * 12 // 10)
                if end > end_ns:
                    break
                key += 1
                spans.append(Span(1_000 + g * IN_FLIGHT + stream, key, "generate", t,
                                  weight=float(rng.randrange(16, 512)),
                                  devices=(device_id,), end_ns=end))
                t = end + rng.randrange(2 * MS)
    spans.sort(key=lambda s: s.start_ns)
    return spans


def make_timeline(readings: dict[str, list[Reading]], capacity: int | None = None) -> Timeline:
    timeline = Timeline() if capacity is None else Timeline(capacity)
    for device_id, rows in readings.items():
        device = timeline.add_device(DeviceInfo(device_id, "gpu", "bench", "bench",
                                                Quality.MEASURED))
        for reading in rows:
            device.add(reading)
    return timeline


def attribute(timeline: Timeline, spans: list[Span], start_ns: int, end_ns: int,
              feed: dict[str, list[Reading]] | None = None,
              attributor: Attributor | None = None) -> int:
    """The agent's loop: per window, (feed that window's readings,) advance over the spans
    that overlap it, take those that ended. Returns the number of spans taken."""
    attributor = attributor or Attributor(timeline)
    feed_at = dict.fromkeys(feed, 0) if feed else {}
    first = 0  # spans are sorted by start; those before ``first`` have all been taken
    taken = 0
    a = start_ns
    while a < end_ns:
        b = min(a + WINDOW_NS, end_ns)
        if feed:
            for device_id, rows in feed.items():
                add = timeline[device_id].add
                i = feed_at[device_id]
                while i < len(rows) and rows[i].t_ns <= b + 10 * READ_NS:
                    add(rows[i])
                    i += 1
                feed_at[device_id] = i
        last = first
        while last < len(spans) and spans[last].start_ns < b:
            last += 1
        window = [s for s in spans[first:last] if s.end_ns > a]
        attributor.advance(b, window, start_ns=a)
        for span in window:
            if span.end_ns <= b:
                attributor.take(span.key)
                taken += 1
        while first < last and spans[first].end_ns <= b:
            first += 1
        a = b
    return taken


def _report(benchmark, label: str, spans: int, cpu_s: float) -> None:
    rate = spans / cpu_s if cpu_s > 0 else float("inf")
    benchmark.extra_info["spans"] = spans
    benchmark.extra_info["spans_per_cpu_s"] = round(rate)
    print(f"\n{label}: {spans} spans in {cpu_s * 1e3:.1f} ms of CPU: {rate:,.0f} spans/s")


def _seconds(benchmark, enabled_s: int, disabled_s: int) -> int:
    return disabled_s if benchmark.disabled else enabled_s


@pytest.mark.benchmark(group="attribution 8 GPUs x 8 spans")
def test_attribution(native_impl, benchmark):
    impl = native_impl.IMPLEMENTATION
    """Recorded readings already in the timelines; advance + take per 1 s window."""
    seconds = _seconds(benchmark, 20, 3)
    start, end = BASE_NS, BASE_NS + seconds * S
    readings = {d: gpu_readings(d, start - S, end + S, i) for i, d in enumerate(gpu_ids())}
    timeline = make_timeline(readings)
    spans = gpu_spans(start, end, 1)
    runs = []

    def timed():
        cpu = time.process_time()
        taken = attribute(timeline, spans, start, end)
        runs.append((taken, time.process_time() - cpu))
        return taken

    taken = benchmark.pedantic(timed, rounds=1 if benchmark.disabled else 3, iterations=1)
    assert taken == len(spans) > seconds * GPUS * IN_FLIGHT * 15
    _report(benchmark, f"attribution [{impl}]", taken, min(cpu for _, cpu in runs))


@pytest.mark.benchmark(group="readings + attribution 8 GPUs x 8 spans")
def test_readings_and_attribution(native_impl, benchmark):
    impl = native_impl.IMPLEMENTATION
    """As the agent runs: each window's readings enter the timelines, then attribution."""
    seconds = _seconds(benchmark, 20, 3)
    start, end = BASE_NS, BASE_NS + seconds * S
    readings = {d: gpu_readings(d, start - S, end + S, i) for i, d in enumerate(gpu_ids())}
    spans = gpu_spans(start, end, 2)
    runs = []

    def setup():
        # The first second of readings, so the first window has data before it.
        early = {d: [r for r in rows if r.t_ns < start] for d, rows in readings.items()}
        late = {d: [r for r in rows if r.t_ns >= start] for d, rows in readings.items()}
        return (make_timeline(early), late), {}

    def timed(timeline, late):
        cpu = time.process_time()
        taken = attribute(timeline, spans, start, end, feed=late)
        runs.append((taken, time.process_time() - cpu))
        return taken

    taken = benchmark.pedantic(timed, setup=setup, rounds=1 if benchmark.disabled else 3,
                               iterations=1)
    assert taken == len(spans)
    _report(benchmark, f"readings + attribution [{impl}]", taken, min(c for _, c in runs))


@pytest.mark.benchmark(group="attribution, full reading rings")
def test_attribution_with_full_rings(native_impl, benchmark):
    impl = native_impl.IMPLEMENTATION
    """A long-running agent: every timeline holds its full ring of readings (10 minutes at
    100 Hz by default), and every window's snapshot and reconstruction go over all of it."""
    if benchmark.disabled:
        pytest.skip("only with --benchmark-enable (filling the rings takes a while)")
    from wattspan.agent.timeline import DEFAULT_CAPACITY

    seconds = 10
    start, end = BASE_NS, BASE_NS + seconds * S
    # Counter and power are kept in separate rings: fill each.
    history_ns = DEFAULT_CAPACITY * READ_NS
    readings = {d: gpu_readings(d, end + S - history_ns, end + S, i)
                for i, d in enumerate(gpu_ids())}
    timeline = make_timeline(readings)
    spans = gpu_spans(start, end, 3)
    runs = []

    def setup():
        # Steady state: the timeline's whole-ring baseline (the fallback while the GPUs are
        # never idle) is computed once a minute, not in every run of 10 windows.
        attributor = Attributor(timeline)
        attributor.advance(start, [], start_ns=start - WINDOW_NS)
        return (attributor,), {}

    def timed(attributor):
        cpu = time.process_time()
        taken = attribute(timeline, spans, start, end, attributor=attributor)
        runs.append((taken, time.process_time() - cpu))
        return taken

    taken = benchmark.pedantic(timed, setup=setup, rounds=2, iterations=1)
    assert taken == len(spans)
    _report(benchmark, f"attribution, full rings [{impl}]", taken, min(c for _, c in runs))
