"""CPU package, core and DRAM energy from Linux powercap RAPL (``/sys/class/powercap``).

Each zone's ``energy_uj`` is the 32-bit hardware counter scaled to µJ. The kernel does not
extend it, so it wraps at ``max_energy_range_uj`` (262143328850 µJ on typical Xeons: about
22 min at 200 W). ``CumulativeCounter`` unwraps it, which is right only if every zone is read
at least twice per wrap period (one wrap between reads is detected, two are not).

Zones are identified by their ``name`` file, never by index: ``intel-rapl:0:0`` is ``core`` on
one machine and ``dram`` on another. The zone id's structure (``intel-rapl:P:M``) is used only
to find a sub-zone's parent. ``intel-rapl-mmio:*`` zones are ignored: they mirror the package
domain through MMIO registers for power limiting, so reading them too would count the package
twice.

Since Linux 5.10 (CVE-2020-8694, "PLATYPUS") ``energy_uj`` is readable only by root, while the
other zone files stay world-readable; discovery uses that to tell "no RAPL here" from "not
allowed to read it", and says which.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wattspan.collectors import register
from wattspan.collectors.base import DeviceInfo, Quality, Reading, Unavailable
from wattspan.collectors.counters import CumulativeCounter
from wattspan.collectors.paths import Roots

_ZONE_ID_RE = re.compile(r"intel-rapl:(\d+)(?::(\d+))?")
_PACKAGE_NAME_RE = re.compile(r"package-(\d+)(?:-die-(\d+))?")
#: An unsigned 64-bit decimal and its newline fit comfortably.
_COUNTER_READ_BYTES = 32
_UJ_PER_J = 1_000_000

PERMISSION_HINT = (
    "energy_uj is readable only by root (Linux >= 5.10, CVE-2020-8694); run the agent as root, "
    "grant read access with a udev or systemd-tmpfiles rule (e.g. the tmpfiles.d line "
    "'z /sys/class/powercap/intel-rapl:*/energy_uj 0444 - - -'), or rely on the estimated "
    "cpu_model collector"
)


def _permission_reason(denied_paths: list[str]) -> str:
    others = len(denied_paths) - 1
    more = f" (and {others} other zone{'s' if others > 1 else ''})" if others else ""
    return f"{denied_paths[0]}{more}: {PERMISSION_HINT}"


def _open_readonly(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


# --- parsing (pure)


def parse_uj(raw: bytes | str) -> int:
    """Parse a powercap counter file (``energy_uj``, ``max_energy_range_uj``): one decimal."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a non-negative integer, got {raw!r}")
    return int(text)


def package_label(zone_name: str) -> str | None:
    """``package-1`` -> ``"1"``, ``package-0-die-1`` -> ``"0:die1"``; None for other names."""
    match = _PACKAGE_NAME_RE.fullmatch(zone_name)
    if match is None:
        return None
    package, die = match.groups()
    return package if die is None else f"{package}:die{die}"


@dataclass(frozen=True)
class ZoneRole:
    """What a zone measures, as a wattspan device."""

    device_id: str
    kind: str
    label: str
    part_of: str | None = None


def zone_role(name: str, parent_name: str | None) -> ZoneRole | None:
    """Map a zone's ``name`` (and its parent zone's, for sub-zones) to a device; None: unknown.

    ``core``/``uncore`` energy is inside the package's, hence ``part_of``; DRAM is a separate
    RAPL domain, so it is not.
    """
    if parent_name is None:
        package = package_label(name)
        if package is not None:
            return ZoneRole(f"cpu:{package}", "cpu", f"CPU package {package}")
        if name == "psys":
            return ZoneRole("psys:0", "platform", "platform (psys)")
        return None
    package = package_label(parent_name)
    if package is None:
        return None
    if name in ("core", "uncore"):
        return ZoneRole(
            f"cpu:{package}:{name}", "cpu", f"CPU {name} (package {package})", f"cpu:{package}"
        )
    if name == "dram":
        return ZoneRole(f"dram:{package}", "dram", f"DRAM (package {package})")
    return None


def _zone_sort_key(zone_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in zone_id.split(":")[1:])


# --- reading (touches the filesystem)


def _read_counter(fd: int) -> int:
    return parse_uj(os.pread(fd, _COUNTER_READ_BYTES, 0))


def _find_zone_dirs(powercap: Path) -> dict[str, Path]:
    """Zone id -> directory, from the flat class listing and from nesting.

    Real sysfs lists every zone (sub-zones too) as a symlink in ``class/powercap`` and nests
    sub-zones inside their parent; fixtures may do either. Only zone-named entries are
    followed, so the ``subsystem``/``device`` links cannot loop.
    """
    found: dict[str, Path] = {}
    pending = [powercap]
    while pending:
        directory = pending.pop()
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            if _ZONE_ID_RE.fullmatch(entry.name) and entry.name not in found and entry.is_dir():
                found[entry.name] = entry
                pending.append(entry)
    return dict(sorted(found.items(), key=lambda item: _zone_sort_key(item[0])))


@dataclass(frozen=True)
class _Zone:
    zone_id: str
    path: Path
    name: str
    source: str
    role: ZoneRole
    max_energy_range_uj: int


class _OpenZone:
    """A zone being read: its fd (None after a failure, reopened on the next read)."""

    __slots__ = ("device_id", "energy_path", "fd", "counter")

    def __init__(self, device_id: str, energy_path: str, fd: int, max_energy_range_uj: int):
        self.device_id = device_id
        self.energy_path = energy_path
        self.fd: int | None = fd
        self.counter = CumulativeCounter(max_range=max_energy_range_uj)


