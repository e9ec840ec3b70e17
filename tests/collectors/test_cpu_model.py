"""CPU power model: /proc/stat utilization × per-vCPU coefficients, integrated exactly."""

from __future__ import annotations

import pytest

from wattspan.collectors import REGISTRY
from wattspan.collectors.base import Quality, Unavailable
from wattspan.collectors.cpu_model import (
    COEFFICIENTS_W_PER_VCPU,
    CpuModelCollector,
    ProcStatError,
    detect_cpu_family,
    parse_proc_stat,
    validate_coefficients,
)

GRAVITON_MIN_W = 0.4742621527777777
GRAVITON_MAX_W = 1.6929615162037035
ONE_SECOND_NS = 1_000_000_000
USER_HZ = 100


@pytest.fixture
def model(host, clock):
    """``model("graviton3", **kwargs)`` -> (discovered collector, its HostTree)."""
    made: list[CpuModelCollector] = []

    def make(proc: str, **kwargs) -> tuple[CpuModelCollector, object]:
        tree = host(proc=proc)
        collector = CpuModelCollector(tree.roots, clock, user_hz=USER_HZ, **kwargs)
        made.append(collector)
        found = collector.discover()
        assert not isinstance(found, Unavailable), found
        return collector, tree

    yield make
    for collector in made:
        collector.close()


# --- family detection and discovery


@pytest.mark.parametrize(
    ("fixture", "family", "model_name"),
    [
        ("graviton2", "graviton2", "Neoverse N1"),
        ("graviton3", "graviton3", "Neoverse V1"),
        ("graviton4", "graviton4", "Neoverse V2"),
        ("x86", "x86", "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"),
    ],
)
def test_family_detection(fixtures_dir, fixture, family, model_name):
    cpuinfo = (fixtures_dir / "proc" / fixture / "cpuinfo").read_text()
    assert detect_cpu_family(cpuinfo) == (family, model_name)


def test_other_arm_cores_and_unknown_cpus():
    a72 = "processor\t: 0\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd08\n"
    ampere_one = "processor\t: 0\nCPU implementer\t: 0xc0\nCPU architecture: 8\nCPU part\t: 0xac3\n"
    assert detect_cpu_family(a72) == ("arm64", None)
    assert detect_cpu_family(ampere_one) == ("arm64", None)
    assert detect_cpu_family("processor\t: 0\n") == ("unknown", None)
    assert detect_cpu_family("") == ("unknown", None)


def test_graviton3_device(model):
    collector, _ = model("graviton3")
    [device] = collector.discover()

    assert device.device_id == "cpu:0"
    assert device.kind == "cpu"
    assert device.quality is Quality.ESTIMATED
    assert device.idle_w == 4 * GRAVITON_MIN_W
    assert device.source == (
        "cpu model: /proc/stat utilization × CCF graviton3 coefficients (0.474–1.693 W/vCPU)"
    )
    assert device.details["family"] == "graviton3"
    assert device.details["n_vcpu"] == 4
    assert device.details["min_w_per_vcpu"] == GRAVITON_MIN_W
    assert device.details["max_w_per_vcpu"] == GRAVITON_MAX_W


@pytest.mark.parametrize(
    ("fixture", "n_vcpu", "min_w", "max_w"),
    [
        ("graviton2", 2, GRAVITON_MIN_W, GRAVITON_MAX_W),
        ("graviton4", 8, GRAVITON_MIN_W, GRAVITON_MAX_W),
        ("x86", 4, 0.74, 3.5),
    ],
)
def test_coefficients_per_family(model, fixture, n_vcpu, min_w, max_w):
    collector, _ = model(fixture)
    [device] = collector.discover()

    assert device.details["n_vcpu"] == n_vcpu
    assert (device.details["min_w_per_vcpu"], device.details["max_w_per_vcpu"]) == (min_w, max_w)
    assert device.idle_w == n_vcpu * min_w


def test_missing_cpuinfo_uses_the_fallback(host, clock):
    tree = host(proc="graviton3")
    (tree.proc / "cpuinfo").unlink()
    collector = CpuModelCollector(tree.roots, clock)
    [device] = collector.discover()
    collector.close()

    assert device.details["family"] == "unknown"
    assert device.details["min_w_per_vcpu"] == COEFFICIENTS_W_PER_VCPU["unknown"].min_w_per_vcpu
    assert "CCF AWS fallback" in device.source


def test_missing_proc_stat_is_unavailable(host, clock):
    tree = host()
    result = CpuModelCollector(tree.roots, clock).discover()

    assert isinstance(result, Unavailable)
    assert result.collector == "cpu_model"
    assert result.reason.startswith(f"cannot open {tree.proc / 'stat'}")


