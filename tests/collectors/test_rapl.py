"""RAPL powercap collector against fixture sysfs trees."""

from __future__ import annotations

import errno
import os

import pytest

from wattspan.collectors import REGISTRY
from wattspan.collectors import rapl as rapl_module
from wattspan.collectors.base import DeviceInfo, Quality, Unavailable
from wattspan.collectors.rapl import RaplCollector, parse_uj, zone_role

PKG_RANGE_UJ = 262143328850
DRAM_RANGE_UJ = 65532610987


@pytest.fixture
def collectors():
    """Collectors made by a test, closed at teardown even if it fails."""
    made: list[RaplCollector] = []

    def make(*args, **kwargs) -> RaplCollector:
        collector = RaplCollector(*args, **kwargs)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def _devices(collector: RaplCollector) -> list[DeviceInfo]:
    found = collector.discover()
    assert not isinstance(found, Unavailable), found
    return found


def _energy_by_id(readings) -> dict[str, float | None]:
    return {r.device_id: r.energy_j for r in readings}


def _deny_energy_uj(path: str) -> int:
    """Opener behaving as the kernel does for non-root since 5.10 (energy_uj mode 0400).

    The tests run as root, for whom chmod changes nothing, so the EACCES is injected here.
    """
    if path.endswith("energy_uj"):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    return os.open(path, os.O_RDONLY)


# --- discovery


def test_two_socket_xeon_devices(host, clock, collectors):
    tree = host(sys="rapl-intel")
    devices = _devices(collectors(tree.roots, clock))

    assert [d.device_id for d in devices] == [
        "cpu:0",
        "cpu:0:core",
        "dram:0",
        "cpu:1",
        "cpu:1:core",
        "dram:1",
    ]
    by_id = {d.device_id: d for d in devices}
    assert all(d.quality is Quality.MEASURED for d in devices)
    assert by_id["cpu:1"].kind == "cpu"
    assert by_id["cpu:1"].source == "rapl powercap package-1"
    assert by_id["cpu:1"].part_of is None
    assert by_id["cpu:1:core"].part_of == "cpu:1"
    assert by_id["dram:1"].kind == "dram"
    assert by_id["dram:1"].part_of is None
    assert by_id["dram:1"].source == "rapl powercap package-1 dram"
    assert by_id["cpu:0"].details["max_energy_range_uj"] == PKG_RANGE_UJ
    assert by_id["dram:0"].details["max_energy_range_uj"] == DRAM_RANGE_UJ
    assert by_id["dram:0"].details["zone"] == "intel-rapl:0:1"


def test_real_symlinked_layout_finds_each_zone_once(host, clock, collectors):
    tree = host(sys="rapl-intel")
    tree.relayout_as_sysfs()
    assert (tree.powercap / "intel-rapl:1:1").is_symlink()

    devices = _devices(collectors(tree.roots, clock))

    assert sorted(d.device_id for d in devices) == sorted(
        ["cpu:0", "cpu:0:core", "dram:0", "cpu:1", "cpu:1:core", "dram:1"]
    )


def test_client_part_with_psys_and_mmio_mirror(host, clock, collectors):
    tree = host(sys="rapl-client")
    devices = _devices(collectors(tree.roots, clock))

    by_id = {d.device_id: d for d in devices}
    assert list(by_id) == ["cpu:0", "cpu:0:core", "cpu:0:uncore", "psys:0"]
    assert by_id["cpu:0:uncore"].part_of == "cpu:0"
    assert by_id["psys:0"].kind == "platform"
    assert by_id["psys:0"].source == "rapl powercap psys"
    # intel-rapl-mmio:0 is package-0 again; reading it too would count the package twice.
    assert all("mmio" not in d.details["zone"] for d in devices)


def test_zones_are_identified_by_name_not_index(host, clock, collectors):
    tree = host()
    tree.powercap.mkdir(parents=True)
    tree.add_zone("intel-rapl:0", "package-1")
    tree.add_zone("intel-rapl:0:0", "dram", max_energy_range_uj=DRAM_RANGE_UJ)
    tree.add_zone("intel-rapl:0:1", "core")
    tree.add_zone("intel-rapl:1", "package-0")

    devices = _devices(collectors(tree.roots, clock))

    assert {d.device_id: d.details["zone"] for d in devices} == {
        "cpu:1": "intel-rapl:0",
        "dram:1": "intel-rapl:0:0",
        "cpu:1:core": "intel-rapl:0:1",
        "cpu:0": "intel-rapl:1",
    }


