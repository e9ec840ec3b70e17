"""Collectors: one source per module, registered by name with a default on/off.

``REGISTRY`` maps a collector name to its class. ``create_collectors`` builds the enabled ones
from a configuration; discovery (what hardware is there) happens inside each collector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wattspan.collectors.base import (
    DeviceInfo,
    PolledCollector,
    Quality,
    Reading,
    Unavailable,
)

__all__ = [
    "REGISTRY",
    "CollectorSpec",
    "DeviceInfo",
    "PolledCollector",
    "Quality",
    "Reading",
    "Unavailable",
    "register",
]


@dataclass(frozen=True)
class CollectorSpec:
    name: str
    factory: Callable[..., PolledCollector]
    default_enabled: bool
    #: Collectors that measure the same thing better; when one of them found devices this
    #: collector stands down (the CPU power model yields to RAPL).
    fallback_for: tuple[str, ...] = ()


REGISTRY: dict[str, CollectorSpec] = {}


def register(name: str, *, default_enabled: bool = True, fallback_for: tuple[str, ...] = ()):
    """Class decorator adding a collector to ``REGISTRY`` under ``name``."""

    def decorate(cls):
        cls.name = name
        REGISTRY[name] = CollectorSpec(name, cls, default_enabled, fallback_for)
        return cls

    return decorate


def load_builtin_collectors() -> None:
    """Import the built-in collector modules so they register themselves."""
    from wattspan.collectors import cpu_model, nvml, rapl  # noqa: F401