def test_malformed_proc_stat_is_unavailable_with_the_reason(host, clock):
    tree = host(proc="graviton3")
    (tree.proc / "stat").write_text("cpu  12 34 ab 78\ncpu0 12 34 56 78\n")
    result = CpuModelCollector(tree.roots, clock).discover()

    assert isinstance(result, Unavailable)
    assert result.reason == (
        f"{tree.proc / 'stat'}: aggregate 'cpu' line has a non-numeric field: 12 34 ab 78"
    )


# --- readings


def test_graviton3_at_exactly_half_utilization(model, clock):
    collector, tree = model("graviton3")

    [first] = collector.read()
    assert (first.energy_j, first.power_w, first.error) == (0.0, None, None)
    assert first.t_ns == clock.now_ns

    # 1 s on 4 vCPUs = 400 ticks: 200 busy (user, system, softirq, steal), 200 idle.
    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=120, system=60, softirq=15, steal=5, idle=190, iowait=10)
    [second] = collector.read()

    expected_power_w = 4 * (GRAVITON_MIN_W + 0.5 * (GRAVITON_MAX_W - GRAVITON_MIN_W))
    assert second.power_w == expected_power_w
    # E = n·min·dt + (max − min)·busy_s, busy_s = 200 ticks / 100 Hz = 2 CPU-seconds
    assert second.energy_j == 4 * GRAVITON_MIN_W * 1.0 + (GRAVITON_MAX_W - GRAVITON_MIN_W) * 2.0
    assert second.energy_j == pytest.approx(expected_power_w * 1.0, rel=1e-15)
    assert second.utilization_pct == 50.0
    assert second.t_ns == clock.now_ns
    assert second.error is None


def test_energy_is_cumulative_and_independent_of_how_intervals_are_cut(model, clock):
    fine, fine_tree = model("graviton3")
    coarse, coarse_tree = model("graviton3")
    for collector in (fine, coarse):
        collector.read()

    steps = [(250_000_000, 30, 70), (500_000_000, 100, 100), (250_000_000, 90, 10)]
    for interval_ns, user, idle in steps:
        clock.advance(interval_ns)
        fine_tree.advance_stat(user=user, idle=idle)
        [last_fine] = fine.read()
    coarse_tree.advance_stat(user=220, idle=180)
    [whole] = coarse.read()

    # 1 s in all, 220 busy ticks = 2.2 CPU-seconds, however the reads fell.
    expected_j = 4 * GRAVITON_MIN_W * 1.0 + (GRAVITON_MAX_W - GRAVITON_MIN_W) * 2.2
    assert whole.energy_j == pytest.approx(expected_j, rel=1e-15)
    assert last_fine.energy_j == pytest.approx(expected_j, rel=1e-15)


def test_guest_time_is_not_counted_twice(model, clock):
    collector, tree = model("graviton3")
    collector.read()

    # guest time is already inside user; the guest fields must not add to busy.
    clock.advance(ONE_SECOND_NS)
    stat = tree.proc / "stat"
    lines = stat.read_text().splitlines(keepends=True)
    fields = lines[0].split()
    values = [int(v) for v in fields[1:]]
    values[0] += 200  # user
    values[3] += 200  # idle
    values[8] += 150  # guest
    values[9] += 50  # guest_nice
    lines[0] = "cpu  " + " ".join(map(str, values)) + "\n"
    stat.write_text("".join(lines))

    [reading] = collector.read()
    assert reading.utilization_pct == 50.0


def test_counters_going_backwards_skip_the_interval(model, clock):
    collector, tree = model("graviton3")
    [first] = collector.read()

    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=-5000, idle=400)
    [backwards] = collector.read()
    assert backwards.energy_j is None and backwards.power_w is None
    assert "went backwards by 5000 ticks" in backwards.error

    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=400)
    [after] = collector.read()
    assert after.error is None
    assert after.energy_j == 4 * GRAVITON_MIN_W * 1.0 + (GRAVITON_MAX_W - GRAVITON_MIN_W) * 4.0
    assert after.utilization_pct == 100.0


def test_counters_jumping_forward_skip_the_interval(model, clock):
    collector, tree = model("graviton3")
    collector.read()

    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=10_000)  # 100 CPU-seconds in 1 s on 4 vCPUs
    [jump] = collector.read()
    assert jump.energy_j is None
    assert "interval skipped" in jump.error


def test_tick_quantization_slightly_above_full_load_is_kept(model, clock):
    collector, tree = model("graviton3")
    collector.read()

    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=404)  # one tick per vCPU more than wall time allows
    [reading] = collector.read()
    assert reading.error is None
    assert reading.utilization_pct == 100.0
    assert reading.power_w == 4 * (GRAVITON_MIN_W + 1.01 * (GRAVITON_MAX_W - GRAVITON_MIN_W))


