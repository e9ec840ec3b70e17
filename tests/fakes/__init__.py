"""Test doubles for hardware interfaces (see README.md)."""

from .nvml_scenario import (
    SCENARIO_ENV,
    Gpu,
    Process,
    Scenario,
    Segment,
    build_fake_nvml,
)

__all__ = ["SCENARIO_ENV", "Gpu", "Process", "Scenario", "Segment", "build_fake_nvml"]
