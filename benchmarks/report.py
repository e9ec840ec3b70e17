"""Side-by-side ratios, measured in one run: ``python benchmarks/report.py``.

Absolute times on a shared machine are noise; ratios between implementations measured
back to back are not. Prints the compiled kernel against its pure-Python twin, and the
embedded sampler's own CPU use against the fake NVML library with 8 GPUs.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import tempfile
import time
import timeit
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import wattspan.native as native  # noqa: E402


def _readings(n, period_ns=5_000_000):
    t = array("q", (i * period_ns for i in range(n)))
    p = array("d", (250.0 + 150.0 * math.sin(i / 37.0) for i in range(n)))
    e, counter = array("d"), 0.0
    for i in range(n):
        if i % 20 == 0:
            counter += p[i] * 0.1
        e.append(counter)
    return t, e, p


def _best(stmt, number, repeat=5):
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def kernel_ratios():
    t, e, p = _readings(60_000)
    queries = array("q", range(0, 60_000 * 5_000_000, 60_000 * 5_000_000 // 1000))
    rows = []
    for name in native.available():
        mod = native._load(name)

        def append(mod=mod):
            ring = mod.ReadingRing(10_000)
            for i in range(10_000):
                ring.append(t[i], e[i], p[i])

        rows.append((name,
                     _best(append, 3),
                     _best(lambda mod=mod: mod.energy_at(t, e, p, queries), 2),
                     _best(lambda mod=mod: mod.breakpoints_ns(t, e, p, 0, t[-1]), 2)))
    print("kernel (60,000 readings, 1,000 queries)")
    print(f"  {'impl':8} {'append 10k':>12} {'energy_at':>12} {'breakpoints':>12}")
    for name, a, q, b in rows:
        print(f"  {name:8} {a * 1e3:10.2f}ms {q * 1e3:10.2f}ms {b * 1e3:10.2f}ms")
    if len(rows) == 2:
        (_, a0, q0, b0), (_, a1, q1, b1) = rows
        print(f"  python/cython ratio: append {a1 / a0:.1f}x, energy_at {q1 / q0:.1f}x, "
              f"breakpoints {b1 / b0:.1f}x")


def sampler_cpu(seconds=3.0, gpus=8):
    from fakes.nvml_scenario import SCENARIO_ENV, Gpu, Scenario, build_fake_nvml

    from wattspan.agent.discovery import discover
    from wattspan.agent.sampler import Sampler
    from wattspan.agent.timeline import Timeline
    from wattspan.config import load

    tmp = Path(tempfile.mkdtemp())
    lib = build_fake_nvml(tmp)
    sc = Scenario(gpus=[Gpu.h100(uuid=f"GPU-{i}") for i in range(gpus)])
    os.environ[SCENARIO_ENV] = str(sc.write(tmp / "scenario.txt"))
    os.environ["WATTSPAN_NVML_LIBRARY"] = str(lib)
    print(f"embedded sampler, {gpus} fake GPUs + CPU model, {seconds:.0f} s each")
    for interval_ms in (10.0, 5.0):
        settings = load(overrides={"sampling.interval_ms": interval_ms})
        found = discover(settings)
        timeline = Timeline()
        for info in found.devices:
            timeline.add_device(info)
        sampler = Sampler(found.collectors, timeline, interval_ms)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.monotonic()
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
        wall = time.monotonic() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        ticks = sampler.stats.ticks
        print(f"  {interval_ms:4.0f} ms: {ticks / wall:6.1f} ticks/s, CPU {100 * cpu / wall:5.2f}% "
              f"of one core, {1e6 * cpu / max(ticks, 1):6.1f} us/tick, "
              f"missed {sampler.stats.missed_deadlines}")
        found.close()


if __name__ == "__main__":
    print(f"python {sys.version.split()[0]}, implementations: {', '.join(native.available())}")
    kernel_ratios()
    sampler_cpu()