def test_no_time_passed_keeps_the_interval_open(model, clock):
    collector, tree = model("graviton3")
    collector.read()

    tree.advance_stat(user=100)
    [same_instant] = collector.read()
    assert (same_instant.energy_j, same_instant.power_w) == (0.0, None)

    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=100)
    [later] = collector.read()
    assert later.utilization_pct == 50.0


def test_unreadable_stat_at_runtime_is_an_error_reading(model, clock):
    collector, tree = model("graviton3")
    collector.read()

    (tree.proc / "stat").write_text("intr 0\n")
    [reading] = collector.read()
    assert reading.error == f"{tree.proc / 'stat'}: no aggregate 'cpu' line"
    assert reading.energy_j is None


def test_override_coefficients(model, clock):
    collector, tree = model("graviton3", coefficients={"min_w_per_vcpu": 1, "max_w_per_vcpu": 3})
    [device] = collector.discover()
    assert device.idle_w == 4.0
    assert device.source == (
        "cpu model: /proc/stat utilization × configured coefficients (1.000–3.000 W/vCPU)"
    )
    assert device.details["family"] == "graviton3"

    collector.read()
    clock.advance(ONE_SECOND_NS)
    tree.advance_stat(user=200, idle=200)
    [reading] = collector.read()
    assert reading.power_w == 8.0
    assert reading.energy_j == 8.0


def test_read_after_close_returns_nothing(model):
    collector, _ = model("graviton3")
    collector.close()
    assert collector.read() == []


# --- pure helpers


def test_parse_proc_stat_fixture(fixtures_dir):
    times = parse_proc_stat((fixtures_dir / "proc" / "graviton3" / "stat").read_text())
    assert times.n_vcpu == 4
    # cpu  7848896 1358 1963379 295934503 21977 0 16894 1582 0 0
    assert times.busy_ticks == 7848896 + 1358 + 1963379 + 0 + 16894 + 1582
    assert times.idle_ticks == 295934503 + 21977


def test_parse_proc_stat_old_kernel_with_four_fields():
    times = parse_proc_stat("cpu  10 20 30 40\ncpu0 10 20 30 40\n")
    assert (times.busy_ticks, times.idle_ticks, times.n_vcpu) == (60, 40, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no aggregate 'cpu' line"),
        ("cpu0 1 2 3 4\n", "no aggregate 'cpu' line"),
        ("cpu  1 2 3\ncpu0 1 2 3\n", "has 3 fields, expected at least 4"),
        ("cpu  1 2 -3 4\ncpu0 1 2 3 4\n", "non-numeric field"),
        ("cpu  1 2 3 4\nintr 5\n", "no per-CPU 'cpuN' lines"),
    ],
)
def test_malformed_proc_stat(text, message):
    with pytest.raises(ProcStatError, match=message):
        parse_proc_stat(text)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_w_per_vcpu": 2.0, "max_w_per_vcpu": 1.0}, r"min_w_per_vcpu \(2.0\) must not exceed"),
        ({"min_w_per_vcpu": -0.1, "max_w_per_vcpu": 1.0}, "min_w_per_vcpu must be a finite number"),
        ({"min_w_per_vcpu": 0.1, "max_w_per_vcpu": float("inf")}, "max_w_per_vcpu must be"),
        ({"min_w_per_vcpu": "0.1", "max_w_per_vcpu": 1.0}, "min_w_per_vcpu must be"),
        ({"min_w_per_vcpu": True, "max_w_per_vcpu": 1.0}, "min_w_per_vcpu must be"),
        ({"max_w_per_vcpu": 1.0}, "must set both .* missing min_w_per_vcpu"),
        ({"min_w": 0.1, "max_w_per_vcpu": 1.0}, r"unknown CPU model coefficient\(s\) \['min_w'\]"),
        ([0.1, 1.0], "must be a mapping"),
    ],
)
def test_invalid_coefficients_are_rejected_clearly(values, message):
    with pytest.raises(ValueError, match=message):
        validate_coefficients(values)
    with pytest.raises(ValueError, match=message):
        CpuModelCollector(coefficients=values)


def test_equal_min_and_max_is_allowed():
    assert validate_coefficients({"min_w_per_vcpu": 2, "max_w_per_vcpu": 2}).max_w_per_vcpu == 2.0


def test_registered_as_fallback_for_rapl():
    spec = REGISTRY["cpu_model"]
    assert spec.factory is CpuModelCollector
    assert spec.fallback_for == ("rapl",)