@register("rapl")
class RaplCollector:
    """RAPL zones from powercap sysfs, as cumulative ``energy_j`` (quality ``measured``).

    Devices: ``cpu:<N>`` per package, ``cpu:<N>:core`` / ``cpu:<N>:uncore`` (``part_of`` the
    package), ``dram:<N>``, ``psys:0`` (the whole platform, which overlaps the others).
    ``opener`` opens an ``energy_uj`` path and returns an fd; tests inject one to simulate the
    root-only permission, which a root test process cannot otherwise see.
    """

    name = "rapl"
    min_period_ms = 0.0

    def __init__(
        self,
        roots: Roots | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        *,
        opener: Callable[[str], int] = _open_readonly,
    ) -> None:
        self._roots = roots if roots is not None else Roots.from_env()
        self._clock = clock
        self._opener = opener
        self._zones: list[_OpenZone] = []
        #: Zones found but not measured, with why (shown by ``wattspan devices``).
        self.skipped: list[str] = []

    def discover(self) -> list[DeviceInfo] | Unavailable:
        self.close()
        powercap = self._roots.sys("class", "powercap")
        zone_dirs = _find_zone_dirs(powercap)
        if not zone_dirs:
            return Unavailable(
                self.name,
                f"no RAPL powercap zones under {powercap} "
                "(virtual machines and non-x86 CPUs expose none)",
            )
        zones = self._identify(zone_dirs)
        devices: list[DeviceInfo] = []
        denied: list[str] = []
        for zone in zones:
            energy_path = str(zone.path / "energy_uj")
            try:
                fd = self._open_checked(energy_path)
            except PermissionError:
                denied.append(energy_path)
                continue
            except (OSError, ValueError) as err:
                self.skipped.append(f"{zone.zone_id} ({zone.name}): {energy_path}: {err}")
                continue
            self._zones.append(
                _OpenZone(zone.role.device_id, energy_path, fd, zone.max_energy_range_uj)
            )
            devices.append(self._device_info(zone))
        if denied:
            self.skipped.append(f"{', '.join(denied)}: {PERMISSION_HINT}")
        if devices:
            return devices
        if denied:
            return Unavailable(self.name, _permission_reason(denied))
        return Unavailable(
            self.name, f"no usable RAPL zones under {powercap}: " + "; ".join(self.skipped)
        )

    def read(self) -> list[Reading]:
        return [self._read_zone(zone) for zone in self._zones]

    def close(self) -> None:
        for zone in self._zones:
            self._close_fd(zone)
        self._zones = []
        self.skipped = []

    # --- internals

    def _identify(self, zone_dirs: dict[str, Path]) -> list[_Zone]:
        """Read each zone's name and range and decide what it measures; note the rest."""
        names: dict[str, str] = {}
        for zone_id, path in zone_dirs.items():
            try:
                names[zone_id] = (path / "name").read_text().strip()
            except OSError as err:
                self.skipped.append(f"{zone_id}: cannot read its name: {err}")
        zones: list[_Zone] = []
        taken: set[str] = set()
        for zone_id, name in names.items():
            parent_id = zone_id.rpartition(":")[0] if zone_id.count(":") == 2 else None
            if parent_id is not None and parent_id not in names:
                self.skipped.append(f"{zone_id} ({name}): parent zone {parent_id} not found")
                continue
            parent_name = names[parent_id] if parent_id else None
            role = zone_role(name, parent_name)
            if role is None:
                self.skipped.append(f"{zone_id} ({name}): unknown zone name")
                continue
            if role.device_id in taken:
                self.skipped.append(f"{zone_id} ({name}): duplicate of {role.device_id}")
                continue
            path = zone_dirs[zone_id]
            try:
                max_range_uj = parse_uj((path / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as err:
                # Without the range a wrap would read as a reset: wrong energy, so skip.
                self.skipped.append(f"{zone_id} ({name}): max_energy_range_uj: {err}")
                continue
            taken.add(role.device_id)
            source = f"rapl powercap {f'{parent_name} ' if parent_name else ''}{name}"
            zones.append(_Zone(zone_id, path, name, source, role, max_range_uj))
        return zones

    def _open_checked(self, energy_path: str) -> int:
        """Open and read once, so an unreadable counter is found at discovery."""
        fd = self._opener(energy_path)
        try:
            _read_counter(fd)
        except (OSError, ValueError):
            os.close(fd)
            raise
        return fd

    def _device_info(self, zone: _Zone) -> DeviceInfo:
        details = {
            "zone": zone.zone_id,
            "path": str(zone.path),
            "max_energy_range_uj": zone.max_energy_range_uj,
        }
        if zone.role.kind == "platform":
            details["overlaps"] = "whole platform: includes the package (and more); don't add"
        return DeviceInfo(
            device_id=zone.role.device_id,
            kind=zone.role.kind,
            name=zone.role.label,
            source=zone.source,
            quality=Quality.MEASURED,
            part_of=zone.role.part_of,
            details=details,
        )

    def _read_zone(self, zone: _OpenZone) -> Reading:
        try:
            if zone.fd is None:
                zone.fd = self._opener(zone.energy_path)
            raw_uj = _read_counter(zone.fd)
        except OSError as err:
            # A stale fd (driver reloaded) is reopened on the next read.
            self._close_fd(zone)
            return Reading(zone.device_id, self._clock(), error=f"{zone.energy_path}: {err}")
        except ValueError as err:
            return Reading(zone.device_id, self._clock(), error=f"{zone.energy_path}: {err}")
        t_ns = self._clock()
        total_uj = zone.counter.update(raw_uj)
        return Reading(zone.device_id, t_ns, energy_j=total_uj / _UJ_PER_J)

    @staticmethod
    def _close_fd(zone: _OpenZone) -> None:
        if zone.fd is None:
            return
        fd, zone.fd = zone.fd, None
        try:
            os.close(fd)
        except OSError:
            pass
