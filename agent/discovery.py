"""Which collectors run on this host: the one place that decides, from configuration and probes.

Each collector probes its own hardware; this module builds the enabled ones with their
settings, lets a fallback (the CPU power model) stand down when a better source (RAPL) measured
the same device, and keeps the reason for everything that found nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from wattspan.collectors import REGISTRY, load_builtin_collectors
from wattspan.collectors.base import DeviceInfo, PolledCollector, Unavailable
from wattspan.collectors.paths import Roots
from wattspan.config import ConfigError, Settings

_log = logging.getLogger(__name__)


@dataclass
class Discovery:
    collectors: list[PolledCollector] = field(default_factory=list)
    devices: list[DeviceInfo] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)

    def close(self) -> None:
        for collector in self.collectors:
            try:
                collector.close()
            except Exception as err:  # closing must not hide the run's result
                _log.debug("closing %s: %s", collector.name, err)
        self.collectors = []


def _build(name: str, settings: Settings) -> PolledCollector:
    """Construct one collector with the settings it takes."""
    roots = Roots(procfs=Path(settings.get("paths", "procfs_root")),
                  sysfs=Path(settings.get("paths", "sysfs_root")))
    factory = REGISTRY[name].factory
    if name == "nvml":
        return factory(settings.get("nvml", "library"),
                       retry_lost_s=settings.get("nvml", "retry_lost_s"))
    if name == "cpu_model":
        lo = settings.get("cpu_model", "min_w_per_vcpu")
        hi = settings.get("cpu_model", "max_w_per_vcpu")
        coefficients = None if lo is None else {"min_w_per_vcpu": lo, "max_w_per_vcpu": hi}
        return factory(roots=roots, coefficients=coefficients)
    if name == "rapl":
        return factory(roots=roots)
    return factory()


def enabled_names(settings: Settings) -> list[str]:
    load_builtin_collectors()
    wanted = settings.get("collectors", "enabled")
    if wanted is None:
        return [name for name, spec in REGISTRY.items() if spec.default_enabled]
    for name in wanted:
        if name not in REGISTRY:
            raise ConfigError(f"unknown collector {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return list(wanted)


def discover(settings: Settings) -> Discovery:
    """Probe every enabled collector; never raises for absent hardware."""
    result = Discovery()
    found_by: dict[str, list[DeviceInfo]] = {}
    names = enabled_names(settings)
    # Better sources first, so fallbacks know whether they are needed.
    names.sort(key=lambda n: bool(REGISTRY[n].fallback_for))
    idle_overrides = settings.idle_w
    for name in names:
        spec = REGISTRY[name]
        covered = [other for other in spec.fallback_for if found_by.get(other)]
        if covered:
            result.unavailable.append(Unavailable(name, f"not needed: {covered[0]} measures "
                                                        "these devices"))
            continue
        try:
            collector = _build(name, settings)
            found = collector.discover()
        except ConfigError:
            raise
        except Exception as err:  # a broken collector must not stop the others
            _log.warning("collector %s failed during discovery: %s", name, err)
            result.unavailable.append(Unavailable(name, f"discovery failed: {err}"))
            continue
        if isinstance(found, Unavailable):
            result.unavailable.append(found)
            collector.close()
            continue
        found = [replace(d, idle_w=idle_overrides[d.device_id]) if d.device_id in idle_overrides
                 else d for d in found]
        found_by[name] = found
        result.collectors.append(collector)
        result.devices.extend(found)
    unknown = set(idle_overrides) - {d.device_id for d in result.devices}
    for device_id in sorted(unknown):
        _log.warning("idle_w is configured for %s, which was not found", device_id)
    return result