def test_no_powercap_tree_is_unavailable(host, clock, collectors):
    tree = host()
    result = collectors(tree.roots, clock).discover()

    assert isinstance(result, Unavailable)
    assert result.collector == "rapl"
    assert result.reason == (
        f"no RAPL powercap zones under {tree.powercap} "
        "(virtual machines and non-x86 CPUs expose none)"
    )


def test_control_type_without_zones_is_unavailable(host, clock, collectors):
    tree = host()
    (tree.powercap / "intel-rapl").mkdir(parents=True)
    (tree.powercap / "intel-rapl" / "enabled").write_text("0\n")

    result = collectors(tree.roots, clock).discover()

    assert isinstance(result, Unavailable)
    assert result.reason.startswith("no RAPL powercap zones under")


def test_root_only_energy_uj_is_unavailable_with_the_reason(host, clock, collectors):
    tree = host(sys="rapl-intel")
    result = collectors(tree.roots, clock, opener=_deny_energy_uj).discover()

    assert isinstance(result, Unavailable)
    assert result.collector == "rapl"
    first = tree.powercap / "intel-rapl:0" / "energy_uj"
    assert result.reason.startswith(f"{first} (and 5 other zones): energy_uj is readable only")
    assert "root (Linux >= 5.10, CVE-2020-8694)" in result.reason
    assert "udev or systemd-tmpfiles rule" in result.reason
    assert "cpu_model" in result.reason


def test_readable_zones_are_kept_when_others_are_denied(host, clock, collectors):
    tree = host(sys="rapl-intel")
    denied = str(tree.powercap / "intel-rapl:1" / "energy_uj")

    def opener(path: str) -> int:
        if path == denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return os.open(path, os.O_RDONLY)

    collector = collectors(tree.roots, clock, opener=opener)
    devices = _devices(collector)

    assert "cpu:1" not in {d.device_id for d in devices}
    assert "cpu:1:core" in {d.device_id for d in devices}
    assert any(denied in note and "CVE-2020-8694" in note for note in collector.skipped)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads 0400 files regardless of mode")
def test_root_only_mode_for_real(host, clock, collectors):
    tree = host(sys="rapl-wrap")
    for zone in ("intel-rapl:0", "intel-rapl:0:0"):
        (tree.zone_dir(zone) / "energy_uj").chmod(0o000)

    result = collectors(tree.roots, clock).discover()

    assert isinstance(result, Unavailable)
    assert "CVE-2020-8694" in result.reason


def test_zone_without_max_range_is_skipped(host, clock, collectors):
    tree = host()
    tree.powercap.mkdir(parents=True)
    tree.add_zone("intel-rapl:0", "package-0", max_energy_range_uj=None)

    collector = collectors(tree.roots, clock)
    result = collector.discover()

    assert isinstance(result, Unavailable)
    assert result.reason.startswith(f"no usable RAPL zones under {tree.powercap}")
    assert "max_energy_range_uj" in result.reason


# --- reading


def test_first_read_is_zero_then_deltas_in_joules(host, clock, collectors):
    tree = host(sys="rapl-intel")
    collector = collectors(tree.roots, clock)
    _devices(collector)

    first = collector.read()
    assert _energy_by_id(first) == dict.fromkeys(
        ["cpu:0", "cpu:0:core", "dram:0", "cpu:1", "cpu:1:core", "dram:1"], 0.0
    )
    assert {r.t_ns for r in first} == {clock.now_ns}

    clock.advance(100_000_000)
    tree.set_energy_uj("intel-rapl:1", 123456789012 + 20_000_000)
    tree.set_energy_uj("intel-rapl:1:1", 23456789012 + 1_500_000)
    second = collector.read()

    energy = _energy_by_id(second)
    assert energy["cpu:1"] == 20.0
    assert energy["dram:1"] == 1.5
    assert energy["cpu:0"] == 0.0
    assert all(r.error is None and r.power_w is None for r in second)
    assert {r.t_ns for r in second} == {clock.now_ns}


