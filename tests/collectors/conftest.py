"""Helpers for collector tests: a fake clock and writable copies of fixture /proc and /sys trees.

Trees are copied into tmp_path so tests can change counters between reads. Files are rewritten
in place (same inode), so a collector holding an open fd sees the new value, as with sysfs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wattspan.collectors.paths import Roots

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: Field positions on the aggregate ``cpu`` line of /proc/stat.
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class FakeClock:
    """CLOCK_MONOTONIC stand-in: returns ``now_ns`` until advanced."""

    def __init__(self, start_ns: int = 5_000_000_000) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += ns


class HostTree:
    """A fake host: ``<base>/proc`` and ``<base>/sys``, edited by the test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc = base / "proc"
        self.sys = base / "sys"
        self.proc.mkdir(parents=True, exist_ok=True)
        self.sys.mkdir(parents=True, exist_ok=True)

    @property
    def roots(self) -> Roots:
        return Roots(procfs=self.proc, sysfs=self.sys)

    @property
    def powercap(self) -> Path:
        return self.sys / "class" / "powercap"

    # --- RAPL

    def zone_dir(self, zone_id: str) -> Path:
        """The directory of zone ``intel-rapl:N[:M]``, flat or nested, symlinked or not."""
        matches = sorted(self.sys.rglob(zone_id), key=lambda p: len(p.parts))
        if not matches:
            raise KeyError(f"no zone {zone_id} under {self.sys}")
        return matches[0]

    def set_energy_uj(self, zone_id: str, energy_uj: int | str) -> None:
        (self.zone_dir(zone_id) / "energy_uj").write_text(f"{energy_uj}\n")

    def add_zone(
        self,
        zone_id: str,
        name: str,
        energy_uj: int = 0,
        max_energy_range_uj: int | None = 262143328850,
    ) -> Path:
        """Create a zone (a sub-zone goes inside its parent, as under /sys/devices)."""
        parent = self.powercap
        if zone_id.count(":") == 2:
            parent = self.zone_dir(zone_id.rpartition(":")[0])
        path = parent / zone_id
        path.mkdir(parents=True)
        (path / "name").write_text(f"{name}\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        if max_energy_range_uj is not None:
            (path / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
        return path

    def relayout_as_sysfs(self) -> None:
        """Turn nested fixture zones into the real layout.

        Zones move to ``devices/virtual/powercap/intel-rapl/...`` and ``class/powercap`` gets
        one relative symlink per zone, sub-zones included, as the kernel creates them.
        """
        control = self.sys / "devices" / "virtual" / "powercap" / "intel-rapl"
        control.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.powercap), str(control))
        self.powercap.mkdir(parents=True)
        for zone in sorted(control.rglob("intel-rapl:*")):
            target = Path("..", "..", zone.relative_to(self.sys))
            (self.powercap / zone.name).symlink_to(target, target_is_directory=True)

    # --- /proc/stat

    def advance_stat(self, **ticks: int) -> None:
        """Add ticks to fields of the aggregate ``cpu`` line (``user=150, idle=200``)."""
        unknown = set(ticks) - set(STAT_FIELDS)
        if unknown:
            raise KeyError(f"unknown /proc/stat fields {sorted(unknown)}")
        stat = self.proc / "stat"
        lines = stat.read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.startswith("cpu "):
                values = [int(v) for v in line.split()[1:]]
                for field, delta in ticks.items():
                    values[STAT_FIELDS.index(field)] += delta
                lines[i] = "cpu  " + " ".join(map(str, values)) + "\n"
                break
        stat.write_text("".join(lines))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(tmp_path):
    """``host(sys="rapl-intel", proc="graviton3")`` -> HostTree with copies of those fixtures."""

    count = 0

    def make(sys: str | None = None, proc: str | None = None) -> HostTree:
        nonlocal count
        count += 1
        tree = HostTree(tmp_path / f"host{count}")
        if sys is not None:
            shutil.copytree(FIXTURES / "sys" / sys, tree.sys, dirs_exist_ok=True)
        if proc is not None:
            shutil.copytree(FIXTURES / "proc" / proc, tree.proc, dirs_exist_ok=True)
        return tree

    return make
