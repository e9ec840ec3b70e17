"""Benchmarks of the reading ring and the energy kernel, for each implementation.

Under the project's default ``--benchmark-disable`` each runs once, as a test; for numbers:

    python -m pytest benchmarks/bench_series.py --benchmark-enable --benchmark-group-by=group
"""

from __future__ import annotations

import math
from array import array

import pytest

N_READINGS = 10_000
N_QUERIES = 1_000
PERIOD_NS = 10_000_000  # a read every 10 ms
BASE_NS = 200 * 86_400 * 10**9  # CLOCK_MONOTONIC after 200 days: past 2**53 ns


def _readings(n):
    """A GPU-like device: a counter that updates every 100 ms, read every 10 ms, with power."""
    t = array("q", (BASE_NS + i * PERIOD_NS for i in range(n)))
    p = array("d", (250.0 + 150.0 * math.sin(i / 37.0) for i in range(n)))
    e = array("d")
    counter = 0.0
    for i in range(n):
        if i % 10 == 0:
            counter += 0.1 * p[i] * 10 * PERIOD_NS * 1e-9
        e.append(counter)
    return t, e, p


@pytest.mark.benchmark(group="append 10k")
def test_append_10k(native_module, benchmark):
    t, e, p = _readings(N_READINGS)
    rows = list(zip(t, e, p, strict=True))
    ring = native_module.ReadingRing(N_READINGS)

    def append_all():
        append = ring.append
        for row in rows:
            append(*row)

    benchmark(append_all)
    assert len(ring) == N_READINGS
    assert list(ring.snapshot()[0]) == list(t)


@pytest.mark.benchmark(group="energy_at 10k x 1k")
def test_energy_at_10k_readings_1k_queries(native_module, benchmark):
    ring = native_module.ReadingRing(N_READINGS)
    for row in zip(*_readings(N_READINGS), strict=True):
        ring.append(*row)
    t, e, p = ring.snapshot()
    span = t[-1] - t[0]
    # Spread over the data and a little past both ends (clamped queries too).
    query = array("q", (t[0] - span // 20 + (i * span * 11) // (10 * N_QUERIES)
                        for i in range(N_QUERIES)))
    values, methods, lo, hi = benchmark(native_module.energy_at, t, e, p, query)
    assert len(values) == len(methods) == N_QUERIES
    assert (lo, hi) == (t[0], t[-1])
    assert native_module.METHOD_CLAMPED in methods and native_module.METHOD_COUNTER in methods
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(values, values[1:], strict=False))