def test_exact_energy_across_wraparound(host, clock, collectors):
    tree = host(sys="rapl-wrap")
    collector = collectors(tree.roots, clock)
    _devices(collector)
    assert _energy_by_id(collector.read()) == {"cpu:0": 0.0, "dram:0": 0.0}

    # package: 262143000000 -> 500000 µJ: (262143328850 - 262143000000) + 500000 = 828850 µJ
    # dram:    65532000000 -> 1000 µJ:    (65532610987 - 65532000000) + 1000 = 611987 µJ
    clock.advance(1_000_000_000)
    tree.set_energy_uj("intel-rapl:0", 500_000)
    tree.set_energy_uj("intel-rapl:0:0", 1_000)
    assert _energy_by_id(collector.read()) == {"cpu:0": 0.828850, "dram:0": 0.611987}

    clock.advance(1_000_000_000)
    tree.set_energy_uj("intel-rapl:0", 700_000)
    tree.set_energy_uj("intel-rapl:0:0", 1_000)
    assert _energy_by_id(collector.read()) == {"cpu:0": 1.028850, "dram:0": 0.611987}


def test_unparseable_counter_gives_an_error_reading_not_an_exception(host, clock, collectors):
    tree = host(sys="rapl-wrap")
    collector = collectors(tree.roots, clock)
    _devices(collector)
    collector.read()

    tree.set_energy_uj("intel-rapl:0", "")
    tree.set_energy_uj("intel-rapl:0:0", 65532000000 + 2_000_000)
    readings = {r.device_id: r for r in collector.read()}

    assert readings["cpu:0"].energy_j is None
    assert "energy_uj" in readings["cpu:0"].error
    assert readings["cpu:0"].t_ns == clock.now_ns
    assert readings["dram:0"].energy_j == 2.0

    tree.set_energy_uj("intel-rapl:0", 262143000000 + 3_000_000)
    assert _energy_by_id(collector.read())["cpu:0"] == 3.0


def test_os_error_reopens_the_zone_on_the_next_read(host, clock, collectors, monkeypatch):
    tree = host(sys="rapl-wrap")
    opened: list[str] = []

    def opener(path: str) -> int:
        opened.append(path)
        return os.open(path, os.O_RDONLY)

    collector = collectors(tree.roots, clock, opener=opener)
    _devices(collector)
    collector.read()
    assert len(opened) == 2

    real_read_counter = rapl_module._read_counter
    failures = iter([OSError(errno.ENODEV, "No such device")])

    def flaky_read_counter(fd: int) -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_read_counter(fd)

    monkeypatch.setattr(rapl_module, "_read_counter", flaky_read_counter)
    tree.set_energy_uj("intel-rapl:0", 262143000000 + 1_000_000)
    failed = {r.device_id: r for r in collector.read()}
    assert "No such device" in failed["cpu:0"].error
    assert failed["dram:0"].error is None

    readings = _energy_by_id(collector.read())
    assert readings["cpu:0"] == 1.0
    assert opened[2:] == [str(tree.zone_dir("intel-rapl:0") / "energy_uj")]


def test_close_closes_the_fds(host, clock, collectors):
    tree = host(sys="rapl-intel")
    fds: list[int] = []

    def opener(path: str) -> int:
        fds.append(os.open(path, os.O_RDONLY))
        return fds[-1]

    collector = collectors(tree.roots, clock, opener=opener)
    _devices(collector)
    assert len(fds) == 6
    collector.close()

    for fd in fds:
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF
    assert collector.read() == []


def test_rediscovery_does_not_leak_fds(host, clock, collectors):
    tree = host(sys="rapl-wrap")
    fds: list[int] = []

    def opener(path: str) -> int:
        fds.append(os.open(path, os.O_RDONLY))
        return fds[-1]

    collector = collectors(tree.roots, clock, opener=opener)
    _devices(collector)
    first_fds = list(fds)
    _devices(collector)

    for fd in first_fds:
        if fd not in fds[len(first_fds) :]:
            with pytest.raises(OSError):
                os.fstat(fd)
    assert len(collector.read()) == 2


# --- pure helpers and registration


@pytest.mark.parametrize(
    ("raw", "expected"), [(b"262143328850\n", 262143328850), ("0\n", 0), (b" 42 ", 42)]
)
def test_parse_uj(raw, expected):
    assert parse_uj(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"\n", b"-5\n", b"12ab\n", "²\n"])
def test_parse_uj_rejects_garbage(raw):
    with pytest.raises(ValueError, match="expected a non-negative integer"):
        parse_uj(raw)


def test_zone_roles():
    assert zone_role("package-0-die-1", None).device_id == "cpu:0:die1"
    assert zone_role("dram", "package-0-die-1").device_id == "dram:0:die1"
    assert zone_role("core", None) is None
    assert zone_role("gpu", "package-0") is None
    assert zone_role("dram", "psys") is None


def test_registered_by_name():
    assert REGISTRY["rapl"].factory is RaplCollector
    assert RaplCollector.name == "rapl"
